"""Exactly once through what operators and clients do to the topic, the table and the catalog.

The appender in Kafka mode keeps its offsets in the Iceberg table. These tests do to that table
and topic what people do, then count every record id in the table:

- the topic is deleted and created again (offsets start at 0 again) while the appender is
  stopped, or while it runs: the new topic is read from its beginning, nothing is skipped;
- every snapshot but the current one is expired, the consumer group is lost (a new
  `group_id`), and pyiceberg appends to the same table: nothing is read again;
- a REST commit is applied by the catalog only after the appender gave up on it (a proxy in
  front of the real catalog holds it until the retry comes): the retry commits nothing twice.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.catalog import RestCatalog, load_rest_table, rest_config
from harness.catalog_proxy import CatalogProxy
from harness.config import merge_config
from harness.kafka import Broker, Ingester
from harness.lake import Appender, AppenderFactory, load_table, read_table, without_field_ids
from harness.wait import wait_until
from otlp_client import LogSpec, loghub_records, record_id, send, table_mismatches
from test_appender_kafka import assert_exactly, batches, drain, kafka_config

OFFSETS = "telemetry-lake.kafka.offsets"
TOPIC_ID = "telemetry-lake.kafka.topic-id"


def send_all(ingester: Ingester, total: int, tag: str) -> list[LogSpec]:
    sent: list[LogSpec] = []
    for batch in batches(total, 5, tag):
        send(ingester.ports, batch)
        sent += batch
    return sent


def record_ids(table: pa.Table) -> list[str]:
    rows = table.select(["log_attributes"]).to_pylist()
    return [str(dict(row["log_attributes"] or {}).get("record.id")) for row in rows]


def consumed(appender: Appender) -> int:
    return int(appender.stats()["appender"]["kafka_messages"])


def assigned(appender: Appender) -> list[int]:
    return sorted(p["partition"] for p in appender.log_partitions())


# ---- 1. a topic deleted and created again --------------------------------------------------


@pytest.mark.timeout(300)
def test_a_topic_created_again_while_the_appender_is_stopped_is_read_from_its_beginning(
    make_appender: AppenderFactory, broker: Broker, ingester: Ingester, topic: str, tmp_path: Path
) -> None:
    appender = make_appender(kafka_config(broker, topic, tmp_path / "lake"))
    first = send_all(ingester, 200, "old-topic")
    drain(appender, len(first))
    old_id = broker.topic_id(topic)
    assert appender.stop() == 0

    new_id = broker.recreate_topic(topic, 4)
    assert new_id != old_id
    ingester.restart()
    second = send_all(ingester, 60, "new-topic")
    appender.start_and_wait()
    drain(appender, len(first) + len(second), timeout=60)
    assert_exactly(appender, first + second)

    log = appender.log_text()
    warning = next((line for line in log.splitlines() if "do not apply" in line), "")
    assert old_id in warning and new_id in warning, f"no warning naming both topic ids:\n{log[-3000:]}"
    current = load_table(appender).current_snapshot()
    assert current is not None and current.summary is not None
    assert current.summary.additional_properties[TOPIC_ID] == new_id
    assert load_table(appender).properties[TOPIC_ID] == new_id


@pytest.mark.timeout(300)
def test_a_topic_created_again_while_the_appender_runs_is_read_from_its_beginning(
    make_appender: AppenderFactory, broker: Broker, ingester: Ingester, topic: str, tmp_path: Path
) -> None:
    appender = make_appender(kafka_config(broker, topic, tmp_path / "lake", interval="2s"))
    first = send_all(ingester, 200, "old-topic")
    drain(appender, len(first))
    old_id = broker.topic_id(topic)

    new_id = broker.recreate_topic(topic, 4)
    assert new_id != old_id
    ingester.restart()
    second = send_all(ingester, 60, "new-topic")
    drain(appender, len(first) + len(second), timeout=120)
    # Once more after a restart: nothing of either topic is read twice.
    appender.restart()
    third = send_all(ingester, 40, "after-restart")
    drain(appender, len(first) + len(second) + len(third), timeout=60)
    assert_exactly(appender, first + second + third)
    assert load_table(appender).properties[TOPIC_ID] == new_id


# ---- 3. offsets that survive snapshot expiry, a lost group and foreign commits -------------


def expire_all_but_current(appender: Appender) -> None:
    """What a maintenance job does: every snapshot but the current one is expired."""
    table = load_table(appender)
    current = table.current_snapshot()
    assert current is not None
    old = [s.snapshot_id for s in table.snapshots() if s.snapshot_id != current.snapshot_id]
    if old:
        table.maintenance.expire_snapshots().by_ids(old).commit()
    assert [s.snapshot_id for s in load_table(appender).snapshots()] == [current.snapshot_id]


def foreign_append(appender: Appender, rows: pa.Table) -> None:
    """Another tool appends `rows` to the table: pyiceberg adds a Parquet file written by
    pyarrow, in a snapshot of its own whose summary holds no offsets."""
    plain = without_field_ids(rows)
    path = appender.warehouse_dir / "foreign.parquet"
    pq.write_table(plain, path)
    load_table(appender).add_files([str(path)])


def assert_nothing_read_again(appender: Appender, rows_before: int) -> None:
    """The appender got every partition, waited, flushed: it consumed nothing, committed nothing."""
    wait_until(lambda: assigned(appender) == [0, 1, 2, 3], timeout=60, what="all four partitions assigned")
    time.sleep(5)
    appender.flush_http()
    assert consumed(appender) == 0, f"the appender read {consumed(appender)} messages again"
    assert len(read_table(appender)) == rows_before


@pytest.mark.timeout(300)
def test_offsets_survive_snapshot_expiry_a_new_group_and_a_foreign_append(
    make_appender: AppenderFactory, broker: Broker, ingester: Ingester, topic: str, tmp_path: Path
) -> None:
    config = kafka_config(broker, topic, tmp_path / "lake")
    appender = make_appender(config)
    # One commit per system until a commit touches a partition no earlier commit touched: the
    # newest snapshot then holds rows of one partition, older ones of others.
    sent: list[LogSpec] = []
    seen: set[int] = set()
    for i, system in enumerate(("Apache", "HDFS", "Hadoop", "Linux", "OpenSSH", "OpenStack", "Spark")):
        batch = loghub_records(system, 30, tag=f"expiry-{i}")
        send(ingester.ports, batch)
        sent += batch
        drain(appender, len(sent))
        rows = read_table(appender).select(["kafka_partition", "service_name"]).to_pylist()
        partitions = {r["kafka_partition"] for r in rows if r["service_name"] == system}
        if seen and not partitions <= seen:
            break
        seen |= partitions
    else:
        pytest.fail(f"every system landed on partitions {seen}")
    assert_exactly(appender, sent)
    assert appender.stop() == 0

    expire_all_but_current(appender)
    lost_group = make_appender(merge_config(config, {"kafka": {"group_id": f"{topic}-new-group"}}))
    assert_nothing_read_again(lost_group, len(sent))
    assert lost_group.stop() == 0

    # Another tool appends to the same table (no offsets in its summary), and a maintenance job
    # expires every snapshot before it.
    foreign = read_table(appender).slice(0, 1)
    foreign_append(appender, foreign)
    expire_all_but_current(appender)
    current = load_table(appender).current_snapshot()
    assert current is not None and current.summary is not None
    assert OFFSETS not in current.summary.additional_properties
    again = make_appender(merge_config(config, {"kafka": {"group_id": f"{topic}-third-group"}}))
    assert_nothing_read_again(again, len(sent) + 1)

    # And records still flow after all that.
    more = loghub_records("Zookeeper", 20, tag="after-expiry")
    send(ingester.ports, more)
    drain(again, len(sent) + 1 + len(more))
    expected = Counter(record_id(spec) for spec in sent + more)
    expected.update(record_ids(foreign))
    assert Counter(record_ids(read_table(again))) == expected


# ---- 4. a commit the catalog applies late ------------------------------------------------------


class LateCommitProxy(CatalogProxy):
    """The first table commit gets no answer: it is held until the next table commit arrives,
    then sent on to the catalog (applied late, after the client gave up on it), and only then is
    the next one forwarded."""

    def __init__(self, target: str) -> None:
        super().__init__(target, "late-commit-proxy")
        self.commits = 0
        self.held: tuple[str, dict[str, str], bytes] | None = None
        self.late_status: int | None = None
        self.released = threading.Event()

    def commit(self, path: str, headers: dict[str, str], body: bytes) -> bool:
        with self.lock:
            number = self.commits
            self.commits += 1
            if number == 0:
                self.held = (path, headers, body)
            elif number == 1 and self.held is not None:
                # The late one lands first, right before the retry.
                held_path, held_headers, held_body = self.held
                self.late_status = self.forward("POST", held_path, held_headers, held_body)[0]
                self.released.set()
        if number == 0:
            # No answer at all: the client times out, the catalog has not seen it yet.
            self.released.wait(timeout=120)
            return False
        return True

    def close(self) -> None:
        self.released.set()
        super().close()


@pytest.fixture
def late_proxy(catalog: RestCatalog) -> Iterator[LateCommitProxy]:
    proxy = LateCommitProxy(catalog.uri)
    yield proxy
    proxy.close()


def late_commit_config(proxy: LateCommitProxy, catalog: RestCatalog, table: str) -> dict[str, Any]:
    config = rest_config(catalog, table, {"rest.client.socket-timeout-ms": "3000"})
    config["iceberg"]["catalog_uri"] = proxy.uri
    return config


def assert_applied_late_and_committed_once(
    appender: Appender,
    proxy: LateCommitProxy,
    catalog: RestCatalog,
    table: str,
    sent: list[LogSpec],
    *,
    from_kafka: bool,
) -> None:
    # The first commit times out (no answer); the flushes after it retry.
    response = appender.http("POST", "/flush")
    assert response.status_code != 200, f"the first commit was answered: {response.text}"

    def retried() -> bool:
        if proxy.late_status is None:
            appender.http("POST", "/flush")
        return proxy.late_status is not None

    wait_until(retried, timeout=60, what="a retry, and the held commit applied before it", interval=1.0)
    assert proxy.late_status == 200, f"the catalog refused the late commit: {proxy.late_status}"

    def landed_and_settled() -> bool:
        appender.http("POST", "/flush")
        return appender.stats()["buffer_records"] == 0

    wait_until(landed_and_settled, timeout=60, what="the sealed set released", interval=1.0)
    rows = load_rest_table(catalog, table).scan().to_arrow()
    problems = table_mismatches(rows, sent, from_kafka=from_kafka)
    assert not problems, "the late commit and its retry lost or doubled records:\n  " + "\n  ".join(problems)
    with_rows = [
        s
        for s in load_rest_table(catalog, table).snapshots()
        if s.summary is not None and int(s.summary.additional_properties.get("added-records", "0")) > 0
    ]
    assert len(with_rows) == 1, f"{len(with_rows)} snapshots added rows"
    # What happened is what the test is about: the retry, checked against the table before the
    # late commit, found it on top when it came to commit.
    assert proxy.commits >= 2, proxy.commits
    assert "already holds sealed set" in appender.log_text()


@pytest.mark.timeout(300)
def test_a_commit_applied_late_is_not_committed_again_in_kafka_mode(
    lake_appender: AppenderFactory,
    catalog: RestCatalog,
    late_proxy: LateCommitProxy,
    broker: Broker,
    ingester: Ingester,
    topic: str,
) -> None:
    table = "late_commit_kafka"
    config = merge_config(
        late_commit_config(late_proxy, catalog, table),
        {"kafka": {"brokers": broker.bootstrap, "topic": topic, "group_id": f"{topic}-appenders"}},
    )
    appender = lake_appender(config)
    sent = send_all(ingester, 100, "late")
    wait_until(lambda: appender.stats()["buffer_records"] >= len(sent), timeout=60, what="every record staged")
    assert_applied_late_and_committed_once(appender, late_proxy, catalog, table, sent, from_kafka=True)


@pytest.mark.timeout(300)
def test_a_commit_applied_late_is_not_committed_again_in_embedded_mode(
    lake_appender: AppenderFactory, catalog: RestCatalog, late_proxy: LateCommitProxy
) -> None:
    table = "late_commit_embedded"
    appender = lake_appender(late_commit_config(late_proxy, catalog, table))
    sent = loghub_records("Spark", 100, tag="late-embedded")
    send(appender.ports, sent)
    assert_applied_late_and_committed_once(appender, late_proxy, catalog, table, sent, from_kafka=False)
