"""Free TCP ports on 127.0.0.1, the four ports of a service, and port probes.

Ports are handed out from below the kernel's ephemeral range (`ip_local_port_range`), so an
outgoing connection can never take a port a service is about to bind, or re-bind after a restart
(a Kafka broker's controller port did, and the broker could not come back). Each pytest-xdist
worker draws from its own slice, so two workers never pick the same port, and within a process
ports are handed out in turn, never twice.
"""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass
from itertools import count
from pathlib import Path

from harness.wait import wait_until

LOWEST = 10_000
"""Below this live well-known services; the harness stays above it."""


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32_768, 60_999  # Linux's default


def _slice() -> range:
    """This process's ports: below the ephemeral range (or above it, if nothing is left below),
    split into equal slices, one per xdist worker."""
    low, high = _ephemeral_range()
    first, last = (LOWEST, low) if low - LOWEST >= 4_000 else (high + 1, 65_536)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    size = (last - first) // max(workers, 1)
    start = first + size * (worker % max(workers, 1))
    return range(start, start + size)


_SLICE = _slice()
# A random starting point, so processes outside xdist (a benchmark beside a test run) rarely meet.
_NEXT = count(random.randrange(len(_SLICE)))


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _next_port() -> int:
    return _SLICE[next(_NEXT) % len(_SLICE)]


def free_ports(how_many: int) -> list[int]:
    """Distinct ports on 127.0.0.1 that are free now and that this process has not handed out."""
    ports: list[int] = []
    for _ in range(len(_SLICE)):
        if len(ports) == how_many:
            return ports
        port = _next_port()
        if _bindable(port):
            ports.append(port)
    raise RuntimeError(f"fewer than {how_many} free ports in {_SLICE} on 127.0.0.1")


def free_port_pair() -> int:
    """A port P on 127.0.0.1 with P+1 free too (Kafka's controller listens there)."""
    for _ in range(len(_SLICE)):
        port = _next_port()
        if port + 1 in _SLICE and _bindable(port) and _bindable(port + 1):
            next(_NEXT)  # P+1 is taken too
            return port
    raise RuntimeError(f"no two adjacent free ports in {_SLICE} on 127.0.0.1")


def port_open(port: int, timeout: float = 2) -> bool:
    """Something accepts TCP connections on 127.0.0.1:`port`."""
    with socket.socket() as s:
        s.settimeout(timeout)
        return s.connect_ex(("127.0.0.1", port)) == 0


def port_refuses(port: int) -> bool:
    return not port_open(port)


def wait_port(port: int, timeout: float, what: str) -> None:
    wait_until(lambda: port_open(port, timeout=0.5), timeout=timeout, what=what, interval=0.1)


@dataclass(frozen=True)
class Ports:
    otlp_grpc: int
    otlp_http: int
    admin_grpc: int
    admin_http: int

    @classmethod
    def allocate(cls) -> Ports:
        return cls(*free_ports(4))

    @property
    def otlp_grpc_target(self) -> str:
        return f"127.0.0.1:{self.otlp_grpc}"

    @property
    def otlp_http_url(self) -> str:
        return f"http://127.0.0.1:{self.otlp_http}/v1/logs"

    @property
    def admin_grpc_target(self) -> str:
        return f"127.0.0.1:{self.admin_grpc}"

    @property
    def admin_http_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_http}"
