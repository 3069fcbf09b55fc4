"""Outages of the production lake under load: the catalog, then the object store, go away.

Embedded appender, REST catalog on S3 (see catalog_harness.py), OTLP/HTTP senders that retry
refusals as an exporter does. The catalog is stopped for 30 s (a real stop of its JVM; its
tables live in a SQLite file and survive), then the object store is unreachable for 30 s
(its gate refuses connections; moto keeps its objects). Throughout: exports keep being
acknowledged into staging, health turns NOT_SERVING while commits fail and SERVING once they
work again, commits resume on their own, and at the end every acknowledged record is in the
table exactly once. With a small `staging.max_bytes`, a store outage ends in OTLP's retryable
refusals (429/503 + Retry-After, RESOURCE_EXHAUSTED/UNAVAILABLE + RetryInfo) and no loss.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.catalog import (
    HealthLog,
    Load,
    ObjectStore,
    RestCatalog,
    exactly_once_problems,
    load_rest_table,
    rest_config,
)
from harness.kafka import Broker, Ingester
from harness.lake import APPENDERS, AppenderFactory
from harness.outages import FAST_FAILURE, committed_snapshots, outage
from harness.wait import wait_until
from otlp_client import loghub_records, table_mismatches
from test_backpressure import assert_retryable_grpc, assert_retryable_http, fill_until_refused


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


@pytest.mark.timeout(420)
def test_catalog_then_object_store_outage_under_load_loses_and_doubles_nothing(
    lake_appender: AppenderFactory, catalog: RestCatalog, store: ObjectStore
) -> None:
    config = rest_config(catalog, "outages", FAST_FAILURE)
    config["flush"] = {"interval": "1s", "max_records": 20_000, "max_bytes": "64MiB"}
    appender = lake_appender(config)
    notes = []
    with HealthLog(appender) as health, Load(appender, "outage", senders=2, pause=0.2) as load:
        wait_until(lambda: committed_snapshots(appender) >= 2, timeout=60, what="two commits before the outages")
        notes.append(outage("catalog", appender, load, health, catalog.stop, lambda: catalog.start_and_wait()))
        notes.append(outage("object store", appender, load, health, store.down, store.up))
    result = load.stop()
    appender.flush_http()
    wait_until(lambda: appender.stats()["buffer_records"] == 0, timeout=60, what="staging to drain")
    assert appender.health(appender.ports.otlp_grpc) == "SERVING"
    stats = appender.stats()
    assert stats["appender"]["flush_failures"] >= 2, stats["appender"]

    table = load_rest_table(catalog, "outages").scan(selected_fields=("body",)).to_arrow()
    problems = exactly_once_problems(table, result)
    assert not problems, "after the outages the table differs from what was acknowledged:\n  " + "\n  ".join(problems)
    assert result.retry_after_missing == 0, "a refusal came without Retry-After"
    print(
        f"outages: {len(result.acknowledged)} records acknowledged, {len(result.uncertain)} uncertain, "
        f"refusals {dict(result.refusals)}; " + "; ".join(notes)
    )


@pytest.mark.timeout(240)
def test_object_store_down_fills_staging_then_exports_get_retryable_refusals(
    lake_appender: AppenderFactory, catalog: RestCatalog, store: ObjectStore
) -> None:
    # The catalog answers a load only after retrying the store for minutes: 10 s of silence
    # makes it a failed flush.
    config = rest_config(catalog, "full_staging", {"rest.client.socket-timeout-ms": "10000"})
    config["flush"] = {"max_bytes": "100KiB"}
    config["staging"] = {"max_bytes": "300KiB"}
    appender = lake_appender(config)
    store.down()

    acknowledged, refusal = fill_until_refused(appender)
    assert_retryable_http(refusal)
    assert_retryable_grpc(appender, loghub_records("HDFS", 100, tag="refused-grpc"))
    appender.assert_alive()
    # Not ready as soon as staging refuses exports.
    wait_until(lambda: appender.health(appender.ports.otlp_grpc) == "NOT_SERVING", timeout=10, what="NOT_SERVING")
    assert appender.http("GET", "/readyz").status_code == 503, "ready while refusing every export"
    # The first flush fails only once the S3 client has retried (several seconds).
    wait_until(lambda: appender.stats()["last_flush"]["outcome"] == "failed", timeout=60, what="a failed flush")
    last = appender.stats()["last_flush"]
    assert store.secret_access_key not in last["error"], "the S3 secret is in the flush error"

    store.up()
    wait_until(lambda: appender.stats()["buffer_records"] == 0, timeout=90, what="staging to drain on its own")
    wait_until(lambda: appender.health(appender.ports.otlp_grpc) == "SERVING", timeout=30, what="SERVING again")
    problems = table_mismatches(load_rest_table(catalog, "full_staging").scan().to_arrow(), acknowledged)
    assert not problems, "after the store came back the table differs:\n  " + "\n  ".join(problems)


class NoBackoff(AssertionError):
    """Failed flushes were retried without backing off."""


@pytest.mark.timeout(180)
def test_failing_commits_back_off_while_thresholds_keep_firing(
    lake_appender: AppenderFactory, catalog: RestCatalog
) -> None:
    config = rest_config(catalog, "backoff")
    config["flush"] = {"interval": "5s", "max_records": 2_000, "max_bytes": "64MiB"}
    appender = lake_appender(config)
    with Load(appender, "backoff", senders=2):
        wait_until(lambda: committed_snapshots(appender) >= 1, timeout=60, what="a first commit")
        catalog.stop()
        failures_before = appender.stats()["appender"]["flush_failures"]
        time.sleep(15)
        failures = appender.stats()["appender"]["flush_failures"] - failures_before
    catalog.start_and_wait()
    # Backoff doubles from 2 s up to flush.interval (5 s): about five attempts in 15 s.
    if failures > 10:
        raise NoBackoff(f"{failures} failed flush attempts in 15 s with the catalog down")


@pytest.fixture
def gated_catalog(tmp_path: Path, store: ObjectStore) -> Iterator[RestCatalog]:
    rest = RestCatalog(tmp_path / "rest-gated", store, gated=True).start_and_wait()
    yield rest
    rest.close()


@pytest.mark.timeout(300)
def test_commits_whose_replies_are_lost_land_exactly_once(
    lake_appender: AppenderFactory, gated_catalog: RestCatalog
) -> None:
    """The catalog commits, its reply never arrives (the connection drops): an unknown outcome.
    The appender must find its own commit in the table's history instead of committing again."""
    gate = gated_catalog.gate
    assert gate is not None
    config = rest_config(gated_catalog, "lost_replies", {"rest.client.socket-timeout-ms": "5000"})
    config["flush"] = {"interval": "1s", "max_records": 5_000, "max_bytes": "64MiB"}
    appender = lake_appender(config)
    with Load(appender, "lost", senders=2) as load:
        wait_until(lambda: committed_snapshots(appender) >= 1, timeout=60, what="a first commit")
        gate.lose_commit_replies()
        wait_until(lambda: gate.lost_replies >= 3, timeout=90, what="three commits whose replies were lost")
        gate.up()
        snapshots_after = committed_snapshots(appender)
        wait_until(
            lambda: committed_snapshots(appender) > snapshots_after + 1, timeout=60, what="commits after the repair"
        )
    result = load.stop()
    appender.flush_http()
    wait_until(lambda: appender.stats()["buffer_records"] == 0, timeout=60, what="staging to drain")

    table = load_rest_table(gated_catalog, "lost_replies")
    problems = exactly_once_problems(table.scan(selected_fields=("body",)).to_arrow(), result)
    assert not problems, "commits with lost replies lost or doubled records:\n  " + "\n  ".join(problems)
    print(f"lost replies: {gate.lost_replies}, records {len(result.acknowledged)}, snapshots {len(table.snapshots())}")


@pytest.mark.timeout(420)
def test_kafka_mode_outages_pause_consumption_and_keep_every_record_once(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    broker: Broker,
    lake_appender: AppenderFactory,
    catalog: RestCatalog,
    store: ObjectStore,
) -> None:
    """OTLP -> ingester -> Kafka -> appender -> REST/S3 while the catalog, then the store, are
    down for 30 s each: the ingester keeps acknowledging (Kafka is up), the appender stops
    consuming once staging is full instead of growing it, and once the lake is back every
    acknowledged record lands exactly once."""
    topic = "outages"
    ingester = Ingester(tmp_path / "ingester", broker, topic)
    request.node.stash.setdefault(APPENDERS, []).append(ingester)
    ingester.start_and_wait(timeout=60)
    staging_limit = 4 * 1024 * 1024
    config = rest_config(catalog, "kafka_outages", FAST_FAILURE)
    config["kafka"] = {"brokers": broker.bootstrap, "topic": topic, "group_id": f"{topic}-appenders"}
    config["flush"] = {"interval": "1s", "max_records": 20_000, "max_bytes": "2MiB"}
    config["staging"] = {"max_bytes": "4MiB"}
    appender = lake_appender(config)
    notes = []
    staged_peak = 0
    lag_peak = 0

    def watch() -> None:
        nonlocal staged_peak, lag_peak
        stats = appender.stats()
        staged_peak = max(staged_peak, int(stats["buffer_size_bytes"]))
        lag_peak = max(lag_peak, sum(int(p.get("lag", 0)) for p in stats["appender"]["partitions"]))

    try:
        with HealthLog(appender) as health, Load(ingester, "kafka-outage", senders=2, pause=0.2) as load:
            wait_until(lambda: committed_snapshots(appender) >= 2, timeout=60, what="two commits before the outages")
            for name, down, back in (
                ("catalog", catalog.stop, lambda: catalog.start_and_wait()),
                ("object store", store.down, store.up),
            ):
                sampler = Repeat(watch, 1.0)
                with sampler:
                    notes.append(outage(name, appender, load, health, down, back))
        result = load.stop()
        wanted = set(result.acknowledged)

        def landed() -> bool:
            appender.flush_http()
            table = load_rest_table(catalog, "kafka_outages").scan(selected_fields=("body",)).to_arrow()
            return wanted <= set(table.column("body").to_pylist())

        wait_until(landed, timeout=180, what="every acknowledged record in the table", interval=2.0)
        table = load_rest_table(catalog, "kafka_outages").scan(selected_fields=("body",)).to_arrow()
        problems = exactly_once_problems(table, result)
        assert not problems, "Kafka-mode outages lost or doubled records:\n  " + "\n  ".join(problems)
        # Staging stayed bounded: consumption paused while it was full (lag grew instead).
        assert staged_peak <= staging_limit * 1.5, f"staging grew to {staged_peak} bytes past its 4 MiB bound"
        assert lag_peak > 0, "the consumer never fell behind during 30 s outages"
        print(
            f"kafka outages: {len(wanted)} records, staged peak {staged_peak}, lag peak {lag_peak}; " + "; ".join(notes)
        )
    finally:
        ingester.close()


class Repeat:
    """Calls `probe` every `interval` seconds in a thread while the `with` block runs."""

    def __init__(self, probe: Callable[[], None], interval: float) -> None:
        self.probe = probe
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="repeat", daemon=True)

    def __enter__(self) -> Repeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.probe()
            except Exception:  # noqa: BLE001 - a sample that failed is skipped
                continue
