"""One outage of a lake dependency under load, for test_outages.py (logs) and
test_signals_outages.py (spans and points).

`outage` takes the dependency away for `OUTAGE_SECONDS` while the load keeps exporting, then
brings it back, and checks what an operator relies on: exports kept being acknowledged (staging
took them), health went NOT_SERVING while commits failed, and commits resumed by themselves with
health SERVING again. It returns a line saying how long each took.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from harness.catalog import HealthLog
from harness.lake import Appender
from harness.wait import wait_until

OUTAGE_SECONDS = 30
# Catalog calls give up after 10 s of silence (the default is 30 s): the REST server itself
# retries its storage for minutes before it answers, so this bounds how long a flush can hang.
FAST_FAILURE = {"rest.client.socket-timeout-ms": "10000"}


class Sending(Protocol):
    """Senders in the background: how many items were acknowledged so far, and a check that
    none of them failed."""

    @property
    def acknowledged(self) -> int: ...

    def assert_sending(self) -> None: ...


def committed_snapshots(appender: Appender) -> int:
    """Snapshots the appender says it committed, to every table (its own count, no catalog
    needed)."""
    return int(appender.stats()["appender"]["snapshots"])


def outage(
    name: str,
    appender: Appender,
    load: Sending,
    health: HealthLog,
    take_down: Callable[[], None],
    bring_back: Callable[[], None],
    *,
    resume_timeout: float = 60,
) -> str:
    """Takes the dependency called `name` away (`take_down`) for OUTAGE_SECONDS under `load`
    and brings it back (`bring_back`); see the module's docs for what is checked."""
    acknowledged_before = load.acknowledged
    take_down()
    started = time.monotonic()
    # A flush under way when the outage starts fails only after the S3 client's retries and the
    # catalog's timeout: NOT_SERVING may take longer than the outage's 30 s.
    wait_until(
        lambda: "NOT_SERVING" in health.statuses_since(started),
        timeout=60,
        what=f"health to turn NOT_SERVING with the {name} down",
    )
    not_serving_after = time.monotonic() - started
    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - started)))
    appender.assert_alive()
    load.assert_sending()
    acknowledged = load.acknowledged - acknowledged_before
    assert acknowledged > 1000, (
        f"exports stopped being acknowledged while the {name} was down ({acknowledged} in {OUTAGE_SECONDS} s)"
    )
    snapshots = committed_snapshots(appender)
    bring_back()
    back = time.monotonic()
    wait_until(
        lambda: committed_snapshots(appender) > snapshots and health.statuses_since(back)[-1:] == ["SERVING"],
        timeout=resume_timeout,
        what=f"commits to resume and health to be SERVING after the {name} came back",
        interval=0.5,
    )
    resumed_after = time.monotonic() - back
    return (
        f"{name}: NOT_SERVING after {not_serving_after:.1f} s, {acknowledged} items acknowledged while down, "
        f"commits resumed {resumed_after:.1f} s after return"
    )
