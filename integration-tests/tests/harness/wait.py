"""`wait_until`: poll instead of sleeping a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
    retry_errors: bool = False,
) -> T:
    """Polls `probe` until it returns something truthy and returns that; fails after `timeout`.

    With `retry_errors`, an exception from `probe` counts as "not yet" (a probe of a service that
    is restarting may fail for a while); otherwise it propagates at once."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except Exception as error:
            if not retry_errors:
                raise
            last = error
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        time.sleep(interval)
