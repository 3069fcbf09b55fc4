"""The appender on a production lake: Apache Iceberg's REST catalog server with its data on S3.

One REST catalog (Iceberg 1.11's RESTCatalogServer, JdbcCatalog, S3FileIO) and one S3 server
(moto) per module; each test has its own table. The appender runs embedded (OTLP in) with
`catalog_type = "rest"`, an `s3://` warehouse and `[iceberg.properties]`. What it commits is read
back by two readers no one here wrote, pyiceberg (RestCatalog + pyarrow S3) and DuckDB 1.5.5
(`ATTACH ... (TYPE iceberg)` + httpfs), which must agree with each other and with what was sent.
Also: day partitions prune a one-day scan, rows in each data file follow the sort order,
`iceberg.target_file_size` decides how many files a flush writes, secrets stay out of logs and
stats, and two appenders committing to one table at once keep every record exactly once.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan

from harness.catalog import (
    Load,
    ObjectStore,
    RestCatalog,
    duckdb_rest,
    exactly_once_problems,
    load_rest_table,
    read_data_file,
    rest_config,
)
from harness.lake import AppenderFactory
from harness.wait import wait_until
from otlp_client import LogSpec, Transport, loghub_records, send, table_mismatches

MAP_COLUMNS = ("resource_attributes", "scope_attributes", "log_attributes")


def canonical(table: pa.Table) -> list[tuple[Any, ...]]:
    """Rows comparable across readers: timestamps as epoch microseconds, maps as sorted pairs,
    columns by name in a fixed order, rows sorted."""
    columns = sorted(table.column_names)
    values = []
    for name in columns:
        column = table.column(name)
        if pa.types.is_timestamp(column.type):
            column = pc.cast(column, pa.timestamp("us")).cast(pa.int64())
        items = column.to_pylist()
        if name in MAP_COLUMNS:
            items = [None if m is None else tuple(sorted((k, v) for k, v in m)) for m in items]
        values.append(items)
    return sorted(zip(*values, strict=True), key=repr)


def send_in_batches(appender: Any, specs: list[LogSpec], size: int = 500) -> None:
    for i in range(0, len(specs), size):
        send(appender.ports, specs[i : i + size], Transport.GRPC)


def day_bounds(day: str) -> tuple[str, str]:
    start = datetime.fromisoformat(day).replace(tzinfo=UTC)
    end = datetime.fromtimestamp(start.timestamp() + 86_400, UTC)
    return start.isoformat(), end.isoformat()


def test_both_readers_see_what_the_appender_committed_on_rest_and_s3(
    lake_appender: AppenderFactory, catalog: RestCatalog, store: ObjectStore
) -> None:
    # Debug logging, so that a secret logged anywhere (a config dump, a request) would show.
    appender = lake_appender({**rest_config(catalog, "readers"), "log": {"level": "debug"}})
    # 2,000 HDFS lines cross midnight (2026-11-27 -> 28), plus a second service.
    specs = loghub_records("HDFS", 2000) + loghub_records("Apache", 300, tag="apache")
    send_in_batches(appender, specs)
    flushed = appender.flush_http()
    assert flushed["records"] == len(specs) and flushed["data_files"] >= 2, flushed

    table = load_rest_table(catalog, "readers")
    assert table.metadata.location.startswith(f"{catalog.warehouse}/"), table.metadata.location
    assert table.metadata_location.startswith("s3://"), table.metadata_location
    read = table.scan().to_arrow()
    problems = table_mismatches(read, specs)
    assert not problems, "pyiceberg read differs from what was sent:\n  " + "\n  ".join(problems)

    duck = duckdb_rest(catalog)
    duck_rows = duck.execute('SELECT * FROM lake."default".readers').to_arrow_table()
    assert duck_rows.num_rows == len(specs)
    assert canonical(duck_rows) == canonical(read), "DuckDB and pyiceberg read different rows"
    counts = duck.execute('SELECT service_name, count(*) FROM lake."default".readers GROUP BY 1 ORDER BY 1').fetchall()
    assert counts == [("Apache", 300), ("HDFS", 2000)], counts

    # Partitioned by day(timestamp): a one-day filter plans only that day's files.
    spec = table.spec()
    assert [(f.name, str(f.transform)) for f in spec.fields] == [("timestamp_day", "day")], spec
    all_files = list(table.scan().plan_files())
    start, end = day_bounds("2026-11-28")
    day_scan = table.scan(row_filter=And(GreaterThanOrEqual("timestamp", start), LessThan("timestamp", end)))
    planned = list(day_scan.plan_files())
    assert planned and len(planned) < len(all_files), (len(planned), len(all_files))
    assert all("timestamp_day=2026-11-28" in task.file.file_path for task in planned), [
        task.file.file_path for task in planned
    ]
    in_day = [t for t in all_files if "timestamp_day=2026-11-28" in t.file.file_path]
    assert len(planned) == len(in_day), "the scan skipped files of the day it asked for"
    day_rows = day_scan.to_arrow()
    expected_day = [s for s in specs if s.time_ns >= int(datetime.fromisoformat(start).timestamp()) * 10**9]
    assert sorted(day_rows.column("body").to_pylist()) == sorted(str(s.body) for s in expected_day)

    # Secrets stay out of the log, the stats and the metrics.
    for secret in (store.secret_access_key, store.access_key_id):
        assert secret not in appender.log_text(), "an S3 key is in the appender's debug log"
        assert secret not in appender.http("GET", "/stats").text
        assert secret not in appender.metrics()


def shuffled_specs(n: int, tag: str, seed: int) -> list[LogSpec]:
    """`n` records in random order: five services, times all over one day, bodies that do not
    compress away (so files reach a size), each with a `record.id`."""
    rng = random.Random(seed)
    base = int(datetime(2026, 11, 27, tzinfo=UTC).timestamp()) * 10**9
    specs = []
    for i in range(n):
        t = base + rng.randrange(86_400 * 10**9)
        specs.append(
            LogSpec(
                body=f"{tag} {i} {rng.getrandbits(256):064x} {rng.getrandbits(128):032x}",
                service=rng.choice(["checkout", "cart", "auth", "search", "ads"]),
                time_ns=t,
                observed_ns=t + 1_000,
                attributes={"record.id": f"{tag}:{i}"},
            )
        )
    return specs


def data_files(table: Any) -> list[tuple[str, int, int]]:
    """(path, size in bytes, record count) of every data file of the current snapshot."""
    return [(t.file.file_path, t.file.file_size_in_bytes, t.file.record_count) for t in table.scan().plan_files()]


def test_files_are_sorted_and_target_file_size_decides_their_number(
    lake_appender: AppenderFactory, catalog: RestCatalog
) -> None:
    target = 256 * 1024
    specs = shuffled_specs(24_000, "sized", seed=7)
    # The same records into two tables: the default target (128 MiB) and a small one.
    big = lake_appender(rest_config(catalog, "default_target"))
    small = lake_appender(rest_config(catalog, "small_target", target_file_size="256KiB"))
    for appender in (big, small):
        send_in_batches(appender, specs, size=1000)
        flushed = appender.flush_http()
        assert flushed["records"] == len(specs), flushed

    # One day of rows, many exports and staging batches: one flush writes ONE file.
    big_table = load_rest_table(catalog, "default_target")
    (only,) = data_files(big_table)
    assert only[2] == len(specs), only
    assert big_table.properties.get("write.target-file-size-bytes") == str(128 * 1024 * 1024), big_table.properties

    small_table = load_rest_table(catalog, "small_target")
    assert small_table.properties.get("write.target-file-size-bytes") == str(target), small_table.properties
    files = sorted(data_files(small_table), key=lambda f: f[1])
    total = sum(size for _, size, _ in files)
    assert sum(count for _, _, count in files) == len(specs)
    # Files roll over at the target: as many as the bytes need, each but the last near it.
    assert len(files) >= 2, files
    assert len(files) <= total // (target // 2) + 1, f"{len(files)} files for {total} bytes: {files}"
    assert all(size >= target // 2 for _, size, _ in files[1:]), f"small files besides the last: {files}"
    assert all(size <= 3 * target for _, size, _ in files), f"files far over the target: {files}"

    # Within every data file rows follow the table's sort order: service_name, timestamp.
    for table in (big_table, small_table):
        order = [(table.schema().find_field(f.source_id).name, str(f.direction)) for f in table.sort_order().fields]
        assert [name for name, _ in order] == ["service_name", "timestamp"], order
        for path, _, count in data_files(table):
            rows = read_data_file(table, path)
            assert rows.num_rows == count
            keys = list(zip(rows.column("service_name").to_pylist(), rows.column("timestamp").to_pylist(), strict=True))
            assert keys == sorted(keys), f"{path}: rows are not ordered by service_name, timestamp"


def writer_ids(table: Any) -> Counter[str]:
    """Snapshots per staging file that committed them (the committer's writer-id property)."""
    return Counter(
        (snapshot.summary.additional_properties if snapshot.summary else {}).get("telemetry-lake.writer-id", "?")
        for snapshot in table.snapshots()
    )


@pytest.mark.timeout(300)
def test_two_appenders_on_one_rest_table_keep_every_record_exactly_once(
    lake_appender: AppenderFactory, catalog: RestCatalog
) -> None:
    # Frequent small commits from both sides, so they race for the same table state.
    config = rest_config(catalog, "two_writers")
    config["flush"] = {"interval": "1s", "max_records": 2_000, "max_bytes": "64MiB"}
    first = lake_appender(config)
    second = lake_appender(config)
    conflicts_before = catalog.log_text().count("type=CommitFailedException")

    def both_committed_three_times() -> bool:
        writers = writer_ids(load_rest_table(catalog, "two_writers"))
        return len(writers) == 2 and min(writers.values()) >= 3

    with Load(first, "first", senders=2) as load_first, Load(second, "second", senders=2) as load_second:
        started = time.monotonic()
        # Until both took 20,000 records, each committed at least three times, and the catalog
        # refused at least one commit because the other writer had moved the table (HTTP 409):
        # the race this test is about. (A writer losing races retries for seconds, so a fixed
        # amount of load alone does not make both commit several times.)
        wait_until(
            lambda: (
                load_first.acknowledged >= 20_000
                and load_second.acknowledged >= 20_000
                and catalog.log_text().count("type=CommitFailedException") > conflicts_before
                and both_committed_three_times()
            ),
            timeout=150,
            what="20,000 acknowledged records and three commits on each appender, and one commit conflict",
            interval=0.5,
        )
        loaded = time.monotonic() - started
    conflicts = catalog.log_text().count("type=CommitFailedException") - conflicts_before
    result = load_first.stop()
    other = load_second.stop()
    result.acknowledged += other.acknowledged
    result.uncertain += other.uncertain
    for appender in (first, second):
        appender.flush_http()
        wait_until(lambda a=appender: a.stats()["buffer_records"] == 0, timeout=60, what="staging to drain")
        appender.assert_alive()

    table = load_rest_table(catalog, "two_writers")
    problems = exactly_once_problems(table.scan(selected_fields=("body",)).to_arrow(), result)
    assert not problems, "two writers lost or doubled records:\n  " + "\n  ".join(problems)
    writers = writer_ids(table)
    assert len(writers) == 2 and min(writers.values()) >= 3, f"snapshots per writer: {writers}"
    print(
        f"two writers: {len(result.acknowledged)} records in {loaded:.1f} s, {conflicts} commit conflicts, "
        f"snapshots per writer {sorted(writers.values())}"
    )


def test_query_subcommand_answers_on_rest_and_s3(
    lake_appender: AppenderFactory, catalog: RestCatalog, store: ObjectStore
) -> None:
    """`appender query` with the service's own config file reads the REST/S3 table like the
    readers do (same counts per day and service, same bodies), and prints no secret."""
    appender = lake_appender(rest_config(catalog, "queried"))
    specs = loghub_records("HDFS", 2000, tag="q") + loghub_records("Apache", 300, tag="q-apache")
    send_in_batches(appender, specs)
    appender.flush_http()
    appender.stop()

    def query(sql: str) -> list[dict[str, Any]]:
        result = subprocess.run(
            [str(appender.binary), "query", "--config", str(appender.config_path), "--format", "json", sql],
            cwd=appender.workdir,
            env=appender.child_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-3000:]}"
        assert store.secret_access_key not in result.stdout + result.stderr, "query printed the S3 secret"
        rows: list[dict[str, Any]] = json.loads(result.stdout)
        return rows

    grouped = query(
        "SELECT CAST(timestamp AS DATE)::VARCHAR AS day, service_name, count(*) AS n "
        "FROM logs GROUP BY ALL ORDER BY day, service_name"
    )
    table = load_rest_table(catalog, "queried").scan().to_arrow()
    expected = Counter(
        (ts.date().isoformat(), service)
        for ts, service in zip(
            table.column("timestamp").to_pylist(), table.column("service_name").to_pylist(), strict=True
        )
    )
    assert {(r["day"], r["service_name"]): r["n"] for r in grouped} == dict(expected), grouped
    assert sum(r["n"] for r in grouped) == len(specs)
    errors = query("SELECT body FROM logs WHERE severity_text = 'WARN' ORDER BY body")
    want = sorted(str(s.body) for s in specs if s.severity_text == "WARN")
    assert [r["body"] for r in errors] == want and want, (len(errors), len(want))
