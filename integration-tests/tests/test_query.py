"""`appender query`: SQL over the lake with the binary's own DuckDB, checked against known records.

Each test sends records whose every column is known (through the real OTLP exporters), flushes,
then runs `appender query` as a user would: the same binary, the same config file the harness
wrote, from the appender's working directory. Results are compared exactly in every format
(table, CSV, JSON, JSON lines), including NULLs, maps and timestamps; bad SQL and a missing lake
must fail with the documented exit code and a message that says what to do. Most tests use the
embedded default (SQLite catalog, local files); the last one a REST catalog with its data on S3
(Apache Iceberg's REST catalog server and moto, from `catalog_harness`).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from harness.catalog import RestCatalog, load_rest_table, rest_config
from harness.config import ENV_PREFIX
from harness.lake import Appender, AppenderFactory, load_table
from otlp_client import LogSpec, Transport, send


def ns(iso: str) -> int:
    """Nanoseconds since the epoch of an ISO 8601 UTC time."""
    instant = datetime.fromisoformat(iso).replace(tzinfo=UTC)
    return int(instant.timestamp()) * 10**9 + instant.microsecond * 1000


# Two days, three services, three severities; trace ids only on some records (NULL elsewhere).
RECORDS = (
    LogSpec(
        body="order placed",
        service="checkout",
        time_ns=ns("2026-11-27T10:00:00"),
        observed_ns=ns("2026-11-27T10:00:00.250"),
        attributes={"k": "v1", "http.method": "GET"},
        trace_id="5b8efff798038103d269b633813fc60c",
        span_id="eee19b7ec3c1b174",
        trace_flags=1,
    ),
    LogSpec(
        body="payment failed",
        service="checkout",
        time_ns=ns("2026-11-27T10:00:01.500"),
        observed_ns=ns("2026-11-27T10:00:01.500"),
        severity_number=17,
        severity_text="ERROR",
        attributes={"k": "v2", "retry": 3},
    ),
    LogSpec(
        body="cart is slow",
        service="cart",
        time_ns=ns("2026-11-28T00:00:00"),
        observed_ns=ns("2026-11-28T00:00:00.000001"),
        severity_number=13,
        severity_text="WARN",
    ),
    LogSpec(
        body="cart emptied",
        service="cart",
        time_ns=ns("2026-11-28T08:30:00"),
        observed_ns=ns("2026-11-28T08:30:00"),
        attributes={"k": "v1"},
    ),
)

GROUP_BY = "SELECT severity_text, count(*) AS n FROM logs GROUP BY 1 ORDER BY 1"


def query(
    appender: Appender,
    sql: str,
    *args: str,
    config: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`appender [--config FILE] query [args] SQL` from the appender's directory; never raises."""
    command = [str(appender.binary)]
    if config:
        command += ["--config", str(appender.config_path)]
    command += ["query", *args, sql]
    return subprocess.run(
        command,
        cwd=cwd or appender.workdir,
        env=dict(env) if env is not None else appender.child_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def committed(make_appender: AppenderFactory, records: Sequence[LogSpec] = RECORDS) -> Appender:
    """A running appender whose table holds exactly `records`, in one snapshot."""
    appender = make_appender()
    send(appender.ports, records, Transport.GRPC)
    assert appender.flush_http()["records"] == len(records)
    return appender


def test_group_by_in_every_format(make_appender: AppenderFactory) -> None:
    appender = committed(make_appender)
    appender.stop()

    assert ok(query(appender, GROUP_BY)) == (
        "+---------------+---+\n"
        "| severity_text | n |\n"
        "+---------------+---+\n"
        "| ERROR         | 1 |\n"
        "| INFO          | 2 |\n"
        "| WARN          | 1 |\n"
        "+---------------+---+\n"
        "(3 rows)\n"
    )
    assert ok(query(appender, GROUP_BY, "--format", "csv")) == "severity_text,n\nERROR,1\nINFO,2\nWARN,1\n"
    expected = [
        {"severity_text": "ERROR", "n": 1},
        {"severity_text": "INFO", "n": 2},
        {"severity_text": "WARN", "n": 1},
    ]
    assert json.loads(ok(query(appender, GROUP_BY, "--format", "json"))) == expected
    lines = ok(query(appender, GROUP_BY, "--format", "jsonl")).splitlines()
    assert [json.loads(line) for line in lines] == expected


def test_map_column_filter_and_nested_values(make_appender: AppenderFactory) -> None:
    appender = committed(make_appender)
    sql = "SELECT body FROM logs WHERE log_attributes['k'] = 'v1' ORDER BY timestamp"
    assert ok(query(appender, sql, "--format", "csv")) == "body\norder placed\ncart emptied\n"

    # Non-string attribute values are JSON in the map, and the map is a JSON object in JSON output.
    sql = "SELECT log_attributes, typeof(log_attributes) AS t FROM logs WHERE body = 'payment failed'"
    (row,) = json.loads(ok(query(appender, sql, "--format", "json")))
    assert row == {"log_attributes": {"k": "v2", "retry": "3"}, "t": "MAP(VARCHAR, VARCHAR)"}
    sql = "SELECT count(*) AS n FROM logs WHERE resource_attributes['service.name'] = service_name"
    assert ok(query(appender, sql, "--format", "csv")) == "n\n4\n"


def test_timestamps_are_timestamptz_printed_in_utc(make_appender: AppenderFactory) -> None:
    appender = committed(make_appender)
    sql = (
        "SELECT timestamp, observed_timestamp, typeof(timestamp) AS t, CAST(timestamp AS DATE) AS day "
        "FROM logs ORDER BY timestamp"
    )
    assert ok(query(appender, sql, "--format", "csv")) == (
        "timestamp,observed_timestamp,t,day\n"
        "2026-11-27T10:00:00Z,2026-11-27T10:00:00.250Z,TIMESTAMP WITH TIME ZONE,2026-11-27\n"
        "2026-11-27T10:00:01.500Z,2026-11-27T10:00:01.500Z,TIMESTAMP WITH TIME ZONE,2026-11-27\n"
        "2026-11-28T00:00:00Z,2026-11-28T00:00:00.000001Z,TIMESTAMP WITH TIME ZONE,2026-11-28\n"
        "2026-11-28T08:30:00Z,2026-11-28T08:30:00Z,TIMESTAMP WITH TIME ZONE,2026-11-28\n"
    )
    # Time arithmetic works on the column: one record per day falls in the first 12 hours.
    sql = (
        "SELECT count(*) AS n FROM logs "
        "WHERE timestamp >= TIMESTAMPTZ '2026-11-28 00:00:00+00' AND timestamp < TIMESTAMPTZ '2026-11-28 12:00:00+00'"
    )
    assert ok(query(appender, sql, "--format", "csv")) == "n\n2\n"


def test_nulls_are_distinct_in_every_format(make_appender: AppenderFactory) -> None:
    appender = committed(make_appender)
    sql = (
        "SELECT body, trace_id, span_id, kafka_offset, '' AS empty FROM logs "
        "WHERE service_name = 'checkout' ORDER BY timestamp"
    )
    assert ok(query(appender, sql)) == (
        "+----------------+----------------------------------+------------------+--------------+-------+\n"
        "| body           | trace_id                         | span_id          | kafka_offset | empty |\n"
        "+----------------+----------------------------------+------------------+--------------+-------+\n"
        "| order placed   | 5b8efff798038103d269b633813fc60c | eee19b7ec3c1b174 | NULL         |       |\n"
        "| payment failed | NULL                             | NULL             | NULL         |       |\n"
        "+----------------+----------------------------------+------------------+--------------+-------+\n"
        "(2 rows)\n"
    )
    # CSV: NULL is an empty field, an empty string is "".
    assert ok(query(appender, sql, "--format", "csv")) == (
        "body,trace_id,span_id,kafka_offset,empty\n"
        'order placed,5b8efff798038103d269b633813fc60c,eee19b7ec3c1b174,,""\n'
        'payment failed,,,,""\n'
    )
    assert json.loads(ok(query(appender, sql, "--format", "json"))) == [
        {
            "body": "order placed",
            "trace_id": "5b8efff798038103d269b633813fc60c",
            "span_id": "eee19b7ec3c1b174",
            "kafka_offset": None,
            "empty": "",
        },
        {"body": "payment failed", "trace_id": None, "span_id": None, "kafka_offset": None, "empty": ""},
    ]


def test_csv_quotes_what_needs_quoting(make_appender: AppenderFactory) -> None:
    tricky = LogSpec(
        body='a "quoted", multi\nline body',
        service="svc",
        time_ns=ns("2026-11-27T12:00:00"),
        observed_ns=ns("2026-11-27T12:00:00"),
    )
    appender = committed(make_appender, [tricky])
    out = ok(query(appender, "SELECT body, ' padded ' AS p FROM logs", "--format", "csv"))
    assert out == 'body,p\n"a ""quoted"", multi\nline body"," padded "\n'


def test_every_row_and_column_matches_what_was_sent(make_appender: AppenderFactory) -> None:
    """`SELECT *` returns the 21 documented columns, and each record's values."""
    appender = committed(make_appender)
    rows = json.loads(ok(query(appender, "SELECT * FROM logs ORDER BY timestamp", "--format", "json")))
    assert len(rows) == len(RECORDS)
    assert list(rows[0]) == [f.name for f in load_table(appender).schema().fields]
    for row, spec in zip(rows, RECORDS, strict=True):
        assert row["body"] == spec.body
        assert row["service_name"] == spec.service
        assert (row["severity_number"], row["severity_text"]) == (spec.severity_number, spec.severity_text)
        assert row["log_attributes"] == {k: str(v) for k, v in spec.attributes.items()}
        assert row["trace_id"] == (spec.trace_id or None)
        assert row["trace_flags"] == spec.trace_flags
        assert row["scope_name"] == spec.scope_name
        assert (row["kafka_partition"], row["kafka_offset"]) == (None, None)


def test_empty_table(make_appender: AppenderFactory) -> None:
    """Created at start, nothing committed: no snapshot, so every query sees zero rows."""
    appender = make_appender()
    assert ok(query(appender, "SELECT count(*) AS n FROM logs", "--format", "csv")) == "n\n0\n"
    assert ok(query(appender, "SELECT severity_text, body FROM logs")) == (
        "+---------------+------+\n"
        "| severity_text | body |\n"
        "+---------------+------+\n"
        "+---------------+------+\n"
        "(0 rows)\n"
    )
    assert ok(query(appender, "SELECT * FROM logs", "--format", "json")) == "[]\n"
    assert ok(query(appender, "SELECT * FROM logs", "--format", "jsonl")) == ""
    assert ok(query(appender, "SELECT body FROM logs", "--format", "csv")) == "body\n"


def test_bad_sql_exits_2_naming_the_error_and_the_table(make_appender: AppenderFactory) -> None:
    appender = committed(make_appender)
    cases = {
        "SELEC 1": "Parser Error",
        "SELECT * FROM log": "Catalog Error",
        "SELECT no_such_column FROM logs": "Binder Error",
        "SELECT CAST(body AS INTEGER) FROM logs": "Conversion Error",  # fails only on the data
    }
    for sql, error in cases.items():
        result = query(appender, sql)
        assert result.returncode == 2, f"{sql}: exit {result.returncode}\n{result.stderr}"
        assert result.stdout == "", f"{sql}: printed {result.stdout!r}"
        assert error in result.stderr, f"{sql}: {result.stderr}"
        assert "query the table as `logs` (iceberg table default.logs)" in result.stderr, result.stderr


def test_no_lake_or_no_table_exits_1(make_appender: AppenderFactory, tmp_path: Path) -> None:
    appender = make_appender()
    empty = tmp_path / "no-lake-here"
    empty.mkdir()
    result = query(appender, "SELECT 1", config=False, env=clean_env(appender), cwd=empty)
    assert result.returncode == 1, result.stderr
    assert "/no-lake-here/data/catalog.db does not exist" in result.stderr, result.stderr
    assert list(empty.iterdir()) == [], "a query creates nothing"

    env = {**appender.child_env(), f"{ENV_PREFIX}ICEBERG__TABLE": "other"}
    result = query(appender, "SELECT 1", env=env)
    assert result.returncode == 1, result.stderr
    assert "table default.other does not exist" in result.stderr, result.stderr


def test_unreadable_data_file_exits_1_and_prints_nothing(make_appender: AppenderFactory) -> None:
    appender = committed(make_appender)
    appender.stop()
    (victim, *_) = sorted(appender.warehouse_dir.rglob("*.parquet"))
    victim.unlink()
    result = query(appender, GROUP_BY)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert "reading table default.logs failed" in result.stderr and victim.name in result.stderr, result.stderr


def test_no_config_reads_the_lake_under_data(make_appender: AppenderFactory) -> None:
    """The harness keeps the default paths, so `./data` in the appender's directory is the lake."""
    appender = committed(make_appender)
    result = query(appender, GROUP_BY, "--format", "csv", config=False, env=clean_env(appender))
    assert ok(result) == "severity_text,n\nERROR,1\nINFO,2\nWARN,1\n"


def test_config_from_environment_and_sql_from_stdin(make_appender: AppenderFactory) -> None:
    appender = make_appender({"iceberg": {"table": "events", "warehouse": "lake/wh"}}, config_in_env=True)
    send(appender.ports, RECORDS, Transport.HTTP_PROTOBUF)
    appender.flush_grpc()
    # The DuckDB table takes the configured name; `logs` stays available as a view.
    sql = "SELECT (SELECT count(*) FROM events) AS events, (SELECT count(*) FROM logs) AS logs"
    assert ok(query(appender, "-", "--format", "csv", config=False, stdin=sql)) == "events,logs\n4,4\n"


def test_snapshot_option_reads_an_older_snapshot(make_appender: AppenderFactory) -> None:
    appender = committed(make_appender, RECORDS[:1])
    send(appender.ports, RECORDS[1:], Transport.GRPC)
    appender.flush_http()
    snapshots = sorted(load_table(appender).snapshots(), key=lambda s: s.sequence_number)
    first, second = (s.snapshot_id for s in snapshots)
    count = "SELECT count(*) AS n FROM logs"
    assert ok(query(appender, count, "--format", "csv")) == "n\n4\n"
    assert ok(query(appender, count, "--format", "csv", "--snapshot", str(first))) == "n\n1\n"
    assert ok(query(appender, count, "--format", "csv", "--snapshot", str(second))) == "n\n4\n"
    result = query(appender, count, "--snapshot", "12345")
    assert result.returncode == 1
    assert f"has no snapshot 12345 (it has, oldest first: {first}, {second})" in result.stderr, result.stderr


def clean_env(appender: Appender) -> dict[str, str]:
    """The binary's environment with no `TELEMETRY_LAKE_*` setting at all: defaults only."""
    return {k: v for k, v in appender.child_env().items() if not k.startswith(ENV_PREFIX)} | {
        "PATH": os.environ.get("PATH", "")
    }


# ---- REST catalog on S3 -----------------------------------------------------------------------


def test_rest_catalog_on_s3(catalog: RestCatalog, lake_appender: AppenderFactory) -> None:
    """The same subcommand over a REST catalog with an `s3://` warehouse: the catalog and FileIO
    are the service's own, credentials come from `[iceberg.properties]` and never show."""
    appender = lake_appender(rest_config(catalog, "query_rest"))
    send(appender.ports, RECORDS, Transport.GRPC)
    appender.flush_http()
    appender.stop()
    assert load_rest_table(catalog, "query_rest").metadata.location.startswith("s3://")

    assert ok(query(appender, GROUP_BY, "--format", "csv")) == "severity_text,n\nERROR,1\nINFO,2\nWARN,1\n"
    sql = "SELECT body, timestamp FROM query_rest WHERE log_attributes['k'] = 'v1' ORDER BY timestamp"
    assert ok(query(appender, sql, "--format", "csv")) == (
        "body,timestamp\norder placed,2026-11-27T10:00:00Z\ncart emptied,2026-11-28T08:30:00Z\n"
    )

    bad = query(appender, "SELECT nope FROM logs")
    assert bad.returncode == 2 and "iceberg table default.query_rest" in bad.stderr, bad.stderr
    env = {**appender.child_env(), f"{ENV_PREFIX}ICEBERG__TABLE": "not_there"}
    missing = query(appender, "SELECT 1", env=env)
    assert missing.returncode == 1 and "table default.not_there does not exist" in missing.stderr, missing.stderr
    for result in (bad, missing):
        assert catalog.store.secret_access_key not in result.stderr + result.stdout
