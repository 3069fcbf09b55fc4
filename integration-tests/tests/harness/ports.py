"""Free TCP ports on 127.0.0.1, the four ports of a service, and port probes."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from harness.wait import wait_until


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (held open together so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port_pair() -> int:
    """A port P on 127.0.0.1 with P+1 free too (Kafka's controller listens there)."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no two adjacent free ports on 127.0.0.1")


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
