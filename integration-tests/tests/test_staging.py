"""Staging (format 2: encoded batches, rows made at flush) through the real appender binary.

- A `kill -9` in the middle of the flush of a 1,000,000-record backlog: after the restart every
  record is in the table exactly once.
- A staging file of the previous format is refused at start-up with what to do, and left as it
  was: its acknowledged records are not lost.
"""

from __future__ import annotations

import time
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


def batch_payload(batch: int, lines: list[str]) -> bytes:
    """One request: resource attributes name the batch, each record its index in it."""
    records = [
        LogRecord(
            time_unix_nano=1_795_773_600_000_000_000 + ((batch * 7919 + i * 104729) % 86_400_000) * 1_000_000,
            severity_text="INFO",
            body=AnyValue(string_value=lines[(batch + i) % len(lines)]),
            attributes=[KeyValue(key="i", value=AnyValue(string_value=str(i)))],
        )
        for i in range(RECORDS_PER_BATCH)
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
