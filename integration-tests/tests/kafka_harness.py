"""Typed helpers for a real Apache Kafka broker and the `ingester` binary.

`Broker` runs one KRaft node (broker and controller in one JVM) on 127.0.0.1 through
`integration-tests/kafka/broker.sh`, with the jars `kafka/fetch.sh` downloads once from Maven
Central. It can stop, `kill -9` and restart on the same data and ports. Topics are read with
Kafka's own Java client (`kafka/KafkaProbe.java`, run from source by `java`), so the tests need
no Python Kafka package: `partitions`, `records` (every record with partition, offset, key,
headers and value) and `produce`.

`Ingester` is the `ingester` binary booted like the appender (`lake_harness.Appender`: a temp
dir, free loopback ports, a TOML config, a log file, the same admin helpers), pointed at a
broker and a topic.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from lake_harness import REPO_DIR, Appender, ConfigOverrides, bin_dir, merge_config

KAFKA_DIR = REPO_DIR / "integration-tests" / "kafka"
PROBE_SOURCE = KAFKA_DIR / "KafkaProbe.java"


@functools.cache
def kafka_home() -> Path:
    """The directory holding Kafka's `libs/`, fetched on first use (cached across runs)."""
    out = subprocess.run(["bash", str(KAFKA_DIR / "fetch.sh")], check=True, capture_output=True, text=True, timeout=600)
    return Path(out.stdout.strip().splitlines()[-1])


def free_port_pair() -> int:
    """A port P on 127.0.0.1 with P+1 free too (the controller listens there)."""
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


@dataclass(frozen=True)
class KafkaRecord:
    partition: int
    offset: int
    key: str | None
    headers: dict[str, str | None]
    value: bytes

    def request(self) -> ExportLogsServiceRequest:
        """The value decoded as an OTLP `ExportLogsServiceRequest` (raises if it is not one)."""
        request = ExportLogsServiceRequest()
        request.ParseFromString(self.value)
        return request


def service_names(request: ExportLogsServiceRequest) -> set[str]:
    names = set()
    for resource_logs in request.resource_logs:
        for attribute in resource_logs.resource.attributes:
            if attribute.key == "service.name":
                names.add(attribute.value.string_value)
    return names


def bodies(request: ExportLogsServiceRequest) -> list[str]:
    return [
        record.body.string_value
        for resource_logs in request.resource_logs
        for scope_logs in resource_logs.scope_logs
        for record in scope_logs.log_records
    ]


class Broker:
    """One Kafka node in `workdir` on 127.0.0.1:`port` (controller on `port`+1)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port_pair()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _script(self, command: str, timeout: float = 120) -> None:
        kafka_home()  # fetch outside the broker's own timeouts
        subprocess.run(
            ["bash", str(KAFKA_DIR / "broker.sh"), command, str(self.workdir), str(self.port)],
            check=True,
            timeout=timeout,
            env={**os.environ, "WAIT_SECONDS": str(int(timeout))},
        )

    def start(self) -> Broker:
        self._script("start")
        return self

    def wait_ready(self, timeout: float = 60) -> Broker:
        self._script("wait", timeout)
        return self

    def start_and_wait(self, timeout: float = 60) -> Broker:
        return self.start().wait_ready(timeout)

    def stop(self) -> None:
        """SIGTERM (controlled shutdown) and wait for the exit."""
        self._script("stop")

    def kill9(self) -> None:
        self._script("kill")

    @property
    def running(self) -> bool:
        pid_file = self.workdir / "broker.pid"
        if not pid_file.exists():
            return False
        try:
            os.kill(int(pid_file.read_text()), 0)
        except (OSError, ValueError):
            return False
        return True

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = (self.workdir / "logs" / "server.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # ---- clients (Kafka's own Java client) -------------------------------------------------

    def _probe(self, *args: str, timeout: float = 120) -> str:
        out = subprocess.run(
            ["java", "-cp", f"{kafka_home()}/libs/*", str(PROBE_SOURCE), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if out.returncode != 0:
            raise AssertionError(f"KafkaProbe {' '.join(args[:1])} failed ({out.returncode}): {out.stderr[-2000:]}")
        return out.stdout

    def partitions(self, topic: str) -> int:
        """The topic's partition count; -1 when it does not exist."""
        return int(self._probe("partitions", self.bootstrap, topic).strip())

    def records(self, topic: str) -> list[KafkaRecord]:
        """Every record on `topic` now, in partition then offset order."""
        records = []
        for line in self._probe("dump", self.bootstrap, topic).splitlines():
            if not line.startswith("{"):
                continue
            raw: dict[str, Any] = json.loads(line)
            records.append(
                KafkaRecord(
                    partition=raw["partition"],
                    offset=raw["offset"],
                    key=raw["key"],
                    headers=raw["headers"],
                    value=base64.b64decode(raw["value_b64"] or ""),
                )
            )
        return sorted(records, key=lambda r: (r.partition, r.offset))

    def produce(self, topic: str, key: str, value: bytes) -> None:
        """Writes one record with `acks=all`."""
        self._probe("produce", self.bootstrap, topic, key, value.hex())

    def close(self) -> None:
        """Kills the broker if it still runs (fixture finalizer)."""
        if self.running:
            self.kill9()


class Ingester(Appender):
    """One `ingester` process writing to `broker`'s `topic`; the appender's helpers apply."""

    def __init__(
        self,
        workdir: Path,
        broker: Broker,
        topic: str,
        config: ConfigOverrides | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        kafka = {"kafka": {"brokers": broker.bootstrap, "topic": topic, "partitions": 4}}
        super().__init__(workdir, merge_config(kafka, config), env, binary=bin_dir() / "ingester")
        self.broker = broker
        self.topic = topic
        self.config_path = workdir / "ingester.toml"
        self.log_path = workdir / "ingester.log"

    def command(self) -> list[str]:
        # [kafka.producer] is a nested table, which lake_harness.to_toml does not write.
        self.config_path.write_text(nested_toml(self.config))
        return [str(self.binary), "--config", str(self.config_path)]


def nested_toml(config: Mapping[str, Any], prefix: str = "") -> str:
    """TOML for tables of scalars and nested tables (e.g. `[kafka.producer]`)."""
    scalars = {k: v for k, v in config.items() if not isinstance(v, Mapping)}
    tables = {k: v for k, v in config.items() if isinstance(v, Mapping)}
    lines = [f"[{prefix}]"] if prefix and scalars else []
    for key, value in scalars.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = json.dumps(str(value))
        lines.append(f"{json.dumps(key)} = {text}")
    out = "\n".join(lines) + ("\n\n" if lines else "")
    for key, table in tables.items():
        out += nested_toml(table, f"{prefix}.{key}" if prefix else key)
    return out


def wait_for(probe: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Polls `probe` until truthy; returns its value (exceptions count as not yet)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except Exception as error:  # noqa: BLE001 - a probe may fail while a service restarts
            last = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
