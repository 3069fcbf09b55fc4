"""A real Apache Kafka broker, Kafka's own client, and the `ingester` binary.

`Broker` runs one KRaft node (broker and controller in one JVM) on 127.0.0.1 through
`integration-tests/kafka/broker.sh`, with the jars `kafka/fetch.sh` downloads once from Maven
Central. It can stop, `kill -9` and restart on the same data and ports. Topics are read with
Kafka's own Java client (`kafka/KafkaProbe.java`, run from source by `java`), so the tests need
no Python Kafka package: `partitions`, `records` (every record with partition, offset, key,
headers and value), `produce`, `topic_id` and `recreate_topic` (delete, then create again).

`SecureBroker` is the same node with two more listeners, for the security tests: SASL_SSL with
SCRAM-SHA-512 (one user, a random password) and SSL requiring a client certificate (mTLS), on
certificates `kafka/certs.sh` makes in its directory; its PLAINTEXT listener stays for the tests'
own Java client.

`Ingester` is the `ingester` binary booted like the appender (`harness.lake.Appender`: a temp
dir, free loopback ports, a TOML config, a log file, the same admin helpers), pointed at a
broker and a topic.
"""

from __future__ import annotations

import base64
import functools
import json
import secrets
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from harness.config import ConfigOverrides, merge_config
from harness.lake import Appender
from harness.paths import REPO_DIR, bin_dir
from harness.ports import free_port_pair, free_ports
from harness.process import ScriptService, fetched_dir

KAFKA_DIR = REPO_DIR / "integration-tests" / "kafka"
PROBE_SOURCE = KAFKA_DIR / "KafkaProbe.java"


@functools.cache
def kafka_home() -> Path:
    """The directory holding Kafka's `libs/`, fetched on first use (cached across runs)."""
    return fetched_dir(KAFKA_DIR / "fetch.sh", timeout=600)


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

    def traces(self) -> ExportTraceServiceRequest:
        """The value decoded as an OTLP `ExportTraceServiceRequest` (raises if it is not one)."""
        return ExportTraceServiceRequest.FromString(self.value)

    def metrics(self) -> ExportMetricsServiceRequest:
        """The value decoded as an OTLP `ExportMetricsServiceRequest` (raises if it is not one)."""
        return ExportMetricsServiceRequest.FromString(self.value)


@dataclass(frozen=True)
class StoredBatch:
    """One record batch in a broker's log segment: its compression codec (0 none, 1 gzip,
    2 snappy, 3 lz4, 4 zstd) and its records section as stored."""

    codec: int
    records: bytes


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


class Broker(ScriptService):
    """One Kafka node in `workdir` on 127.0.0.1:`port` (controller on `port`+1); `stop` is a
    controlled shutdown (SIGTERM), `kill9` none at all."""

    script = KAFKA_DIR / "broker.sh"
    name, log_name = "broker", "logs/server.log"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, free_port_pair())

    def prepare(self) -> None:
        kafka_home()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

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

    def topic_id(self, topic: str) -> str:
        """The topic's id (a UUID in base64, as Kafka's tools print it)."""
        return self._probe("topic-id", self.bootstrap, topic).strip()

    def stored_batches(self, topic: str) -> list[StoredBatch]:
        """The record batches of `topic` as the broker stored them, read from its log segments
        (Kafka's record batch format v2: a 61-byte header, then the records, compressed as a
        whole). A batch written after the segment's last flush may be missing."""
        batches = []
        for segment in sorted((self.workdir / "data").glob(f"{topic}-*/*.log")):
            data, pos = segment.read_bytes(), 0
            while pos + 61 <= len(data):
                length = int.from_bytes(data[pos + 8 : pos + 12], "big", signed=True)
                if length <= 0 or pos + 12 + length > len(data):
                    break
                attributes = int.from_bytes(data[pos + 21 : pos + 23], "big")
                batches.append(StoredBatch(codec=attributes & 0x7, records=data[pos + 61 : pos + 12 + length]))
                pos += 12 + length
        return batches

    def recreate_topic(self, topic: str, partitions: int) -> str:
        """Deletes `topic` and creates it again (offsets start at 0 again); its new id."""
        return self._probe("recreate", self.bootstrap, topic, str(partitions)).strip()


class SecureBroker(Broker):
    """A `Broker` with a SASL_SSL listener (SCRAM-SHA-512, user `user` with `password`) on
    `sasl_port` and an SSL listener requiring a client certificate on `ssl_port`. The
    certificates are in `tls_dir` (see `kafka/certs.sh`); the client key is encrypted with
    `key_password`."""

    user = "telemetry-lake"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        taken = {self.port, self.port + 1}
        self.sasl_port, self.ssl_port = [p for p in free_ports(4) if p not in taken][:2]
        self.password = "scram-" + secrets.token_urlsafe(18)
        self.key_password = "key-" + secrets.token_urlsafe(18)
        self.tls_dir = workdir / "tls"
        self.users_file = workdir / "scram-users"

    def prepare(self) -> None:
        super().prepare()
        if not (self.tls_dir / "ca.crt").exists():
            subprocess.run(
                ["bash", str(KAFKA_DIR / "certs.sh"), str(self.tls_dir), self.key_password],
                check=True,
                capture_output=True,
                timeout=60,
            )
        self.users_file.write_text(f"{self.user} {self.password}\n")

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "KAFKA_TLS_DIR": str(self.tls_dir),
            "KAFKA_SASL_SSL_PORT": str(self.sasl_port),
            "KAFKA_SSL_PORT": str(self.ssl_port),
            "KAFKA_SCRAM_USERS_FILE": str(self.users_file),
        }

    def sasl_client(self, password: str) -> dict[str, str]:
        """`[kafka.client]` for the SASL_SSL listener, with `password` as given (a value or a
        `${file:…}` / `${env:…}` reference)."""
        return {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": self.user,
            "sasl.password": password,
            "ssl.ca.location": str(self.tls_dir / "ca.crt"),
        }

    def mtls_client(self, key_password: str, name: str = "client") -> dict[str, str]:
        """`[kafka.client]` for the SSL listener with certificate `name` (`client`: signed by the
        broker's CA; `rogue`: by another CA, unencrypted key)."""
        client = {
            "security.protocol": "SSL",
            "ssl.ca.location": str(self.tls_dir / "ca.crt"),
            "ssl.certificate.location": str(self.tls_dir / f"{name}.crt"),
            "ssl.key.location": str(self.tls_dir / f"{name}.key"),
        }
        if name == "client":
            client["ssl.key.password"] = key_password
        return client

    def sasl_sections(self, password: str) -> dict[str, dict[str, str]]:
        """The same as `sasl_client`, written as `[kafka.tls]` and `[kafka.sasl]`."""
        return {
            "tls": {"ca_file": str(self.tls_dir / "ca.crt")},
            "sasl": {"mechanism": "SCRAM-SHA-512", "username": self.user, "password": password},
        }

    def mtls_sections(self, key_password: str) -> dict[str, dict[str, str]]:
        """The same as `mtls_client`, written as `[kafka.tls]`."""
        tls = self.tls_dir
        return {
            "tls": {
                "ca_file": str(tls / "ca.crt"),
                "cert_file": str(tls / "client.crt"),
                "key_file": str(tls / "client.key"),
                "key_password": key_password,
            }
        }

    @property
    def sasl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def ssl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ssl_port}"


class Ingester(Appender):
    """One `ingester` process writing to `broker`'s `topic`; the appender's helpers apply."""

    name = "ingester"

    def __init__(
        self,
        workdir: Path,
        broker: Broker,
        topic: str,
        config: ConfigOverrides | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        # Traces and metrics go to topics of the test's own too, named after the logs topic.
        kafka = {
            "kafka": {
                "brokers": broker.bootstrap,
                "topic": topic,
                "traces_topic": f"{topic}-spans",
                "metrics_topic": f"{topic}-metrics",
                "partitions": 4,
            }
        }
        merged = merge_config(kafka, config)
        super().__init__(workdir, merged, env, binary=bin_dir() / "ingester")
        self.broker = broker
        self.topic = topic
        self.traces_topic: str = merged["kafka"]["traces_topic"]
        self.metrics_topic: str = merged["kafka"]["metrics_topic"]
