"""No record is acknowledged and then dropped, and no dead letter is skipped or repeated (issue 15,
items 2, 6 and 8), on a real broker with the real binaries.

- Malformed ids: the ingester refuses exactly what the appender would (OTLP partial success with
  the appender's own message) and produces only the good records; malformed records that reach
  the topic anyway (a Collector's kafka exporter) are dead-lettered, counted in Stats and
  /metrics, while the good records of the same message land.
- A batch larger than staging takes in one piece: the Kafka appender dead-letters it and goes
  on; the embedded appender answers 413 (not 429 for ever), and after a real "staging full"
  health is SERVING again once staging drains.
- Dead letters once: a dead-lettered message that is the last of its partition is committed
  past (the table's offsets move beyond it), so no restart sends it again; a dead letter that
  cannot be delivered stops consumption of its partition instead of being skipped, and is
  delivered once the cause is fixed.
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

from harness.config import merge_config
from harness.kafka import Broker, Ingester, KafkaRecord, bodies
from harness.lake import Appender, AppenderFactory, read_table
from harness.wait import wait_until
from otlp_client import (
    LogSpec,
    grpc_export_raw,
    loghub_records,
    otlp_protobuf,
    post_logs,
    send,
    table_mismatches,
)
from test_appender_kafka import drain, kafka_config

PROTOBUF = "application/x-protobuf"
SHORT_TRACE = "trace_id must be 16 bytes, got 3"


def assert_exactly(appender: Appender, sent: list[LogSpec], *, from_kafka: bool = True) -> None:
    problems = table_mismatches(read_table(appender), sent, from_kafka=from_kafka)
    assert not problems, "the table differs from what was acknowledged:\n  " + "\n  ".join(problems)


def with_bad_ids(specs: list[LogSpec], bad_trace: set[int], bad_span: set[int]) -> bytes:
    """`specs` encoded as the SDK encodes them, then records `bad_trace` given a 3-byte trace id
    and records `bad_span` a 5-byte span id (no SDK sends those; buggy clients do)."""
    request = ExportLogsServiceRequest.FromString(otlp_protobuf(specs))
    records = [r for rl in request.resource_logs for sl in rl.scope_logs for r in sl.log_records]
    assert len(records) == len(specs)
    for i in bad_trace:
        records[i].trace_id = b"\x01\x02\x03"
    for i in bad_span:
        records[i].trace_id = b"\x07" * 16
        records[i].span_id = b"\x01" * 5
    return request.SerializeToString()


def dead_letters(broker: Broker, topic: str) -> list[KafkaRecord]:
    return broker.records(f"{topic}-dlq")


def partitions(appender: Appender) -> dict[int, dict[str, int]]:
    return {p["partition"]: p for p in appender.log_partitions()}


def caught_up(appender: Appender, count: int) -> bool:
    """`count` partitions assigned and the table holds every message of each."""
    stats = partitions(appender)
    return len(stats) == count and all(p["lag"] == 0 and p["high_watermark"] >= 0 for p in stats.values())


def big_records(n: int, tag: str, width: int = 2_000) -> list[LogSpec]:
    return [
        dataclasses.replace(spec, body=f"{spec.body} {'x' * width}")
        for spec in loghub_records("Spark", n, start=500, tag=tag)
    ]


# ---- item 2: malformed ids --------------------------------------------------------------------


def test_the_ingester_refuses_malformed_ids_exactly_as_the_appender_does(
    make_appender: AppenderFactory, broker: Broker, ingester: Ingester, topic: str, tmp_path: Path
) -> None:
    specs = loghub_records("HDFS", 5, tag="ids")
    payload = with_bad_ids(specs, bad_trace={1}, bad_span={3})
    good = [specs[0], specs[2], specs[4]]

    response = post_logs(ingester.ports, payload, PROTOBUF)
    assert response.status_code == 200, (response.status_code, response.content[:300])
    partial = ExportLogsServiceResponse.FromString(response.content).partial_success
    assert (partial.rejected_log_records, partial.error_message) == (2, SHORT_TRACE), partial

    embedded = make_appender()
    response = post_logs(embedded.ports, payload, PROTOBUF)
    assert response.status_code == 200, (response.status_code, response.content[:300])
    assert ExportLogsServiceResponse.FromString(response.content).partial_success == partial, "the two services differ"

    appender = make_appender(kafka_config(broker, topic, tmp_path / "lake"))
    drain(appender, len(good))
    assert_exactly(appender, good)
    produced = [r for record in broker.records(topic) for r in bodies(record.request())]
    assert sorted(produced) == sorted(str(spec.body) for spec in good), "a malformed record reached Kafka"
    stats = appender.stats()["appender"]
    assert (stats["dead_lettered"], stats["dead_lettered_records"]) == (0, 0), stats
    assert ingester.stats()["ingester"]["records_rejected"] == 2


def test_malformed_records_reaching_the_topic_are_dead_lettered_and_counted_while_the_rest_lands(
    make_appender: AppenderFactory, broker: Broker, topic: str, tmp_path: Path
) -> None:
    appender = make_appender(kafka_config(broker, topic, tmp_path / "lake"))
    specs = loghub_records("HDFS", 4, tag="collector")
    # As a Collector's kafka exporter would write it: straight to the topic, no ingester.
    broker.produce(topic, "HDFS", with_bad_ids(specs, bad_trace={0}, bad_span={2}))
    drain(appender, 2)
    assert_exactly(appender, [specs[1], specs[3]])

    wait_until(lambda: dead_letters(broker, topic), timeout=30, what="a dead letter")
    (dead,) = dead_letters(broker, topic)
    assert dead.headers.get("telemetry-lake-error") == SHORT_TRACE, dead.headers
    source = dead.headers.get("telemetry-lake-source") or ""
    assert re.fullmatch(rf"{re.escape(topic)}/\d+/0", source), source
    assert dead.key == "HDFS"
    request = dead.request()
    assert sorted(bodies(request)) == sorted(str(specs[i].body) for i in (0, 2)), "not just the malformed records"
    records = [r for rl in request.resource_logs for sl in rl.scope_logs for r in sl.log_records]
    assert sorted((len(r.trace_id), len(r.span_id)) for r in records) == [(3, 0), (16, 5)]
    assert request.resource_logs[0].resource.attributes[0].value.string_value == "HDFS"

    stats = appender.stats()["appender"]
    assert (stats["dead_lettered"], stats["dead_lettered_records"], stats["dead_letter_failures"]) == (1, 2, 0), stats
    reply = appender.stats_grpc()
    assert (reply.appender.dead_lettered, reply.appender.dead_lettered_records) == (1, 2), reply
    metrics = appender.metrics().splitlines()
    for line in ("appender_dead_letters_total 1", "appender_dead_lettered_records_total 2"):
        assert line in metrics, f"{line!r} not in /metrics"
    wait_until(lambda: caught_up(appender, 12), timeout=30, what="the table to hold every offset")


# ---- item 6: a batch larger than staging takes ------------------------------------------------


def test_a_kafka_message_larger_than_staging_is_dead_lettered_and_the_rest_flows(
    make_appender: AppenderFactory, broker: Broker, ingester: Ingester, topic: str, tmp_path: Path
) -> None:
    config = merge_config(
        kafka_config(broker, topic, tmp_path / "lake", interval="2s", max_bytes="32KiB"),
        {"staging": {"max_bytes": "64KiB"}},
    )
    appender = make_appender(config)
    before = loghub_records("Spark", 30, tag="before")
    big = big_records(100, "big")  # one Kafka message of ~200 KB
    after = loghub_records("Spark", 30, start=30, tag="after")
    for batch in (before, big, after):
        send(ingester.ports, batch)
    drain(appender, len(before) + len(after), timeout=60)
    assert_exactly(appender, before + after)

    wait_until(lambda: dead_letters(broker, topic), timeout=30, what="a dead letter")
    (dead,) = dead_letters(broker, topic)
    assert "more than staging takes in one piece" in (dead.headers.get("telemetry-lake-error") or ""), dead.headers
    assert len(bodies(dead.request())) == len(big)
    stats = appender.stats()
    assert (stats["appender"]["dead_lettered"], stats["appender"]["dead_lettered_records"]) == (1, len(big)), stats
    assert stats["serving"] and stats["not_serving_reasons"] == [], stats
    assert appender.health(appender.ports.admin_grpc) == "SERVING"
    wait_until(lambda: caught_up(appender, 4), timeout=30, what="the table to hold every offset")


SMALL_STAGING = {"staging": {"max_bytes": "64KiB"}, "flush": {"max_bytes": "64KiB"}}


def test_a_backlog_is_staged_in_appends_that_a_small_staging_takes(
    make_appender: AppenderFactory, broker: Broker, ingester: Ingester, topic: str, tmp_path: Path
) -> None:
    # 240 KB waiting on the topic, read in one poll: more than the whole of staging.
    sent: list[LogSpec] = []
    for i in range(30):
        batch = big_records(4, f"backlog-{i}")
        send(ingester.ports, batch)
        sent += batch
    config = merge_config(
        kafka_config(broker, topic, tmp_path / "lake", interval="2s", max_bytes="32KiB"),
        {"staging": {"max_bytes": "64KiB"}},
    )
    appender = make_appender(config)
    drain(appender, len(sent), timeout=60)
    assert_exactly(appender, sent)
    assert appender.stats()["appender"]["dead_lettered"] == 0


def test_an_export_larger_than_staging_is_413_not_429_and_leaves_health_alone(make_appender: AppenderFactory) -> None:
    appender = make_appender(SMALL_STAGING)  # otlp.max_recv_msg_size stays 16 MiB
    big = otlp_protobuf(big_records(100, "big"))
    for _ in range(2):
        response = post_logs(appender.ports, big, PROTOBUF)
        assert response.status_code == 413, (response.status_code, response.content[:300])
    error = grpc_export_raw(appender.ports, big)
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT, error  # type: ignore[attr-defined]
    stats = appender.stats()
    assert stats["serving"] and stats["not_serving_reasons"] == [], "a client's oversized request is no outage"
    assert stats["buffer_records"] == 0
    small = loghub_records("HDFS", 20, tag="small")
    send(appender.ports, small)
    appender.flush_http()
    assert_exactly(appender, small, from_kafka=False)


def test_health_is_serving_again_once_a_full_staging_drains(make_appender: AppenderFactory) -> None:
    appender = make_appender(SMALL_STAGING)
    acknowledged: list[LogSpec] = []
    for i in range(40):
        batch = loghub_records("HDFS", 60, start=60 * i, tag=f"fill-{i}")
        response = post_logs(appender.ports, otlp_protobuf(batch), PROTOBUF)
        if response.status_code != 200:
            assert response.status_code == 429, (response.status_code, response.content[:300])
            break
        acknowledged += batch
    else:
        raise AssertionError("staging of 64 KiB never filled")
    assert appender.stats()["not_serving_reasons"] == ["staging full"]
    assert appender.health(appender.ports.otlp_grpc) == "NOT_SERVING"

    appender.flush_http()
    wait_until(lambda: appender.stats()["buffer_records"] == 0, timeout=20, what="staging to drain")
    wait_until(lambda: appender.health(appender.ports.otlp_grpc) == "SERVING", timeout=10, what="SERVING again")
    assert appender.http("GET", "/readyz").status_code == 200
    assert_exactly(appender, acknowledged, from_kafka=False)


# ---- item 8: dead letters exactly once ----------------------------------------------------------


def test_a_dead_letter_last_in_its_partition_is_not_sent_again_after_restarts(
    make_appender: AppenderFactory, broker: Broker, ingester: Ingester, topic: str, tmp_path: Path
) -> None:
    appender = make_appender(kafka_config(broker, topic, tmp_path / "lake"))
    sent: list[LogSpec] = []
    for i, system in enumerate(("Apache", "HDFS", "Linux", "OpenSSH", "Spark", "Zookeeper")):
        batch = loghub_records(system, 20, tag=f"good-{i}")
        send(ingester.ports, batch)
        sent += batch
    broker.produce(topic, "poison", b"\x0a\xff\xff\xff this is not protobuf")  # the last message of its partition
    wait_until(lambda: dead_letters(broker, topic), timeout=30, what="a dead letter")
    drain(appender, len(sent))
    wait_until(lambda: caught_up(appender, 4), timeout=30, what="the table's offsets to move past the dead letter")

    for restart in (appender.kill9, appender.stop):
        restart()
        appender.start_and_wait()
        wait_until(lambda: caught_up(appender, 4), timeout=90, what="the partitions assigned and caught up")
        time.sleep(3)  # time enough to read the dead-lettered message again, were it not committed
        assert len(dead_letters(broker, topic)) == 1, "the dead letter was sent again after a restart"
        assert appender.stats()["appender"]["kafka_messages"] == 0, "a message below the table's offsets was read"
    assert_exactly(appender, sent)


def test_a_dead_letter_on_a_quiet_topic_is_committed_by_the_interval_flush(
    make_appender: AppenderFactory, broker: Broker, ingester: Ingester, topic: str, tmp_path: Path
) -> None:
    appender = make_appender(kafka_config(broker, topic, tmp_path / "lake", interval="2s"))
    sent = loghub_records("Linux", 20, tag="quiet")
    send(ingester.ports, sent)
    drain(appender, len(sent))
    broker.produce(topic, "Linux", b"\x0a\xff\xff\xff this is not protobuf")
    wait_until(lambda: dead_letters(broker, topic), timeout=30, what="a dead letter")
    # Nothing else is staged and nobody asks for a flush: the interval alone must commit it.
    wait_until(lambda: caught_up(appender, 4), timeout=30, what="the interval flush to move past the dead letter")
    appender.kill9()
    appender.start_and_wait()
    wait_until(lambda: caught_up(appender, 4), timeout=90, what="the partitions assigned and caught up")
    time.sleep(3)
    assert len(dead_letters(broker, topic)) == 1, "the dead letter was sent again after a restart"
    assert_exactly(appender, sent)


def test_an_undeliverable_dead_letter_stops_its_partition_and_is_delivered_later(
    make_appender: AppenderFactory, broker: Broker, ingester: Ingester, topic: str, tmp_path: Path
) -> None:
    # The appender's dead-letter producer refuses anything over 1,000 bytes: the poison below.
    config = merge_config(
        kafka_config(broker, topic, tmp_path / "lake"), {"kafka": {"producer": {"message.max.bytes": "1000"}}}
    )
    appender = make_appender(config)
    first = loghub_records("Spark", 20, tag="first")
    send(ingester.ports, first)
    drain(appender, len(first))
    poison = b"\x0a\xff\xff\xff" + b"not protobuf " * 200
    broker.produce(topic, "Spark", poison)
    second = loghub_records("Spark", 20, start=20, tag="second")  # same key: after the poison
    send(ingester.ports, second)

    wait_until(
        lambda: appender.stats()["appender"].get("dead_letter_failures", 0) >= 2,
        timeout=30,
        what="dead-letter deliveries failing and retried",
    )
    (poisoned,) = [r for r in broker.records(topic) if r.value == poison]
    appender.flush_http()
    table = partitions(appender)[poisoned.partition]
    assert table["committed_offset"] <= poisoned.offset, f"moved past an undelivered dead letter: {table}"
    assert dead_letters(broker, topic) == []
    assert len(read_table(appender)) == len(first)
    assert "dead letter not delivered" in appender.log_text()
    appender.assert_alive()

    assert appender.stop() == 0
    appender.config["kafka"].pop("producer")  # the operator fixes the producer settings
    appender.start_and_wait()
    wait_until(lambda: dead_letters(broker, topic), timeout=30, what="the dead letter delivered")
    (dead,) = dead_letters(broker, topic)
    assert dead.value == poison
    assert dead.headers.get("telemetry-lake-source") == f"{topic}/{poisoned.partition}/{poisoned.offset}"
    drain(appender, len(first) + len(second))
    assert_exactly(appender, first + second)
    wait_until(lambda: caught_up(appender, 4), timeout=30, what="the table to hold every offset")
