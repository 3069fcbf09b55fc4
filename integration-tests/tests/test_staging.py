"""Staging (format 2: encoded batches, rows made at flush) through the real appender binary.

- A `kill -9` in the middle of the flush of a 1,000,000-record backlog: after the restart every
  record is in the table exactly once.
- A staging file of the previous format is refused at start-up with what to do, and left as it
  was: its acknowledged records are not lost.
- At the smallest `staging.memory_limit` (16 MiB, with 1 MiB requests: DuckDB gets 19 MiB), a
  backlog several times DuckDB's memory is staged and flushed, and flushes run while appends go
  on: DuckDB is never invalidated, every record lands once, and the appender exits 0.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from harness.lake import Appender, AppenderFactory, duckdb_reader, duckdb_scan, load_table, snapshot_count
from harness.wait import wait_until
from otlp_client import grpc_export_raw, loghub_lines

BATCHES = 500
RECORDS_PER_BATCH = 2000
SERVICES = ("checkout", "payments", "search", "auth")


def batch_payload(
    batch: int,
    lines: list[str],
    count: int = RECORDS_PER_BATCH,
    first_line: int | None = None,
    severity: str = "INFO",
) -> bytes:
    """One request of `count` records: resource attributes name the batch, each record its index in
    it; bodies are Loghub lines from `first_line` (default: `batch`) on."""
    first = batch if first_line is None else first_line
    records = [
        LogRecord(
            time_unix_nano=1_795_773_600_000_000_000 + ((batch * 7919 + i * 104729) % 86_400_000) * 1_000_000,
            severity_text=severity,
            body=AnyValue(string_value=lines[(first + i) % len(lines)]),
            attributes=[KeyValue(key="i", value=AnyValue(string_value=str(i)))],
        )
        for i in range(count)
    ]
    resource = Resource(
        attributes=[
            KeyValue(key="service.name", value=AnyValue(string_value=SERVICES[batch % len(SERVICES)])),
            KeyValue(key="batch.id", value=AnyValue(string_value=str(batch))),
        ]
    )
    request = ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(resource=resource, scope_logs=[ScopeLogs(log_records=records)])]
    )
    return request.SerializeToString()


def spill_files(appender: Appender) -> list[Path]:
    spill = Path(f"{appender.staging_path}.spill")
    return list(spill.rglob("run-*")) if spill.exists() else []


# Sending a million records to a debug build and flushing them twice takes minutes beside the
# other tests.
@pytest.mark.timeout(900)
def test_kill9_in_the_middle_of_a_flush_of_a_million_records_loses_and_doubles_nothing(
    make_appender: AppenderFactory,
) -> None:
    appender = make_appender()
    lines = loghub_lines("HDFS")
    for batch in range(BATCHES):
        error = grpc_export_raw(appender.ports, batch_payload(batch, lines))
        assert error is None, f"batch {batch} refused: {error}"
    total = BATCHES * RECORDS_PER_BATCH
    assert appender.stats()["buffer_records"] == total

    # The flush sorts 1M rows in runs that spill beside the staging file: kill it while it does.
    appender.flush_signal()
    wait_until(lambda: spill_files(appender), timeout=300, what="the flush to spill its first sorted run")
    appender.kill9()
    assert snapshot_count(appender) == 0, "the kill was meant to land before the commit"

    started = time.monotonic()
    appender.start_and_wait()  # commits the sealed set left behind, at start-up
    wait_until(lambda: appender.stats()["buffer_records"] == 0, timeout=300, what="the start-up flush")
    elapsed = time.monotonic() - started
    assert not spill_files(appender), "spill files of the killed flush are gone"

    reader = duckdb_reader()
    rows, distinct, batches = reader.sql(
        f"""SELECT count(*), count(DISTINCT (resource_attributes['batch.id'], log_attributes['i'])),
                   count(DISTINCT resource_attributes['batch.id'])
            FROM {duckdb_scan(appender)}"""
    ).fetchone()
    assert (rows, distinct, batches) == (total, total, BATCHES), f"{rows} rows, {distinct} distinct ({elapsed:.0f} s)"
    snapshots = load_table(appender).snapshots()
    assert len(snapshots) == 1, "one snapshot for the one flush"
    files = int(snapshots[0].summary["added-data-files"])
    assert files == 2, f"{files} data files: one per day partition (the rows span two days), the runs merged"


def test_a_staging_file_of_the_previous_format_is_refused_and_kept(make_appender: AppenderFactory) -> None:
    appender = make_appender(start=False)
    appender.staging_path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(appender.staging_path)) as old:
        old.execute("CREATE TABLE staged_rows (body VARCHAR); INSERT INTO staged_rows VALUES ('acknowledged')")
    appender.start()
    wait_until(lambda: not appender.running, timeout=60, what="the appender to refuse the file")
    assert appender.stop() != 0
    log = appender.log_text()
    assert "has format 1" in log and "Drain it with the release that wrote it" in log, log[-2000:]
    with duckdb.connect(str(appender.staging_path), read_only=True) as old:
        assert old.execute("SELECT body FROM staged_rows").fetchall() == [("acknowledged",)]


SMALL_BATCHES = 300
SMALL_RECORDS = 1000


def small_payload(batch: int, lines: list[str]) -> bytes:
    """One request of SMALL_RECORDS records (under 1 MiB), named like `batch_payload`'s."""
    payload = batch_payload(batch, lines, count=SMALL_RECORDS, first_line=batch * 31, severity="")
    assert len(payload) < 1 << 20
    return payload


@pytest.mark.timeout(900)
def test_the_smallest_memory_limit_never_invalidates_staging(make_appender: AppenderFactory) -> None:
    appender = make_appender({"staging": {"memory_limit": "16MiB"}, "otlp": {"max_recv_msg_size": "1MiB"}})
    lines = loghub_lines("HDFS")

    def send(batches: range) -> None:
        def export(batch: int) -> Exception | None:
            return grpc_export_raw(appender.ports, small_payload(batch, lines))

        with ThreadPoolExecutor(max_workers=4) as pool:
            for batch, error in zip(batches, pool.map(export, batches), strict=True):
                assert error is None, f"batch {batch} refused: {error}"

    # A backlog of several times DuckDB's memory, staged, then flushed at once.
    backlog = range(SMALL_BATCHES)
    send(backlog)
    assert appender.stats()["buffer_records"] == len(backlog) * SMALL_RECORDS
    appender.flush_http()

    # Flushes while appends go on: reads of sealed sets beside appends and checkpoints.
    stop = threading.Event()
    failures: list[BaseException] = []

    def flush_often() -> None:
        try:
            while not stop.is_set():
                appender.flush_http()
                time.sleep(0.2)
        except BaseException as error:  # noqa: BLE001 - reported by the test thread
            failures.append(error)

    flusher = threading.Thread(target=flush_often)
    flusher.start()
    try:
        send(range(SMALL_BATCHES, 2 * SMALL_BATCHES))
    finally:
        stop.set()
        flusher.join()
    assert not failures, f"a flush during the appends failed: {failures[0]}"
    appender.flush_http()

    total = 2 * SMALL_BATCHES * SMALL_RECORDS
    assert appender.stats()["buffer_records"] == 0
    assert appender.running, "the appender stopped"
    assert appender.stop() == 0
    log = appender.log_text()
    for sign in ("invalidated", "FATAL", "staging database failed", "flush failed"):
        assert sign not in log, f"{sign!r} in the log: {log[-3000:]}"
    rows, distinct = (
        duckdb_reader()
        .sql(
            f"""SELECT count(*), count(DISTINCT (resource_attributes['batch.id'], log_attributes['i']))
                FROM {duckdb_scan(appender)}"""
        )
        .fetchone()
    )
    assert (rows, distinct) == (total, total), f"{rows} rows, {distinct} distinct"
