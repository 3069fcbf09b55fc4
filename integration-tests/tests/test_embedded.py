"""The appender in embedded mode: OTLP in over gRPC and HTTP, Iceberg out, read by pyiceberg.

Covers the issue "Embedded lake": every transport a real client uses, the three manual flushes
and the three flush thresholds, the table's schema and values, restarts, graceful and hard
stops (guarantees 1 and 2 of DESIGN.md in embedded mode) and the admin plane.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime

import pytest
import requests
from pyiceberg.expressions import LessThan
from pyiceberg.transforms import DayTransform
from pyiceberg.types import IntegerType, LongType, MapType, StringType, TimestamptzType

from harness.clients import prometheus_samples
from harness.lake import Appender, AppenderFactory, duckdb_reader, duckdb_scan, load_table, read_table, snapshot_count
from harness.ports import free_ports
from harness.wait import wait_until
from otlp_client import (
    RECORD_ID,
    LogSpec,
    Transport,
    loghub_records,
    otlp_json,
    otlp_protobuf,
    post_logs,
    record_id,
    send,
    spec_body_counts,
    table_mismatches,
)

MIDNIGHT = datetime(2026, 11, 28, tzinfo=UTC)  # the day boundary that Loghub records cross

EXPECTED_COLUMNS: dict[str, type] = {
    "timestamp": TimestamptzType,
    "observed_timestamp": TimestamptzType,
    "severity_number": IntegerType,
    "severity_text": StringType,
    "body": StringType,
    "trace_id": StringType,
    "span_id": StringType,
    "trace_flags": IntegerType,
    "event_name": StringType,
    "service_name": StringType,
    "deployment_environment": StringType,
    "resource_attributes": MapType,
    "scope_attributes": MapType,
    "log_attributes": MapType,
    "scope_name": StringType,
    "scope_version": StringType,
    "resource_schema_url": StringType,
    "scope_schema_url": StringType,
    "dropped_attributes_count": IntegerType,
    "kafka_partition": IntegerType,
    "kafka_offset": LongType,
}

# A different Loghub system per transport, for variety of line shapes (HDFS lines reach 2.5 kB).
TRANSPORT_SYSTEMS = {
    Transport.GRPC: "HDFS",
    Transport.GRPC_GZIP: "Apache",
    Transport.HTTP_PROTOBUF: "OpenStack",
    Transport.HTTP_PROTOBUF_GZIP: "Spark",
    Transport.HTTP_PROTOBUF_ZSTD: "Hadoop",
    Transport.HTTP_JSON: "Linux",
    Transport.HTTP_JSON_GZIP: "Zookeeper",
}


def assert_table_holds(appender: Appender, specs: list[LogSpec]) -> None:
    problems = table_mismatches(read_table(appender), specs)
    assert not problems, "table differs from what was sent:\n  " + "\n  ".join(problems)


def wait_for_rows(appender: Appender, count: int, timeout: float = 30.0) -> None:
    wait_until(
        lambda: read_table(appender).num_rows >= count,
        timeout=timeout,
        what=f"{count} rows in the table (stats: {appender.stats()})",
        interval=0.25,
    )


def wait_for_snapshots(appender: Appender, count: int, timeout: float = 30.0) -> None:
    wait_until(lambda: snapshot_count(appender) >= count, timeout=timeout, what=f"{count} snapshots", interval=0.25)


def rich_records(tag: str) -> list[LogSpec]:
    """Records that use every column: trace context, attribute types, schema URLs, events."""
    base = 1_764_288_000_123_456_789  # 2025-11-28T00:00:00.123456789Z
    return [
        LogSpec(
            body="user alice logged in",
            service="checkout",
            time_ns=base,
            observed_ns=base + 5_000_000,
            severity_number=13,
            severity_text="WARN",
            attributes={
                RECORD_ID: f"{tag}:full",
                "user.name": "alice",
                "http.status_code": 503,
                "ratio": 0.25,
                "retry": True,
                "tags": ["a", "b"],
                "nested": {"k": "v"},
            },
            trace_id="0AF7651916CD43DD8448EB211C80319C",
            span_id="B7AD6B7169203331",
            trace_flags=1,
            event_name="session.start",
            dropped_attributes_count=2,
            resource_attributes={"deployment.environment.name": "staging", "host.name": "web-1", "k8s.replicas": 3},
            resource_schema_url="https://opentelemetry.io/schemas/1.26.0",
            scope_name="checkout.auth",
            scope_version="2.1.0",
            scope_attributes={"library.language": "python"},
            scope_schema_url="https://opentelemetry.io/schemas/1.25.0",
        ),
        LogSpec(
            # time_unix_nano 0: the timestamp column takes observed_time_unix_nano
            body="no event time, legacy environment key",
            service="billing",
            time_ns=0,
            observed_ns=base + 86_400_000_000_000,
            severity_number=17,
            severity_text="ERROR",
            attributes={RECORD_ID: f"{tag}:observed-only"},
            resource_attributes={"deployment.environment": "prod"},
        ),
        LogSpec(
            body="both environment keys: the .name one wins",
            service="billing",
            time_ns=base + 1_000,
            observed_ns=base + 2_000,
            attributes={RECORD_ID: f"{tag}:both-env"},
            resource_attributes={"deployment.environment.name": "eu-1", "deployment.environment": "legacy"},
        ),
        LogSpec(
            body={"user": "bob", "ok": True},
            service="checkout",
            time_ns=base + 3_000,
            observed_ns=base + 4_000,
            severity_number=5,
            severity_text="DEBUG",
            attributes={RECORD_ID: f"{tag}:map-body"},
        ),
    ]


# ---- transports and values ---------------------------------------------------------------------


@pytest.mark.parametrize("transport", list(Transport), ids=lambda t: t.value)
def test_each_transport_lands_loghub_records_in_the_table(appender: Appender, transport: Transport) -> None:
    specs = loghub_records(TRANSPORT_SYSTEMS[transport], 400, tag=transport.value)
    send(appender.ports, specs, transport)
    response = appender.flush_http()
    assert response["records"] == len(specs), response
    assert_table_holds(appender, specs)


@pytest.mark.parametrize(
    "transport", [Transport.GRPC, Transport.HTTP_PROTOBUF_GZIP, Transport.HTTP_JSON], ids=lambda t: t.value
)
def test_large_export_under_the_default_limit_is_accepted(appender: Appender, transport: Transport) -> None:
    """About 10 MiB in one request (the default otlp.max_recv_msg_size is 16 MiB)."""
    specs = [replace(s, body=str(s.body).ljust(4000, "~")) for s in loghub_records("HDFS", 2500)]
    send(appender.ports, specs, transport)
    assert appender.flush_http()["records"] == len(specs)
    assert_table_holds(appender, specs)


@pytest.mark.parametrize("transport", [Transport.GRPC, Transport.HTTP_JSON], ids=lambda t: t.value)
def test_every_column_round_trips(appender: Appender, transport: Transport) -> None:
    specs = rich_records(transport.value)
    send(appender.ports, specs, transport)
    appender.flush_http()
    assert_table_holds(appender, specs)


def test_otlp_json_variants_and_empty_requests_are_accepted(appender: Appender) -> None:
    """The spec allows int64 as a JSON number too, and receivers must ignore unknown fields."""
    specs = loghub_records("Zookeeper", 3, tag="json-variants")
    document = otlp_json(specs)
    document["futureTopLevelField"] = {"x": 1}
    for record in document["resourceLogs"][0]["scopeLogs"][0]["logRecords"]:
        record["timeUnixNano"] = int(record["timeUnixNano"])
        record["futureRecordField"] = "ignored"
    for body, content_type in (
        (json.dumps(document).encode(), "application/json"),
        (b"{}", "application/json"),
        (b'{"resourceLogs": []}', "application/json"),
        (b"", "application/x-protobuf"),
    ):
        response = post_logs(appender.ports, body, content_type)
        assert response.status_code == 200, (body[:80], response.status_code, response.content[:300])
    assert appender.stats()["buffer_records"] == len(specs)
    appender.flush_http()
    assert_table_holds(appender, specs)


def test_duplicate_attribute_keys_keep_the_table_readable(appender: Appender) -> None:
    """OTLP forbids duplicate keys but a receiver still gets them. Refusing the request or
    keeping one value per key are both fine; writing a map with repeated keys is not: DuckDB
    then refuses to read the whole table ("Map keys must be unique")."""
    specs = loghub_records("Linux", 2, tag="dup-keys")
    document = otlp_json(specs)
    resource_logs = document["resourceLogs"][0]
    resource_logs["resource"]["attributes"].append({"key": "service.name", "value": {"stringValue": "again"}})
    resource_logs["scopeLogs"][0]["logRecords"][0]["attributes"] += [
        {"key": "dup", "value": {"stringValue": "first"}},
        {"key": "dup", "value": {"stringValue": "second"}},
    ]
    response = post_logs(appender.ports, json.dumps(document).encode(), "application/json")
    assert response.status_code in (200, 400), (response.status_code, response.content[:300])
    appender.flush_http()
    for row in read_table(appender).to_pylist():
        for column in ("resource_attributes", "scope_attributes", "log_attributes"):
            keys = [k for k, _ in row[column] or []]
            assert len(keys) == len(set(keys)), f"{column} repeats keys: {row[column]}"
    assert duckdb_reader().execute(f"SELECT count(*) FROM {duckdb_scan(appender)}").fetchone() == (
        len(specs) if response.status_code == 200 else 0,
    )


def test_table_schema_partitioning_and_day_files(appender: Appender) -> None:
    table = load_table(appender)
    assert table.format_version == 2
    fields = {f.name: f for f in table.schema().fields}
    assert list(fields) == list(EXPECTED_COLUMNS), f"columns: {list(fields)}"
    wrong = {n: str(f.field_type) for n, f in fields.items() if not isinstance(f.field_type, EXPECTED_COLUMNS[n])}
    assert not wrong, f"columns of the wrong type: {wrong}"
    for name in ("resource_attributes", "scope_attributes", "log_attributes"):
        map_type = fields[name].field_type
        assert isinstance(map_type.key_type, StringType) and isinstance(map_type.value_type, StringType), map_type

    (partition_field,) = table.spec().fields
    assert isinstance(partition_field.transform, DayTransform)
    assert table.schema().find_field(partition_field.source_id).name == "timestamp"

    # 2,000 records 100 ms apart from 23:58 UTC: two days, so one data file per day partition.
    specs = loghub_records("Hadoop", 2000)
    send(appender.ports, specs)
    response = appender.flush_grpc()
    assert (response.records, response.data_files) == (2000, 2), response
    files = load_table(appender).inspect.files()
    assert files.num_rows == 2
    assert sorted(files.column("record_count").to_pylist()) == [800, 1200]


def test_duckdb_reads_the_table_and_both_readers_prune_by_day(appender: Appender) -> None:
    specs = loghub_records("Hadoop", 2000)  # 1,200 on 2026-11-27, 800 on 2026-11-28
    send(appender.ports, specs)
    appender.flush_grpc()
    scan = duckdb_scan(appender)
    duck = duckdb_reader()
    rows, ids, services, kafka = duck.execute(
        f"SELECT count(*), count(DISTINCT log_attributes['record.id']), count(DISTINCT service_name),"
        f" count(kafka_offset) + count(kafka_partition) FROM {scan}"
    ).fetchone()
    assert (rows, ids, services, kafka) == (2000, 2000, 1, 0)
    bodies = Counter(body for (body,) in duck.execute(f"SELECT body FROM {scan}").fetchall())
    assert bodies == spec_body_counts(specs)

    first_day = f"timestamp < TIMESTAMPTZ '{MIDNIGHT.isoformat()}'"
    explain = duck.execute(f"EXPLAIN ANALYZE SELECT count(*) FROM {scan} WHERE {first_day}").fetchall()
    plan = "\n".join(str(row[-1]) for row in explain)
    assert "Total Files Read: 1" in plan, plan
    assert duck.execute(f"SELECT count(*) FROM {scan} WHERE {first_day}").fetchone() == (1200,)
    planned = list(load_table(appender).scan(row_filter=LessThan("timestamp", MIDNIGHT.isoformat())).plan_files())
    assert len(planned) == 1, [task.file.file_path for task in planned]


# ---- flushing ------------------------------------------------------------------------------


def test_flush_each_way_makes_one_snapshot(appender: Appender) -> None:
    sent: list[LogSpec] = []

    def send_batch(tag: str, n: int) -> list[LogSpec]:
        batch = loghub_records("Apache", n, tag=tag)
        send(appender.ports, batch)
        sent.extend(batch)
        return batch

    batch = send_batch("grpc-flush", 100)
    reply = appender.flush_grpc()
    assert reply.records == len(batch) and reply.bytes > 0 and reply.data_files >= 1, reply
    table = load_table(appender)
    assert len(table.snapshots()) == 1
    assert table.current_snapshot().snapshot_id == reply.snapshot_id
    assert table.current_snapshot().summary["added-records"] == str(len(batch))
    assert_table_holds(appender, sent)

    batch = send_batch("http-flush", 150)
    reply_json = appender.flush_http()
    assert set(reply_json) >= {"records", "bytes", "data_files", "snapshot_id", "duration_seconds"}, reply_json
    assert reply_json["records"] == len(batch) and reply_json["data_files"] >= 1, reply_json
    table = load_table(appender)
    assert len(table.snapshots()) == 2
    assert table.current_snapshot().snapshot_id == reply_json["snapshot_id"]
    assert_table_holds(appender, sent)

    send_batch("signal-flush", 50)
    appender.flush_signal()
    wait_for_snapshots(appender, 3)
    assert snapshot_count(appender) == 3
    assert_table_holds(appender, sent)
    assert appender.stats()["last_flush"]["trigger"] == "signal"


def test_flush_with_nothing_staged_commits_nothing(appender: Appender) -> None:
    reply = appender.flush_grpc()
    assert (reply.records, reply.snapshot_id, reply.data_files) == (0, 0, 0), reply
    assert appender.flush_http()["records"] == 0
    assert snapshot_count(appender) == 0


def assert_stays_staged(appender: Appender, records: int, seconds: float) -> None:
    """Over `seconds`, nothing is committed and `records` stay in the buffer."""
    try:
        wait_until(lambda: snapshot_count(appender) > 0, timeout=seconds, what="an unwanted flush")
    except AssertionError:
        assert appender.stats()["buffer_records"] == records
        return
    raise AssertionError(f"a flush happened below every threshold: {appender.stats()['last_flush']}")


def assert_flushed_by(appender: Appender, specs: list[LogSpec], trigger: str, timeout: float = 30.0) -> None:
    wait_for_rows(appender, len(specs), timeout)
    assert_table_holds(appender, specs)
    stats = appender.stats()
    assert stats["last_flush"]["trigger"] == trigger, stats["last_flush"]
    assert stats["buffer_records"] == 0, stats


def test_flush_interval_alone_commits(make_appender: AppenderFactory) -> None:
    # Set through the environment, which must override the file's 1h.
    appender = make_appender(env={"TELEMETRY_LAKE_FLUSH__INTERVAL": "2s"})
    specs = loghub_records("OpenSSH", 200)
    send(appender.ports, specs)
    assert appender.stats()["buffer_records"] == len(specs)
    assert_flushed_by(appender, specs, "interval", timeout=15)
    # An idle interval commits nothing.
    wait_until(lambda: appender.stats()["time_since_last_flush_seconds"] > 3, timeout=10, what="an idle interval")
    assert snapshot_count(appender) == 1


def test_flush_max_records_alone_commits(make_appender: AppenderFactory) -> None:
    appender = make_appender({"flush": {"max_records": 50}})
    below = loghub_records("Zookeeper", 30, tag="below")
    send(appender.ports, below)
    assert_stays_staged(appender, 30, seconds=2)
    over = loghub_records("Zookeeper", 90, tag="over")
    send(appender.ports, over)
    assert_flushed_by(appender, below + over, "max_records")


def test_flush_max_bytes_alone_commits(make_appender: AppenderFactory) -> None:
    appender = make_appender({"flush": {"max_bytes": "20KiB"}})
    below = loghub_records("HDFS", 5, tag="below")
    send(appender.ports, below)
    assert_stays_staged(appender, 5, seconds=2)
    over = loghub_records("HDFS", 300, tag="over")  # ~200 bytes of body each, plus attributes
    send(appender.ports, over)
    assert_flushed_by(appender, below + over, "max_bytes")


def test_flushes_racing_concurrent_exports_lose_and_duplicate_nothing(appender: Appender) -> None:
    """Four clients (gRPC and HTTP) export while flushes run back to back: each record lands once."""
    transports = [Transport.GRPC, Transport.HTTP_PROTOBUF, Transport.GRPC_GZIP, Transport.HTTP_JSON]
    per_client = {
        t: [loghub_records("Spark", 50, start=100 * b, tag=f"{t.value}-{b}") for b in range(8)] for t in transports
    }

    def client(transport: Transport) -> None:
        for batch in per_client[transport]:
            send(appender.ports, batch, transport)

    with ThreadPoolExecutor(max_workers=len(transports)) as pool:
        sending = [pool.submit(client, t) for t in transports]
        flushes = 0
        while not all(f.done() for f in sending):
            appender.flush_grpc()
            flushes += 1
        for f in sending:
            f.result()
    appender.flush_grpc()
    assert_table_holds(appender, [spec for batches in per_client.values() for batch in batches for spec in batch])
    assert flushes > 1, "the exports finished before a second flush: the race was not exercised"


# ---- configuration -----------------------------------------------------------------------


def test_environment_alone_configures_the_appender(make_appender: AppenderFactory) -> None:
    """No config file: every key from TELEMETRY_LAKE_* variables, the lake in ./data."""
    appender = make_appender({"flush": {"max_records": 40}}, config_in_env=True)
    assert not appender.config_path.exists()
    specs = loghub_records("Apache", 40)
    send(appender.ports, specs, Transport.HTTP_JSON)
    assert_flushed_by(appender, specs, "max_records")
    assert appender.catalog_db.is_file() and appender.staging_path.exists()


def test_unknown_config_key_is_refused_by_name(make_appender: AppenderFactory) -> None:
    appender = make_appender({"flush": {"max_recordz": 10}}, start=False)
    process = appender.start().process
    assert process is not None
    code = wait_until(lambda: process.poll() is not None, timeout=20, what="exit on an unknown key") and process.poll()
    assert code != 0, "exited with 0 on an unknown key"
    assert "max_recordz" in appender.log_text(), "the error does not name the unknown key"


def test_waits_for_an_unreachable_catalog_instead_of_exiting(make_appender: AppenderFactory) -> None:
    # A pod that starts before its catalog must wait for it, not crash-loop; SIGTERM still stops it.
    nowhere = f"http://127.0.0.1:{free_ports(1)[0]}"
    appender = make_appender({"iceberg": {"catalog_type": "rest", "catalog_uri": nowhere}}, start=False)
    appender.start()
    wait_until(lambda: "retrying" in appender.log_text(), timeout=30, what="a retry of the catalog")
    time.sleep(3)
    appender.assert_alive()
    assert appender.log_text().count("cannot open the iceberg tables yet") >= 2, appender.log_tail()
    started = time.monotonic()
    appender.stop(timeout=15)
    assert time.monotonic() - started < 15


# ---- restarts and stops ------------------------------------------------------------------


def test_restart_appends_to_the_same_table(appender: Appender) -> None:
    first = loghub_records("Spark", 120, tag="before")
    send(appender.ports, first)
    appender.flush_grpc()
    before = load_table(appender)

    appender.restart()
    second = loghub_records("Spark", 80, tag="after")
    send(appender.ports, second)
    appender.flush_grpc()

    after = load_table(appender)
    assert after.metadata.table_uuid == before.metadata.table_uuid
    # The metadata's snapshot list has no defined order: order by sequence number.
    snapshots = sorted(after.snapshots(), key=lambda s: s.sequence_number)
    assert len(snapshots) == 2, [s.snapshot_id for s in snapshots]
    assert snapshots[1].parent_snapshot_id == before.current_snapshot().snapshot_id
    assert_table_holds(appender, first + second)


def test_sigterm_drains_staged_records(appender: Appender) -> None:
    specs = loghub_records("Linux", 250)
    send(appender.ports, specs)
    assert appender.stop() == 0
    assert_table_holds(appender, specs)
    assert snapshot_count(appender) == 1


@pytest.mark.parametrize("stop", ["sigterm", "kill9"])
def test_stop_under_load_keeps_every_acknowledged_record(make_appender: AppenderFactory, stop: str) -> None:
    """A stop while four clients export and threshold flushes run: whatever was answered 200 is
    in the table afterwards (after the exit, code 0; or after a restart and a flush), nothing is
    in it twice, and nothing appears that was never sent."""
    appender = make_appender({"flush": {"max_records": 500}})
    acknowledged: list[list[LogSpec]] = [[] for _ in range(4)]
    sent: list[LogSpec] = []

    def client(i: int) -> None:
        for b in range(200):
            batch = loghub_records("OpenStack", 50, start=50 * b, tag=f"client{i}-{b}")
            sent.extend(batch)
            try:
                response = post_logs(appender.ports, otlp_protobuf(batch), "application/x-protobuf")
            except requests.RequestException:
                return  # the listener is gone: the shutdown has begun
            if response.status_code != 200:
                return
            acknowledged[i] += batch

    with ThreadPoolExecutor(max_workers=4) as pool:
        clients = [pool.submit(client, i) for i in range(4)]
        wait_until(lambda: sum(map(len, acknowledged)) >= 2000, timeout=30, what="2,000 acknowledged records")
        if stop == "sigterm":
            assert appender.stop() == 0
        else:
            appender.kill9()
        for c in clients:
            c.result()
    if stop == "kill9":
        appender.start_and_wait()
        appender.flush_http()
    acked = [spec for batch in acknowledged for spec in batch]
    rows = read_table(appender)
    ids = Counter(str(dict(m).get(RECORD_ID)) for m in rows.column("log_attributes").to_pylist())
    assert not [rid for rid, n in ids.items() if n > 1], "records committed twice"
    assert set(ids) <= {record_id(s) for s in sent}, "rows that were never sent"
    missing = {record_id(s) for s in acked} - set(ids)
    assert not missing, f"{len(missing)} acknowledged records missing after {stop}, e.g. {sorted(missing)[:3]}"


def test_kill9_after_ack_commits_exactly_once(appender: Appender) -> None:
    specs = loghub_records("OpenStack", 300)
    send(appender.ports, specs)  # acknowledged: durable in staging from here on
    appender.kill9()
    assert snapshot_count(appender) == 0

    appender.start_and_wait()
    appender.flush_http()  # commits on start-up or here, either way exactly once
    assert_table_holds(appender, specs)

    # A second hard stop after the commit must not bring the records back a second time.
    appender.kill9()
    appender.start_and_wait()
    appender.flush_http()
    assert_table_holds(appender, specs)


def test_kill9_during_flushes_commits_exactly_once(appender: Appender) -> None:
    """Hard stops at growing delays after a flush starts, so some land mid-commit: on restart
    every acknowledged record is in the table exactly once."""
    sent: list[LogSpec] = []
    # A flush of 2,000 records takes about 0.1 s in a debug build: scan that window.
    for i, delay in enumerate((0.0, 0.03, 0.06, 0.09, 0.12, 0.2)):
        batch = loghub_records("HDFS", 2000, tag=f"crash-{i}")
        send(appender.ports, batch)
        sent += batch
        appender.flush_signal()
        time.sleep(delay)
        appender.kill9()
        appender.start_and_wait()
        appender.flush_http()
        assert_table_holds(appender, sent)
        assert appender.stats()["buffer_records"] == 0


# ---- admin plane -------------------------------------------------------------------------


def test_stats_follow_the_buffer(appender: Appender) -> None:
    idle = appender.stats()
    assert idle["mode"] == "embedded"
    assert (idle["buffer_records"], idle["buffer_size_bytes"]) == (0, 0), idle
    assert idle["last_flush"]["outcome"] == "none", idle["last_flush"]
    # The appender's own section only, and no reason not to serve while it serves.
    assert "appender" in idle and "ingester" not in idle, idle
    assert idle["serving"] is True and idle["not_serving_reasons"] == [], idle

    specs = loghub_records("Hadoop", 321)
    send(appender.ports, specs)
    staged = appender.stats()
    assert staged["buffer_records"] == 321, staged
    assert staged["buffer_size_bytes"] > sum(len(str(s.body)) for s in specs) // 2, staged
    assert staged["appender"]["records_received"] == 321, staged["appender"]
    assert staged["appender"]["records_accepted"] == 321, staged["appender"]
    assert staged["appender"]["records_rejected"] == 0, staged["appender"]

    reply = appender.flush_http()
    flushed = appender.stats()
    assert (flushed["buffer_records"], flushed["buffer_size_bytes"]) == (0, 0), flushed
    assert flushed["time_since_last_flush_seconds"] < 5, flushed
    last = flushed["last_flush"]
    assert (last["outcome"], last["trigger"], last["records"]) == ("ok", "admin", 321), last
    assert last.get("snapshot_id", reply["snapshot_id"]) == reply["snapshot_id"], last
    totals = flushed["appender"]
    assert (totals["records_committed"], totals["flushes"]) == (321, 1), totals

    over_grpc = appender.stats_grpc()
    assert over_grpc.mode == "embedded" and over_grpc.buffer_records == 0 and over_grpc.serving
    assert over_grpc.WhichOneof("service") == "appender" and list(over_grpc.not_serving_reasons) == []
    assert over_grpc.appender.records_committed == 321 and over_grpc.last_flush.trigger == "admin"


def test_metrics_count_records(appender: Appender) -> None:
    specs = loghub_records("Apache", 77)
    send(appender.ports, specs)
    appender.flush_http()
    text = appender.metrics()
    assert "# TYPE" in text
    samples = prometheus_samples(text)
    committed = {k: v for k, v in samples.items() if re.search(r"record", k) and re.search(r"commit", k)}
    accepted = {k: v for k, v in samples.items() if re.search(r"record", k) and re.search(r"accept|receiv", k)}
    assert 77 in committed.values(), f"no committed-records counter at 77: {committed or sorted(samples)[:40]}"
    assert 77 in accepted.values(), f"no accepted/received-records counter at 77: {accepted}"


def test_reflection_lists_admin_and_health_services(appender: Appender) -> None:
    for version in ("v1", "v1alpha"):
        services = appender.reflection_services(appender.ports.admin_grpc, version)
        assert {"telemetry_lake.admin.v1.Admin", "grpc.health.v1.Health"} <= services, (version, services)


def test_health_on_both_grpc_ports_and_http(appender: Appender) -> None:
    assert appender.health(appender.ports.otlp_grpc) == "SERVING"
    assert appender.health(appender.ports.admin_grpc) == "SERVING"
    assert appender.health(appender.ports.admin_grpc, "telemetry_lake.liveness") == "SERVING"
    assert appender.http("GET", "/healthz").status_code == 200
    assert appender.http("GET", "/readyz").status_code == 200
