"""Outages of the production lake while spans and data points flow (test_outages.py's logs tests,
for traces and metrics).

Embedded appender, REST catalog on S3 (see harness/catalog.py), senders exporting numbered spans
and data points of every metric type over OTLP (HTTP and gRPC), retrying refusals as an exporter
does. Each flush commits one snapshot per table with rows (`traces`, `metrics_gauge`, ...), each
table's commit checked and retried on its own. Through a catalog outage then an object store
outage, and through commits whose replies are lost, every acknowledged span and point must end
up in its table exactly once, and no table may hold one sealed set twice (two snapshots with the
same `telemetry-lake.writer-id` and `telemetry-lake.seal-id`).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from pyiceberg.table import Table

from harness.catalog import HealthLog, ObjectStore, RestCatalog, load_rest_table, rest_config
from harness.clients import http_session
from harness.lake import Appender, AppenderFactory
from harness.outages import FAST_FAILURE, committed_snapshots, outage
from harness.wait import wait_until
from test_signals_appender import (
    EXPORTS,
    SIGNAL_TABLES,
    grpc_call,
    numbered_id,
    numbered_points,
    numbered_spans,
    once_differences,
    spans_and_points_committed,
    table_name,
)

SERVICES = ("checkout", "cart", "auth")
WRITER_ID = "telemetry-lake.writer-id"
SEAL_ID = "telemetry-lake.seal-id"
# OTLP's retryable refusals.
RETRYABLE_HTTP = (429, 503)
RETRYABLE_GRPC = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ObjectStore]:
    s3 = ObjectStore(tmp_path / "s3").start_and_wait()
    yield s3
    s3.close()


@pytest.fixture
def catalog(tmp_path: Path, store: ObjectStore) -> Iterator[RestCatalog]:
    rest = RestCatalog(tmp_path / "rest", store).start_and_wait()
    yield rest
    rest.close()


@pytest.fixture
def gated_catalog(tmp_path: Path, store: ObjectStore) -> Iterator[RestCatalog]:
    rest = RestCatalog(tmp_path / "rest-gated", store, gated=True).start_and_wait()
    yield rest
    rest.close()


# ---- numbered spans and points ------------------------------------------------------------------


@dataclass
class SignalResult:
    """Per table (by default name): ids acknowledged (exactly once in the table), ids whose
    export ended without an answer (at most once); refusals by status."""

    acknowledged: dict[str, list[str]] = field(default_factory=lambda: {t: [] for t in SIGNAL_TABLES})
    uncertain: dict[str, list[str]] = field(default_factory=lambda: {t: [] for t in SIGNAL_TABLES})
    refusals: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(map(len, self.acknowledged.values()))


class SignalLoad:
    """`senders` threads exporting numbered spans and points to `appender` until `stop()`: each
    round a traces request and a metrics request, one over OTLP/HTTP and the other over gRPC
    (alternating), each retried after a retryable refusal (429/503, UNAVAILABLE/
    RESOURCE_EXHAUSTED) as an exporter does; `pause` between rounds."""

    def __init__(
        self, appender: Appender, *, senders: int = 2, spans: int = 60, points_per_type: int = 10, pause: float = 0.2
    ) -> None:
        self.appender = appender
        self.senders = senders
        self.spans, self.points_per_type, self.pause = spans, points_per_type, pause
        self.result = SignalResult()
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next = 0

    def __enter__(self) -> SignalLoad:
        for n in range(self.senders):
            thread = threading.Thread(target=self._run, name=f"signal-load-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def stop(self) -> SignalResult:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)
            assert not thread.is_alive(), f"{thread.name} did not stop"
        self.assert_sending()
        return self.result

    @property
    def acknowledged(self) -> int:
        """Spans and points acknowledged so far."""
        with self._lock:
            return self.result.total

    def assert_sending(self) -> None:
        assert self.error is None, f"a sender failed: {self.error!r}"

    def _take(self) -> int:
        with self._lock:
            self._next += 1
            return self._next

    def _run(self) -> None:
        session = http_session()
        try:
            while not self._stop.is_set():
                number = self._take()
                service = SERVICES[number % len(SERVICES)]
                spans, span_ids = numbered_spans(number * self.spans, self.spans, service)
                points, point_ids = numbered_points(number * self.points_per_type, self.points_per_type, service)
                if not self._export(session, "traces", spans, {"traces": span_ids}, http=number % 2 == 0):
                    break
                if not self._export(session, "metrics", points, point_ids, http=number % 2 == 1):
                    break
                self._stop.wait(self.pause)
        except BaseException as error:  # noqa: BLE001 - reported by `stop`
            self.error = error
        finally:
            session.close()

    def _export(
        self,
        session: requests.Session,
        otlp_signal: str,
        request: ExportTraceServiceRequest | ExportMetricsServiceRequest,
        ids: dict[str, list[str]],
        *,
        http: bool,
    ) -> bool:
        """Exports `request` until acknowledged (True), left uncertain (True) or, while refused,
        the load stops (False: never staged)."""
        payload = request.SerializeToString()
        method, _ = EXPORTS[otlp_signal]
        while True:
            if http:
                try:
                    response = session.post(
                        f"http://127.0.0.1:{self.appender.ports.otlp_http}/v1/{otlp_signal}",
                        data=payload,
                        headers={"Content-Type": "application/x-protobuf"},
                        timeout=30,
                    )
                except requests.RequestException:
                    return self._record(self.result.uncertain, ids)
                if response.status_code == 200:
                    check_no_rejections(otlp_signal, response.content)
                    return self._record(self.result.acknowledged, ids)
                refusal = str(response.status_code)
                if response.status_code not in RETRYABLE_HTTP:
                    raise AssertionError(f"POST /v1/{otlp_signal}: non-retryable {refusal}: {response.text[:300]}")
            else:
                status, reply = grpc_call(self.appender, method, payload)
                if status == grpc.StatusCode.OK:
                    check_no_rejections(otlp_signal, reply)
                    return self._record(self.result.acknowledged, ids)
                if status == grpc.StatusCode.DEADLINE_EXCEEDED:
                    return self._record(self.result.uncertain, ids)
                refusal = status.name
                if status not in RETRYABLE_GRPC:
                    raise AssertionError(f"{method}: non-retryable {refusal}")
            with self._lock:
                self.result.refusals[refusal] += 1
            if self._stop.wait(1.0):
                return False  # refused, never staged

    def _record(self, into: dict[str, list[str]], ids: dict[str, list[str]]) -> bool:
        with self._lock:
            for table, names in ids.items():
                into[table] += names
        return True


def check_no_rejections(otlp_signal: str, reply: bytes) -> None:
    if otlp_signal == "traces":
        rejected = ExportTraceServiceResponse.FromString(reply).partial_success.rejected_spans
    else:
        rejected = ExportMetricsServiceResponse.FromString(reply).partial_success.rejected_data_points
    assert rejected == 0, f"{otlp_signal}: {rejected} rejected by a healthy appender"


# ---- the appender and the lake ------------------------------------------------------------------


def signal_config(catalog: RestCatalog, properties: dict[str, str], max_records: int) -> dict[str, dict[str, Any]]:
    """The appender on `catalog` (its logs table unused), flushing every second or at
    `max_records` staged rows."""
    config = rest_config(catalog, "unused_logs", properties)
    config["flush"] = {"interval": "1s", "max_records": max_records, "max_bytes": "64MiB"}
    return config


def lake_table(catalog: RestCatalog, appender: Appender, table: str) -> Table:
    return load_rest_table(catalog, table_name(appender, table))


def landed_ids(table: Table, name: str) -> list[str]:
    """The span ids (traces) or `point.id` attributes (metrics tables) of the table's rows."""
    column = "span_id" if name == "traces" else "attributes"
    rows = table.scan(selected_fields=(column,)).to_arrow().to_pylist()
    return [str(numbered_id(row, name)) for row in rows]


def once_problems(catalog: RestCatalog, appender: Appender, result: SignalResult) -> list[str]:
    """Per table: every acknowledged id exactly once, uncertain ones at most once, nothing else."""
    problems = []
    for name in SIGNAL_TABLES:
        ids = landed_ids(lake_table(catalog, appender, name), name)
        sent = set(result.acknowledged[name])
        uncertain = set(result.uncertain[name])
        doubled, missing, unexpected = once_differences(ids, sent, uncertain)
        if doubled or missing or unexpected:
            problems.append(
                f"{name}: {len(ids)} rows for {len(sent)} acknowledged and {len(uncertain)} uncertain; "
                f"{len(doubled)} twice or more (e.g. {doubled[:3]}), {len(missing)} missing (e.g. {missing[:3]}), "
                f"{len(unexpected)} never acknowledged (e.g. {unexpected[:3]})"
            )
    return problems


def sealed_set_problems(catalog: RestCatalog, appender: Appender) -> tuple[list[str], dict[str, int]]:
    """Tables holding a sealed set twice (two snapshots with the same writer id and seal id) or
    a snapshot of the appender's without them; and the number of snapshots of each table."""
    problems = []
    counts = {}
    for name in SIGNAL_TABLES:
        table = lake_table(catalog, appender, name)
        snapshots = table.snapshots()
        counts[name] = len(snapshots)
        summaries = [s.summary.additional_properties if s.summary else {} for s in snapshots]
        unnamed = [s.snapshot_id for s, p in zip(snapshots, summaries, strict=True) if not p.get(SEAL_ID)]
        pairs = Counter((p.get(WRITER_ID), p.get(SEAL_ID)) for p in summaries if p.get(SEAL_ID))
        twice = {pair: n for pair, n in pairs.items() if n > 1}
        if twice or unnamed:
            details = [
                (
                    s.snapshot_id,
                    p.get(WRITER_ID),
                    p.get(SEAL_ID),
                    p.get("telemetry-lake.commit-id"),
                    p.get("added-records"),
                )
                for s, p in zip(snapshots, summaries, strict=True)
                if (p.get(WRITER_ID), p.get(SEAL_ID)) in twice
            ]
            problems.append(
                f"{name}: sealed sets committed more than once {twice} (snapshot, writer, seal, commit id, "
                f"records: {details[:6]}); snapshots without a seal id {unnamed[:5]}"
            )
    return problems, counts


def drain(appender: Appender) -> None:
    appender.flush_http()
    wait_until(lambda: appender.stats()["buffer_records"] == 0, timeout=90, what="staging to drain", interval=0.5)


# ---- the tests ----------------------------------------------------------------------------------


@pytest.mark.timeout(480)
def test_catalog_then_object_store_outage_keeps_every_span_and_point_once(
    lake_appender: AppenderFactory, catalog: RestCatalog, store: ObjectStore
) -> None:
    appender = lake_appender(signal_config(catalog, FAST_FAILURE, 20_000))
    notes = []
    with HealthLog(appender) as health, SignalLoad(appender) as load:
        wait_until(
            lambda: spans_and_points_committed(appender) and committed_snapshots(appender) >= 2 * len(SIGNAL_TABLES),
            timeout=90,
            what="two flushes of spans and points before the outages",
            interval=0.5,
        )
        for name, down, back in (
            ("catalog", catalog.stop, lambda: catalog.start_and_wait()),
            ("object store", store.down, store.up),
        ):
            notes.append(outage(name, appender, load, health, down, back, resume_timeout=90))
        result = load.stop()
    drain(appender)
    assert appender.health(appender.ports.otlp_grpc) == "SERVING"
    stats = appender.stats()["appender"]
    assert stats["flush_failures"] >= 2, stats

    problems = once_problems(catalog, appender, result)
    assert not problems, "after the outages the tables differ from what was acknowledged:\n  " + "\n  ".join(problems)
    doubles, snapshots = sealed_set_problems(catalog, appender)
    assert not doubles, "a sealed set landed twice in a table:\n  " + "\n  ".join(doubles)
    acknowledged = {table: len(ids) for table, ids in result.acknowledged.items()}
    print(
        f"signal outages: acknowledged {acknowledged}, uncertain {sum(map(len, result.uncertain.values()))}, "
        f"refusals {dict(result.refusals)}, snapshots {snapshots}, flush failures {stats['flush_failures']}; "
        + "; ".join(notes)
    )


@pytest.mark.timeout(360)
def test_lost_commit_replies_land_spans_and_points_once(
    lake_appender: AppenderFactory, gated_catalog: RestCatalog
) -> None:
    """The catalog commits a table's snapshot, its reply never arrives: the appender must find
    its commit in that table's history instead of committing again, table by table."""
    gate = gated_catalog.gate
    assert gate is not None
    appender = lake_appender(signal_config(gated_catalog, {"rest.client.socket-timeout-ms": "5000"}, 5_000))
    traces = table_name(appender, "traces")

    def lost_tables() -> Counter[str]:
        """Lost replies per table (the gate prints each lost commit's request line)."""
        lines = [line for line in gate.log_text().splitlines() if line.startswith("gate lost the reply to ")]
        return Counter(line.split("/tables/", 1)[-1].split(" ", 1)[0].split("?", 1)[0] for line in lines)

    with SignalLoad(appender) as load:
        wait_until(lambda: spans_and_points_committed(appender), timeout=90, what="spans and points committed")
        gate.lose_commit_replies()
        # Lost replies of the traces table and of metrics tables, several flushes' worth.
        wait_until(
            lambda: (
                gate.lost_replies >= 6
                and lost_tables()[traces] >= 2
                and sum(n for t, n in lost_tables().items() if t != traces) >= 2
            ),
            timeout=150,
            what="lost commit replies of traces and of metrics tables",
            interval=0.5,
        )
        gate.up()
        snapshots_after = committed_snapshots(appender)
        wait_until(
            lambda: committed_snapshots(appender) > snapshots_after + len(SIGNAL_TABLES),
            timeout=90,
            what="commits after the repair",
            interval=0.5,
        )
        result = load.stop()
    drain(appender)

    problems = once_problems(gated_catalog, appender, result)
    assert not problems, "commits with lost replies lost or doubled spans or points:\n  " + "\n  ".join(problems)
    doubles, snapshots = sealed_set_problems(gated_catalog, appender)
    assert not doubles, "a sealed set landed twice in a table:\n  " + "\n  ".join(doubles)
    acknowledged = {table: len(ids) for table, ids in result.acknowledged.items()}
    print(
        f"lost replies: {dict(lost_tables())}; acknowledged {acknowledged}, "
        f"uncertain {sum(map(len, result.uncertain.values()))}, snapshots {snapshots}"
    )
