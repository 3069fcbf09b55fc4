"""The appender in Kafka mode on a real broker: OTLP -> ingester -> Kafka -> appender -> Iceberg.

Exactly once rests on the table: each commit carries the next offset of every partition it
covers, each commit drops staged rows below the offsets the table already holds, and every
(re)assignment starts from the table's offsets. These tests kill, restart and double up the
appender while records flow, then count every record id in the table.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.kafka import Broker, Ingester
from harness.lake import APPENDERS, Appender, AppenderFactory, load_table, read_table
from harness.wait import wait_until
from otlp_client import LogSpec, loghub_records, otlp_protobuf, post_logs, record_id, send, table_mismatches

SYSTEMS = ("Apache", "HDFS", "Hadoop", "Linux", "OpenSSH", "OpenStack", "Spark", "Zookeeper")
OFFSETS_PROPERTY = "telemetry-lake.kafka.offsets"


def kafka_config(broker: Broker, topic: str, lake: Path, **flush: Any) -> dict[str, dict[str, Any]]:
    """An appender consuming `topic`; every appender of a test shares the table under `lake`."""
    return {
        "kafka": {
            "brokers": broker.bootstrap,
            "topic": topic,
            "group_id": f"{topic}-appenders",
            # kafka.dead_letter_topic left out: its default is f"{topic}-dlq".
        },
        "iceberg": {"catalog_uri": f"sqlite://{lake}/catalog.db", "warehouse": str(lake / "warehouse")},
        "flush": {"interval": "1h", "max_records": 100_000_000, "max_bytes": "1GiB", **flush},
    }


def batches(total: int, size: int, tag: str) -> Iterator[list[LogSpec]]:
    """`total` Loghub records in batches of `size`, cycling through the systems."""
    sent = 0
    i = 0
    while sent < total:
        n = min(size, total - sent)
        yield loghub_records(SYSTEMS[i % len(SYSTEMS)], n, start=(sent // len(SYSTEMS)) % 1500, tag=f"{tag}-{i}")
        sent += n
        i += 1


def drain(appender: Appender, expected: int, timeout: float = 120) -> None:
    """Flushes until the table holds `expected` rows."""

    def landed() -> bool:
        appender.flush_http()
        return len(read_table(appender)) >= expected

    wait_until(landed, timeout=timeout, what=f"{expected} rows in the table", interval=1.0)


def assert_exactly(appender: Appender, sent: list[LogSpec]) -> None:
    table = read_table(appender)
    problems = table_mismatches(table, sent, from_kafka=True)
    assert not problems, "the table differs from what the ingester acknowledged:\n  " + "\n  ".join(problems)
    rows = table.select(["kafka_partition", "kafka_offset"]).to_pylist()
    assert all(r["kafka_partition"] is not None and r["kafka_offset"] is not None for r in rows)


def snapshot_offsets(appender: Appender) -> list[dict[str, int]]:
    return [
        json.loads(s.summary[OFFSETS_PROPERTY])
        for s in load_table(appender).snapshots()
        if s.summary is not None and OFFSETS_PROPERTY in s.summary.additional_properties
    ]


def test_records_flow_from_the_ingester_into_the_table(
    make_appender: AppenderFactory, broker: Broker, ingester: Ingester, topic: str, tmp_path: Path
) -> None:
    appender = make_appender(kafka_config(broker, topic, tmp_path / "lake"))
    assert appender.stats()["mode"] == "kafka"
    sent: list[LogSpec] = []
    for batch in batches(2_000, 250, "flow"):
        send(ingester.ports, batch)
        sent += batch
    drain(appender, len(sent))
    assert_exactly(appender, sent)
    partitions = {r["kafka_partition"] for r in read_table(appender).select(["kafka_partition"]).to_pylist()}
    assert len(partitions) > 1, f"all records came from one partition: {partitions}"
    offsets = snapshot_offsets(appender)
    assert offsets and set(map(int, offsets[-1])) <= set(range(4)), offsets
    stats = appender.stats()["appender"]
    logs = appender.log_partitions()
    assert sorted(p["partition"] for p in logs) == [0, 1, 2, 3], stats["partitions"]
    assert all(p["lag"] == 0 and p["committed_offset"] == p["high_watermark"] for p in logs), stats
    assert stats["kafka_messages"] >= 8, stats


def test_garbage_goes_to_the_dead_letter_topic_while_the_rest_flows(
    make_appender: AppenderFactory, broker: Broker, ingester: Ingester, topic: str, tmp_path: Path
) -> None:
    appender = make_appender(kafka_config(broker, topic, tmp_path / "lake"))
    first = loghub_records("Spark", 100, tag="before-garbage")
    send(ingester.ports, first)
    broker.produce(topic, "Spark", b"\x0a\xff\xff\xff this is not protobuf")
    second = loghub_records("Spark", 100, start=100, tag="after-garbage")
    send(ingester.ports, second)
    drain(appender, 200)
    assert_exactly(appender, first + second)
    wait_until(lambda: len(broker.records(f"{topic}-dlq")) == 1, timeout=30, what="one dead letter")
    dead = broker.records(f"{topic}-dlq")[0]
    assert dead.headers.get("telemetry-lake-error"), dead.headers
    assert appender.stats()["appender"]["dead_lettered"] == 1


@pytest.mark.timeout(600)
def test_kill9_and_restarts_while_records_flow_commit_each_record_once(
    make_appender: AppenderFactory, broker: Broker, ingester: Ingester, topic: str, tmp_path: Path
) -> None:
    appender = make_appender(kafka_config(broker, topic, tmp_path / "lake", max_records=10_000))
    sent: list[LogSpec] = []
    done = threading.Event()

    def produce() -> None:
        try:
            for batch in batches(100_000, 1_000, "kill"):
                send(ingester.ports, batch)
                sent.extend(batch)
        finally:
            done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    for pause in (4.0, 4.0):
        time.sleep(pause)
        appender.kill9()
        appender.start_and_wait()
    # Once more during a commit: ask for a flush and kill while it runs.
    threading.Thread(target=lambda: appender.http("POST", "/flush"), daemon=True).start()
    time.sleep(0.05)
    appender.kill9()
    appender.start_and_wait()
    producer.join(timeout=400)
    assert done.is_set() and len(sent) == 100_000, len(sent)
    drain(appender, len(sent), timeout=240)
    assert_exactly(appender, sent)
    assert len(snapshot_offsets(appender)) >= 2


def test_two_appenders_in_one_group_hand_over_without_doubles(
    make_appender: AppenderFactory, broker: Broker, ingester: Ingester, topic: str, tmp_path: Path
) -> None:
    config = kafka_config(broker, topic, tmp_path / "lake", interval="2s")
    first = make_appender(config)
    sent: list[LogSpec] = []
    for batch in batches(6_000, 500, "first"):
        send(ingester.ports, batch)
        sent += batch
    second = make_appender(config)
    for batch in batches(6_000, 500, "both"):
        send(ingester.ports, batch)
        sent += batch
    assert first.stop() == 0
    for batch in batches(6_000, 500, "second"):
        send(ingester.ports, batch)
        sent += batch
    drain(second, len(sent), timeout=180)
    assert_exactly(second, sent)


@pytest.mark.timeout(300)
def test_broker_outage_loses_no_acknowledged_record(
    make_appender: AppenderFactory, request: pytest.FixtureRequest, tmp_path: Path, topic: str
) -> None:
    """The broker stops for 20 s while a client sends: the ingester refuses with retryable
    answers meanwhile, and afterwards every acknowledged record is in the table exactly once."""
    broker = Broker(tmp_path / "kafka").start_and_wait()
    ingester = Ingester(tmp_path / "ingester", broker, topic)
    request.node.stash.setdefault(APPENDERS, []).append(ingester)
    try:
        ingester.start_and_wait(timeout=60)
        appender = make_appender(kafka_config(broker, topic, tmp_path / "lake", interval="2s"))
        acknowledged: list[LogSpec] = []
        refusals: list[int] = []

        def send_for(seconds: float, tag: str) -> None:
            deadline = time.monotonic() + seconds
            i = 0
            while time.monotonic() < deadline:
                batch = loghub_records(SYSTEMS[i % len(SYSTEMS)], 50, start=50 * (i % 30), tag=f"{tag}-{i}")
                response = post_logs(ingester.ports, otlp_protobuf(batch), "application/x-protobuf")
                if response.status_code == 200:
                    acknowledged.extend(batch)
                else:
                    assert response.status_code in (429, 503), (response.status_code, response.content[:200])
                    assert response.headers.get("retry-after", "").isdigit()
                    refusals.append(response.status_code)
                    time.sleep(0.5)
                i += 1

        send_for(3, "before")
        broker.stop()
        outage = threading.Thread(target=send_for, args=(20, "during"))
        outage.start()
        wait_until(lambda: ingester.health(ingester.ports.otlp_grpc) == "NOT_SERVING", timeout=20, what="NOT_SERVING")
        outage.join()
        broker.start_and_wait()
        wait_until(lambda: ingester.health(ingester.ports.otlp_grpc) == "SERVING", timeout=60, what="SERVING again")
        send_for(3, "after")
        assert refusals, "the ingester acknowledged everything while the broker was down"

        # Unacknowledged records may have landed too (OTLP is at-least-once for a refused
        # request); acknowledged ones must land exactly once, and nothing may land twice.
        wanted = {record_id(spec) for spec in acknowledged}

        wait_until(
            lambda: wanted <= landed_ids(appender, flush=True), timeout=120, what="acknowledged records", interval=1.0
        )
        ids = landed_id_list(appender)
        doubled = [rid for rid in set(ids) if ids.count(rid) > 1]
        assert not doubled, f"{len(doubled)} records are in the table twice, e.g. {doubled[:3]}"
    finally:
        broker.close()


def landed_id_list(appender: Appender) -> list[str]:
    rows = read_table(appender).select(["log_attributes"]).to_pylist()
    return [str(dict(row["log_attributes"] or {}).get("record.id")) for row in rows]


def landed_ids(appender: Appender, *, flush: bool = False) -> set[str]:
    if flush:
        appender.flush_http()
    return set(landed_id_list(appender))
