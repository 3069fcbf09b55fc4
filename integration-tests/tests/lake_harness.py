"""Typed helpers that boot the `appender` binary in embedded mode and talk to it.

In the spirit of Quickwit's integration sandbox: a test asks for an `Appender` (through the
`appender` fixture in conftest.py), starts it in a temp dir on free loopback ports, and drives it
with small typed helpers (`flush_grpc`, `stats`, `health`, ...) and `wait_until` polls instead
of fixed sleeps. `read_table` reads what it committed with pyiceberg, a reader no one here wrote.

Every process is killed by the fixture at the end of its test; its stdout/stderr go to
`appender.log` in the temp dir, which conftest.py attaches to the report of a failing test.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import duckdb
import duckdb_extension_avro
import duckdb_extension_httpfs
import duckdb_extension_iceberg
import grpc
import pyarrow as pa
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.table import Table

REPO_DIR = Path(__file__).resolve().parents[2]
ENV_PREFIX = "TELEMETRY_LAKE_"

# A nested mapping written as TOML: {"flush": {"interval": "2s"}} -> [flush] interval = "2s".
ConfigOverrides = Mapping[str, Mapping[str, Any]]

T = TypeVar("T")

# Thresholds that never fire on their own, so a test decides when a flush happens.
NEVER_FLUSH: dict[str, dict[str, Any]] = {
    "flush": {"interval": "1h", "max_records": 100_000_000, "max_bytes": "1GiB"},
}


def bin_dir() -> Path:
    return Path(os.environ.get("LAKE_BIN_DIR", REPO_DIR / "target" / "debug"))


def appender_binary() -> Path:
    return bin_dir() / "appender"


def duckdb_lib_dir() -> str | None:
    """Where libduckdb.so is: DUCKDB_LIB_DIR, else the cache the build scripts fill, if there."""
    if os.environ.get("DUCKDB_LIB_DIR"):
        return os.environ["DUCKDB_LIB_DIR"]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "telemetry-lake" / "duckdb-1.5.5"
    return str(cache) if (cache / "libduckdb.so").exists() else None


def shared_dir() -> Path:
    """The `shared/` directory that sits beside the checkout (CI lays it out the same way)."""
    return Path(os.environ.get("LAKE_SHARED_DIR", REPO_DIR.parent / "shared"))


def loghub_dir() -> Path:
    return shared_dir() / "data" / "loghub"


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
) -> T:
    """Polls `probe` until it returns something truthy and returns that; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        time.sleep(interval)


SAMPLE_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)")


def prometheus_samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value for every sample line of a Prometheus text exposition."""
    samples = {}
    for line in text.splitlines():
        match = SAMPLE_LINE.match(line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


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


def to_toml(config: ConfigOverrides) -> str:
    """Enough TOML for the appender's config: tables of strings, numbers and booleans."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        raise TypeError(f"unsupported config value {v!r}")

    lines: list[str] = []
    for section, keys in config.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value(v)}" for key, v in keys.items())
        lines.append("")
    return "\n".join(lines)


def config_env(config: ConfigOverrides) -> dict[str, str]:
    """The same settings as `TELEMETRY_LAKE_<SECTION>__<KEY>` environment variables."""
    return {
        f"{ENV_PREFIX}{section.upper()}__{key.upper()}": str(v).lower() if isinstance(v, bool) else str(v)
        for section, keys in config.items()
        for key, v in keys.items()
    }


def merge_config(*layers: ConfigOverrides | None) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for section, keys in (layer or {}).items():
            merged.setdefault(section, {}).update(keys)
    return merged


@functools.cache
def admin_proto() -> tuple[ModuleType, ModuleType]:
    """`admin_pb2` and `admin_pb2_grpc` generated from admin-proto/proto/admin.proto."""
    from grpc_tools import protoc

    proto_dir = REPO_DIR / "admin-proto" / "proto"
    out = Path(tempfile.mkdtemp(prefix="telemetry-lake-admin-pb-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    well_known = Path(protoc.__file__).parent / "_proto"
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(proto_dir / "admin.proto"),
        ]
    )
    if rc != 0:
        raise RuntimeError(f"protoc failed on {proto_dir / 'admin.proto'} with exit code {rc}")
    sys.path.insert(0, str(out))
    return importlib.import_module("admin_pb2"), importlib.import_module("admin_pb2_grpc")


def http_session() -> requests.Session:
    """A session that never goes through a proxy from the environment (everything is local)."""
    session = requests.Session()
    session.trust_env = False
    return session


# gRPC honours http_proxy too; loopback traffic must never leave through one.
GRPC_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (("grpc.enable_http_proxy", 0),)


def grpc_channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target, options=GRPC_CHANNEL_OPTIONS)


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


class Appender:
    """One `appender` process in embedded mode, in its own working directory.

    Relative paths of the config (staging, catalog, warehouse) resolve against `workdir`, so
    a restart of the same object finds the same lake. The ports stay the same across restarts.
    The config goes in a TOML file given with `--config`, or, with `config_in_env`, entirely in
    `TELEMETRY_LAKE_<SECTION>__<KEY>` variables with no file at all.
    """

    def __init__(
        self,
        workdir: Path,
        config: ConfigOverrides | None = None,
        env: Mapping[str, str] | None = None,
        binary: Path | None = None,
        *,
        config_in_env: bool = False,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
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
        self.extra_env = dict(env or {})
        self.config_in_env = config_in_env
        self.config_path = workdir / "appender.toml"
        self.log_path = workdir / "appender.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._http = http_session()
        self._channels: dict[str, grpc.Channel] = {}

    # ---- lifecycle -------------------------------------------------------------------------

    def child_env(self) -> dict[str, str]:
        # Every TELEMETRY_LAKE_* variable is a config key to the binary (and an unknown key is
        # an error), so the test runner's own settings such as LAKE_BIN_DIR stay out.
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        duckdb_lib = duckdb_lib_dir()
        if duckdb_lib:
            paths = [duckdb_lib, *filter(None, env.get("LD_LIBRARY_PATH", "").split(":"))]
            env["LD_LIBRARY_PATH"] = ":".join(paths)
        # Backtraces for panics, not for every library error value (opendal captures one each).
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("RUST_LIB_BACKTRACE", "0")
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
        if self.running:
            raise RuntimeError("appender is already running")
        if not self.binary.exists():
            raise FileNotFoundError(
                f"{self.binary} does not exist: build it (cargo build -p telemetry-lake-appender) "
                "or point LAKE_BIN_DIR at the directory holding it"
            )
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start #{self.starts} at {time.strftime('%H:%M:%S')} =====\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=self.child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_ready(self, timeout: float = 60.0) -> Appender:
        """Waits for `GET /readyz` to answer 200; fails early if the process exits."""

        def ready() -> bool:
            self.assert_alive()
            try:
                return self._http.get(f"{self.ports.admin_http_url}/readyz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, timeout=timeout, what=f"appender pid {self.pid} to be ready")
        return self

    def start_and_wait(self, timeout: float = 60.0) -> Appender:
        return self.start().wait_ready(timeout)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then waits for the exit (which drains and commits); returns the exit code."""
        process = self._require_process()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(f"appender did not exit within {timeout}s of SIGTERM; killed it") from None
        finally:
            self._close_channels()

    def kill9(self) -> None:
        process = self._require_process()
        process.kill()
        process.wait()
        self._close_channels()

    def restart(self, timeout: float = 60.0) -> Appender:
        """A graceful stop (when running) and a fresh start on the same directory and ports."""
        if self.running:
            code = self.stop()
            if code != 0:
                raise AssertionError(f"appender exited with {code} on SIGTERM")
        return self.start_and_wait(timeout)

    def close(self) -> None:
        """Kills the process if it still runs (fixture finalizer)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close_channels()
        self._http.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        return self._require_process().pid

    def assert_alive(self) -> None:
        process = self._require_process()
        code = process.poll()
        if code is not None:
            raise AssertionError(f"appender exited with code {code}; log tail:\n{self.log_tail()}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

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

    # ---- internals -------------------------------------------------------------------------

    def _require_process(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise RuntimeError("appender was never started")
        return self.process

    def _close_channels(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()


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
