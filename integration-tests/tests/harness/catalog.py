"""The production lake: a REST catalog on S3, PostgreSQL, and load with outages.

The services come from `integration-tests/catalog/` (fetched once, cached by version) and run on
free 127.0.0.1 ports in a test's temp dir:

- `ObjectStore`: moto (an S3-compatible server) behind `gate.py`, so the store can be taken away
  (`down()`: connections refused, open ones reset) and brought back with every object it held.
  Everyone (the appender, the catalog, the readers) talks to the gate's port.
- `RestCatalog`: Apache Iceberg's REST catalog test server, its JdbcCatalog in a SQLite file
  (so `stop()` and `start()` keep every table) and S3FileIO on the `ObjectStore`.
- `Postgres`: a throwaway PostgreSQL cluster with a password, for the SQL catalog.
- `rest_config` / `postgres_config`: the appender's `[iceberg]` sections (with
  `[iceberg.properties]`) for them.
- Readers no one here wrote: `pyiceberg_rest` (pyiceberg's RestCatalog, pyarrow's S3) and
  `duckdb_rest` (DuckDB 1.5.5 with `ATTACH ... (TYPE iceberg)` and an httpfs S3 secret).
- `Load`: OTLP/HTTP senders that retry what is refused with a retryable code, as an exporter
  does, and remember which records were acknowledged, refused or left uncertain.
"""

from __future__ import annotations

import functools
import os
import secrets
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import requests
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.table import Table

from harness.clients import http_session
from harness.lake import Appender, duckdb_reader
from harness.paths import REPO_DIR
from harness.ports import free_ports, port_refuses
from harness.process import Process, ScriptService, fetched_dir
from harness.wait import wait_until
from otlp_client import LogSpec, otlp_protobuf

CATALOG_DIR = REPO_DIR / "integration-tests" / "catalog"
BUCKET = "lake"
REGION = "us-east-1"


@functools.cache
def fetch(what: str) -> Path:
    """`catalog/fetch.sh rest|moto`: the cached directory, fetched on first use."""
    return fetched_dir(CATALOG_DIR / "fetch.sh", what, timeout=900)


class S3Server(ScriptService):
    """moto's S3 server (objects in memory: a stop loses them; `ObjectStore` gates it instead)."""

    script = CATALOG_DIR / "s3.sh"
    name, log_name = "s3", "s3.log"

    def prepare(self) -> None:
        fetch("moto")


class GateProcess(Process):
    """`catalog/gate.py` in front of 127.0.0.1:`target_port`: clients use `port`."""

    def __init__(self, workdir: Path, name: str, target_port: int) -> None:
        self.name = name
        super().__init__(workdir)
        self.port = free_ports(1)[0]
        self.target_port = target_port

    def command(self) -> list[str]:
        return [sys.executable, str(CATALOG_DIR / "gate.py"), str(self.port), str(self.target_port)]

    def banner(self) -> None:
        return None  # the gate's log says what it does, line by line

    def start(self) -> GateProcess:
        super().start()
        wait_until(self.listens, timeout=20, what=f"the gate on {self.port} to listen")
        return self

    def listens(self) -> bool:
        """Our gate (not some other process that took the port) is alive and says it is open."""
        self.assert_alive()
        return self.log_text().rstrip().endswith("gate open") and not port_refuses(self.port)

    def down(self) -> None:
        """The server goes away: new connections are refused, open ones reset."""
        self._require_process().send_signal(signal.SIGUSR1)
        wait_until(lambda: port_refuses(self.port), timeout=10, what=f"the gate on {self.port} to close")

    def up(self) -> None:
        """Forward everything again."""
        self._signal(signal.SIGUSR2, "gate open", timeout=15)
        wait_until(lambda: not port_refuses(self.port), timeout=15, what=f"the gate on {self.port} to open")

    def lose_commit_replies(self) -> None:
        """REST commits still reach the catalog, their replies never reach the client."""
        self._signal(signal.SIGHUP, "gate loses commit replies", timeout=10)

    def _signal(self, signum: signal.Signals, line: str, timeout: float) -> None:
        """Sends `signum` and waits for the gate to log `line`, anywhere after it: a commit in
        flight may log its lost reply right after `line`."""
        seen = len(self.log_text())
        self._require_process().send_signal(signum)
        wait_until(lambda: line in self.log_text()[seen:], timeout=timeout, what=f"the gate to log {line!r}")

    @property
    def lost_replies(self) -> int:
        return self.log_text().count("gate lost the reply to ")

    def close(self) -> None:
        if self.process is not None and not self.running:  # shown with a failing test's captured output
            print(f"the gate had exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
        super().close()


class ObjectStore:
    """moto on one port, `gate.py` on another in front of it; clients use `endpoint` (the gate)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.server = S3Server(workdir)
        self.gate = GateProcess(workdir, "gate", self.server.port)
        # moto takes any credentials; distinct values let tests look for leaks.
        self.access_key_id = "AKIA" + secrets.token_hex(8).upper()
        self.secret_access_key = "lake-secret-" + secrets.token_urlsafe(18)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.gate.port}"

    def start_and_wait(self) -> ObjectStore:
        self.server.start_and_wait()
        self.server.run_script("bucket", BUCKET)
        self.gate.start()
        return self

    def down(self) -> None:
        """The store goes away: new connections are refused, open ones reset."""
        self.gate.down()

    def up(self) -> None:
        self.gate.up()

    def properties(self) -> dict[str, str]:
        """`s3.*` properties for iceberg-rust's FileIO and pyiceberg (the same names)."""
        return {
            "s3.endpoint": self.endpoint,
            "s3.access-key-id": self.access_key_id,
            "s3.secret-access-key": self.secret_access_key,
            "s3.region": REGION,
            "s3.path-style-access": "true",
        }

    def log_tail(self, lines: int = 60) -> str:
        return self.server.log_tail(lines)

    def close(self) -> None:
        self.gate.close()
        self.server.close()


class RestCatalog(ScriptService):
    """Iceberg's REST catalog server on `store`, its tables under s3://lake/`prefix`. With
    `gated`, clients reach it through a `GateProcess` (`gate`), which can lose commit replies."""

    script = CATALOG_DIR / "rest.sh"
    name, log_name = "rest", "rest.log"

    def __init__(self, workdir: Path, store: ObjectStore, prefix: str = "warehouse", *, gated: bool = False) -> None:
        super().__init__(workdir)
        self.store = store
        self.warehouse = f"s3://{BUCKET}/{prefix}"
        self.gate = GateProcess(workdir, "gate", self.port) if gated else None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.gate.port if self.gate else self.port}"

    def prepare(self) -> None:
        fetch("rest")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}
        env.update(
            CATALOG_WAREHOUSE=self.warehouse,
            CATALOG_IO__IMPL="org.apache.iceberg.aws.s3.S3FileIO",
            CATALOG_S3_ENDPOINT=self.store.endpoint,
            CATALOG_S3_PATH__STYLE__ACCESS="true",
            CATALOG_S3_ACCESS__KEY__ID=self.store.access_key_id,
            CATALOG_S3_SECRET__ACCESS__KEY=self.store.secret_access_key,
            CATALOG_CLIENT_REGION=REGION,
        )
        return env

    def start_and_wait(self, timeout: float = 60) -> RestCatalog:
        super().start_and_wait(timeout)
        if self.gate is not None and self.gate.process is None:
            self.gate.start()
        return self

    def close(self) -> None:
        if self.gate is not None:
            self.gate.close()
        super().close()


class Postgres(ScriptService):
    """A PostgreSQL cluster with user `lake`, a random password and a database `catalog`."""

    script = CATALOG_DIR / "postgres.sh"
    name, log_name = "postgres", "postgres.log"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.password = "pg-" + secrets.token_urlsafe(12)

    def env(self) -> dict[str, str]:
        return {**os.environ, "PG_PASSWORD": self.password}

    @property
    def uri(self) -> str:
        return f"postgres://lake:{self.password}@127.0.0.1:{self.port}/catalog"

    @property
    def sqlalchemy_uri(self) -> str:
        return f"postgresql+psycopg2://lake:{self.password}@127.0.0.1:{self.port}/catalog"

    def close(self) -> None:
        self.run_script("destroy")


# ---- the appender's config for them -----------------------------------------------------------


def rest_config(
    catalog: RestCatalog, table: str, properties: Mapping[str, str] | None = None, **iceberg: Any
) -> dict[str, dict[str, Any]]:
    """The appender's `[iceberg]` for `default.<table>` in the REST catalog on S3; `properties`
    go to `[iceberg.properties]` beside the store's `s3.*`."""
    return {
        "iceberg": {
            "catalog_type": "rest",
            "catalog_uri": catalog.uri,
            "warehouse": catalog.warehouse,
            "table": table,
            **iceberg,
            "properties": {**catalog.store.properties(), **(properties or {})},
        }
    }


def postgres_config(db: Postgres, store: ObjectStore, prefix: str, table: str) -> dict[str, dict[str, Any]]:
    """The appender's `[iceberg]` for the SQL catalog on `db`, data on S3 under `prefix`."""
    return {
        "iceberg": {
            "catalog_type": "sql",
            "catalog_uri": db.uri,
            "warehouse": f"s3://{BUCKET}/{prefix}",
            "table": table,
            "properties": store.properties(),
        }
    }


# ---- readers ----------------------------------------------------------------------------------


def pyiceberg_rest(catalog: RestCatalog) -> Catalog:
    """pyiceberg's RestCatalog on the server, reading data through pyarrow's S3 filesystem."""
    return load_catalog("rest", type="rest", uri=catalog.uri, **catalog.store.properties())


def pyiceberg_postgres(db: Postgres, store: ObjectStore, prefix: str) -> SqlCatalog:
    """pyiceberg's SqlCatalog on the same database (same catalog name as the appender)."""
    return SqlCatalog(
        "telemetry_lake", uri=db.sqlalchemy_uri, warehouse=f"s3://{BUCKET}/{prefix}", **store.properties()
    )


def load_rest_table(catalog: RestCatalog, table: str) -> Table:
    return pyiceberg_rest(catalog).load_table(f"default.{table}")


def duckdb_rest(catalog: RestCatalog) -> duckdb.DuckDBPyConnection:
    """DuckDB 1.5.5 (extensions from their PyPI packages) with the REST catalog attached as `lake`
    and an S3 secret for the object store."""
    store = catalog.store
    connection = duckdb_reader()
    host = store.endpoint.removeprefix("http://")
    connection.execute(
        f"""CREATE SECRET lake_s3 (TYPE s3, KEY_ID '{store.access_key_id}', SECRET '{store.secret_access_key}',
            REGION '{REGION}', ENDPOINT '{host}', URL_STYLE 'path', USE_SSL false)"""
    )
    connection.execute(
        f"ATTACH '{catalog.warehouse}' AS lake (TYPE iceberg, ENDPOINT '{catalog.uri}', AUTHORIZATION_TYPE 'none')"
    )
    return connection


def read_data_file(table: Table, path: str) -> pa.Table:
    """One Parquet data file of `table`, read through the table's own FileIO."""
    with table.io.new_input(path).open() as f:
        return pq.read_table(pa.BufferReader(f.read()))


def bodies(table: pa.Table) -> Counter[str]:
    return Counter(table.column("body").to_pylist())


# ---- load that survives outages ---------------------------------------------------------------


@dataclass
class LoadResult:
    """What the senders saw: bodies acknowledged (must be in the table exactly once), bodies whose
    export failed without an answer (at most once), and the status codes of refusals."""

    acknowledged: list[str] = field(default_factory=list)
    uncertain: list[str] = field(default_factory=list)
    refusals: Counter[int] = field(default_factory=Counter)
    retry_after_missing: int = 0


def load_specs(tag: str, batch: int, size: int, base_ns: int) -> list[LogSpec]:
    """`size` records with bodies `<tag>-<batch>-<i>`, three services, spread over two days."""
    day_ns = 86_400 * 10**9
    return [
        LogSpec(
            body=f"{tag}-{batch}-{i}",
            service=("checkout", "cart", "auth")[i % 3],
            time_ns=base_ns + (i % 2) * day_ns + batch * 1_000_000 + i,
            observed_ns=base_ns + (i % 2) * day_ns + batch * 1_000_000 + i,
            attributes={"record.id": f"{tag}-{batch}-{i}", "batch": batch},
        )
        for i in range(size)
    ]


class Load:
    """`senders` threads POSTing OTLP/protobuf batches to `appender` until `stop()`, each batch
    retried on 429/503 after its `Retry-After` (capped), as an OTLP exporter does; with `pause`,
    each sender waits that long between batches."""

    BASE_NS = 1_795_780_800 * 10**9  # 2026-11-27T12:00:00Z

    def __init__(self, appender: Appender, tag: str, *, senders: int = 2, batch: int = 200, pause: float = 0.0) -> None:
        self.appender = appender
        self.tag = tag
        self.senders = senders
        self.batch = batch
        self.pause = pause
        self.result = LoadResult()
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next = 0

    def __enter__(self) -> Load:
        for n in range(self.senders):
            thread = threading.Thread(target=self._run, name=f"load-{self.tag}-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> LoadResult:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)
            assert not thread.is_alive(), f"{thread.name} did not stop"
        self.assert_sending()
        return self.result

    @property
    def acknowledged(self) -> int:
        with self._lock:
            return len(self.result.acknowledged)

    def assert_sending(self) -> None:
        assert self.error is None, f"a sender failed: {self.error!r}"

    def _take(self) -> int:
        with self._lock:
            self._next += 1
            return self._next

    def _run(self) -> None:
        session = http_session()
        url = self.appender.ports.otlp_http_url
        try:
            while not self._stop.is_set():
                number = self._take()
                specs = load_specs(self.tag, number, self.batch, self.BASE_NS)
                payload = otlp_protobuf(specs)
                names = [str(s.body) for s in specs]
                while True:
                    try:
                        response = session.post(
                            url, data=payload, headers={"Content-Type": "application/x-protobuf"}, timeout=30
                        )
                    except requests.RequestException:
                        with self._lock:
                            self.result.uncertain += names
                        break
                    if response.status_code == 200:
                        with self._lock:
                            self.result.acknowledged += names
                        self._stop.wait(self.pause)
                        break
                    with self._lock:
                        self.result.refusals[response.status_code] += 1
                    if response.status_code not in (429, 503):
                        raise AssertionError(f"non-retryable refusal {response.status_code}: {response.text[:300]}")
                    retry_after = response.headers.get("retry-after", "")
                    if not retry_after.isdigit():
                        with self._lock:
                            self.result.retry_after_missing += 1
                    if self._stop.wait(min(float(retry_after or 1), 1.0)):
                        # Stopping: this batch was never acknowledged nor staged.
                        break
        except BaseException as error:  # noqa: BLE001 - reported by `assert_sending` and `stop`
            self.error = error
        finally:
            session.close()


def exactly_once_problems(table: pa.Table, result: LoadResult, limit: int = 10) -> list[str]:
    """Every acknowledged body exactly once, uncertain ones at most once, nothing else."""
    counts = bodies(table)
    acknowledged = Counter(result.acknowledged)
    uncertain = set(result.uncertain)
    problems = [f"{body!r} acknowledged but missing" for body in acknowledged if counts[body] == 0]
    problems += [f"{body!r} is in the table {n} times" for body, n in counts.items() if n > 1]
    problems += [
        f"{body!r} was never acknowledged" for body in counts if body not in acknowledged and body not in uncertain
    ]
    problems += [f"{body!r} was acknowledged {n} times" for body, n in acknowledged.items() if n > 1]
    if problems:
        problems.insert(0, f"{len(problems)} problems; table rows {table.num_rows}, acknowledged {len(acknowledged)}")
    return problems[:limit]


def snapshots(table: Table) -> int:
    return len(table.snapshots())


@dataclass
class HealthLog:
    """Samples the appender's gRPC health and `/readyz` in the background."""

    appender: Appender
    samples: list[tuple[float, str, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> HealthLog:
        self._thread = threading.Thread(target=self._run, name="health-log", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                status = self.appender.health(self.appender.ports.otlp_grpc)
                ready = self.appender.http("GET", "/readyz", timeout=5).status_code
            except Exception as error:  # noqa: BLE001 - a sample that failed is a sample too
                status, ready = f"error: {error}", 0
            self.samples.append((time.monotonic(), status, ready))

    def statuses_since(self, start: float) -> list[str]:
        return [status for t, status, _ in self.samples if t >= start]
