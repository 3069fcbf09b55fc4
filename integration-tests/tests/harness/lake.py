"""The `appender` binary on free loopback ports in a temp dir, and readers of the table it writes.

In the spirit of Quickwit's integration sandbox: a test asks for an `Appender` (through the
`make_appender` / `appender` fixtures in conftest.py, an `AppenderFactory`), starts it in a temp
dir on free loopback ports, and drives it with small typed helpers (`flush_grpc`, `stats`,
`health`, ...) and `wait_until` polls instead of fixed sleeps. `read_table` reads what it
committed with pyiceberg, a reader no one here wrote.

Every process is killed by the fixture at the end of its test; its stdout/stderr go to
`appender.log` in the temp dir, which conftest.py attaches to the report of a failing test.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import duckdb_extension_avro
import duckdb_extension_httpfs
import duckdb_extension_iceberg
import grpc
import pyarrow as pa
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.table import Table

from harness.clients import admin_proto, grpc_channel, http_session
from harness.config import NEVER_FLUSH, ConfigOverrides, config_env, merge_config, service_env, to_toml
from harness.paths import appender_binary
from harness.ports import Ports
from harness.process import LogFile, Process

# The processes of a test whose logs conftest.py attaches to its report when it fails.
APPENDERS = pytest.StashKey[list[LogFile]]()


class Appender(Process):
    """One `appender` process in embedded mode, in its own working directory.

    Relative paths of the config (staging, catalog, warehouse) resolve against `workdir`, so
    a restart of the same object finds the same lake. The ports stay the same across restarts.
    The config goes in a TOML file given with `--config`, or, with `config_in_env`, entirely in
    `TELEMETRY_LAKE_<SECTION>__<KEY>` variables with no file at all.
    """

    name = "appender"

    def __init__(
        self,
        workdir: Path,
        config: ConfigOverrides | None = None,
        env: Mapping[str, str] | None = None,
        binary: Path | None = None,
        *,
        config_in_env: bool = False,
    ) -> None:
        super().__init__(workdir)
        self.binary = binary or appender_binary()
        self.ports = Ports.allocate()
        self.config = merge_config(
            {
                "otlp": {
                    "grpc_endpoint": f"127.0.0.1:{self.ports.otlp_grpc}",
                    "http_endpoint": f"127.0.0.1:{self.ports.otlp_http}",
                },
                "admin": {
                    "grpc_endpoint": f"127.0.0.1:{self.ports.admin_grpc}",
                    "http_endpoint": f"127.0.0.1:{self.ports.admin_http}",
                },
                "log": {"level": "info"},
            },
            config,
        )
        kafka = self.config.get("kafka", {})
        if kafka.get("brokers") and kafka.get("topic"):
            # Kafka mode consumes the traces and metrics topics too: the test's own, named after
            # its logs topic (as the Ingester's), never the defaults other tests would share.
            kafka.setdefault("traces_topic", f"{kafka['topic']}-spans")
            kafka.setdefault("metrics_topic", f"{kafka['topic']}-metrics")
        self.extra_env = dict(env or {})
        self.config_in_env = config_in_env
        self.config_path = workdir / f"{self.name}.toml"
        self._http = http_session()
        self._channels: dict[str, grpc.Channel] = {}

    # ---- lifecycle -------------------------------------------------------------------------

    def child_env(self) -> dict[str, str]:
        env = service_env()
        if self.config_in_env:
            env.update(config_env(self.config))
        env.update(self.extra_env)
        return env

    def command(self) -> list[str]:
        if self.config_in_env:
            return [str(self.binary)]
        self.config_path.write_text(to_toml(self.config))
        return [str(self.binary), "--config", str(self.config_path)]

    def start(self) -> Appender:
        if not self.binary.exists():
            raise FileNotFoundError(
                f"{self.binary} does not exist: build it (cargo build -p telemetry-lake-{self.binary.name}) "
                "or point LAKE_BIN_DIR at the directory holding it"
            )
        return super().start()

    def ready(self) -> bool:
        """`GET /readyz` answers 200."""
        try:
            return self._http.get(f"{self.ports.admin_http_url}/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def stopped(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def restart(self, timeout: float = 60.0) -> Appender:
        """A graceful stop (when running) and a fresh start on the same directory and ports."""
        if self.running:
            code = self.stop()
            if code != 0:
                raise AssertionError(f"{self.name} exited with {code} on SIGTERM")
        return self.start_and_wait(timeout)

    def close(self) -> None:
        super().close()
        self._http.close()

    def rss_bytes(self) -> int:
        """Resident set size from /proc/PID/status (VmRSS)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no VmRSS in /proc/{self.pid}/status")

    # ---- admin plane -----------------------------------------------------------------------

    def http(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        return self._http.request(method, f"{self.ports.admin_http_url}{path}", **kwargs)

    def flush_http(self) -> dict[str, Any]:
        response = self.http("POST", "/flush")
        assert response.status_code == 200, f"POST /flush: {response.status_code} {response.text}"
        return response.json()

    def flush_grpc(self) -> Any:
        pb2, pb2_grpc = admin_proto()
        stub = pb2_grpc.AdminStub(self.channel(self.ports.admin_grpc_target))
        return stub.Flush(pb2.FlushRequest(), timeout=60)

    def flush_signal(self) -> None:
        self._require_process().send_signal(signal.SIGUSR1)

    def stats(self) -> dict[str, Any]:
        response = self.http("GET", "/stats", timeout=10)
        assert response.status_code == 200, f"GET /stats: {response.status_code} {response.text}"
        return response.json()

    def stats_grpc(self) -> Any:
        pb2, pb2_grpc = admin_proto()
        stub = pb2_grpc.AdminStub(self.channel(self.ports.admin_grpc_target))
        return stub.Stats(pb2.StatsRequest(), timeout=10)

    def log_partitions(self) -> list[dict[str, Any]]:
        """`Stats`' partitions of the logs topic (Kafka mode consumes the traces and metrics
        topics too, and lists their partitions beside)."""
        topic = self.config["kafka"]["topic"]
        return [p for p in self.stats()["appender"]["partitions"] if p["topic"] == topic]

    def committed_per_signal(self) -> dict[str, int]:
        """`Stats`' items committed to the tables by this process, per signal ("logs", "traces",
        "metrics")."""
        return {s["signal"]: int(s["committed"]) for s in self.stats()["appender"]["signals"]}

    def metrics(self) -> str:
        response = self.http("GET", "/metrics", timeout=10)
        assert response.status_code == 200, f"GET /metrics: {response.status_code} {response.text}"
        return response.text

    def health(self, port: int, service: str = "") -> str:
        """`grpc.health.v1.Health/Check` on 127.0.0.1:`port`; the status name, e.g. "SERVING"."""
        stub = health_pb2_grpc.HealthStub(self.channel(f"127.0.0.1:{port}"))
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def reflection_services(self, port: int, version: str = "v1") -> set[str]:
        """Services listed by gRPC server reflection (`v1` or `v1alpha`) on 127.0.0.1:`port`."""
        # v1 and v1alpha have the same messages under different packages: one codec serves both.
        info = self.channel(f"127.0.0.1:{port}").stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = list(info(iter([request]), timeout=10))
        return {service.name for service in reply.list_services_response.service}

    def channel(self, target: str) -> grpc.Channel:
        if target not in self._channels:
            self._channels[target] = grpc_channel(target)
        return self._channels[target]

    # ---- the lake --------------------------------------------------------------------------

    def resolve(self, path: str) -> Path:
        p = Path(path.removeprefix("file://"))
        return p if p.is_absolute() else self.workdir / p

    @property
    def catalog_db(self) -> Path:
        uri = self.config.get("iceberg", {}).get("catalog_uri", "sqlite://data/catalog.db")
        return self.resolve(uri.removeprefix("sqlite://").split("?")[0])

    @property
    def warehouse_dir(self) -> Path:
        return self.resolve(self.config.get("iceberg", {}).get("warehouse", "data/warehouse"))

    @property
    def staging_path(self) -> Path:
        return self.resolve(self.config.get("staging", {}).get("path", "data/staging.duckdb"))


class AppenderFactory:
    """Makes appenders in their own dirs under `tmp_path` (`<prefix>-N`); by default nothing
    flushes on its own: `config` is merged over `NEVER_FLUSH` (a huge interval and thresholds),
    so a test that checks a trigger sets only that trigger. Started and ready unless
    `start=False`; the config goes in a file, or in environment variables only with
    `config_in_env=True`. Each is registered in the test's `APPENDERS` (its log is shown when
    the test fails) and killed by `close()`."""

    def __init__(self, request: pytest.FixtureRequest, tmp_path: Path, prefix: str = "appender") -> None:
        self.tmp_path = tmp_path
        self.prefix = prefix
        self.shown = request.node.stash.setdefault(APPENDERS, [])
        self.created: list[Appender] = []

    def __call__(
        self,
        config: ConfigOverrides | None = None,
        *,
        env: Mapping[str, str] | None = None,
        start: bool = True,
        config_in_env: bool = False,
    ) -> Appender:
        appender = Appender(
            self.tmp_path / f"{self.prefix}-{len(self.created)}",
            merge_config(NEVER_FLUSH, config),
            env,
            config_in_env=config_in_env,
        )
        self.created.append(appender)
        self.shown.append(appender)
        if start:
            appender.start_and_wait()
        return appender

    def close(self) -> None:
        for appender in self.created:
            appender.close()


# ---- readers ------------------------------------------------------------------------------------


def load_table(appender: Appender) -> Table:
    """The `default.logs` Iceberg table, loaded fresh through pyiceberg's SQL catalog."""
    catalog = SqlCatalog(
        "telemetry_lake",
        uri=f"sqlite:///{appender.catalog_db}",
        warehouse=f"file://{appender.warehouse_dir}",
    )
    namespace = appender.config.get("iceberg", {}).get("namespace", "default")
    name = appender.config.get("iceberg", {}).get("table", "logs")
    return catalog.load_table(f"{namespace}.{name}")


def read_table(appender: Appender) -> pa.Table:
    """Every row of the table's current snapshot (an empty table when nothing was committed)."""
    return load_table(appender).scan().to_arrow()


def duckdb_reader() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB 1.5.5 with the avro, httpfs and iceberg extensions loaded from their
    PyPI packages (no network), to read the table as a second, independent reader."""
    connection = duckdb.connect()
    for package in (duckdb_extension_avro, duckdb_extension_httpfs, duckdb_extension_iceberg):
        name = package.__name__.removeprefix("duckdb_extension_")
        (path,) = Path(package.__file__).parent.glob(f"extensions/*/{name}.duckdb_extension")
        connection.execute(f"LOAD '{path}'")
    return connection


def duckdb_scan(appender: Appender) -> str:
    """The `iceberg_scan(...)` table function over the table's current metadata file."""
    return f"iceberg_scan('{load_table(appender).metadata_location}')"


def snapshot_count(appender: Appender) -> int:
    return len(load_table(appender).snapshots())


def _plain_type(kind: pa.DataType) -> pa.DataType:
    if pa.types.is_map(kind):
        return pa.map_(_plain_type(kind.key_type), _plain_type(kind.item_type))
    if pa.types.is_list(kind):
        return pa.list_(_plain_type(kind.value_type))
    if pa.types.is_struct(kind):
        return pa.struct([pa.field(f.name, _plain_type(f.type), f.nullable) for f in kind])
    return kind


def without_field_ids(rows: pa.Table) -> pa.Table:
    """`rows` (read from the lake) without the Iceberg field ids a scan puts on nested fields,
    so that another writer (pyarrow, then pyiceberg `add_files`) can write them as its own."""
    return rows.cast(pa.schema([pa.field(f.name, _plain_type(f.type), f.nullable) for f in rows.schema]))
