"""The ingester on a real Kafka broker: topic creation, keyed OTLP records, splitting, backpressure.

One broker serves the module (each test writes its own topic); the outage test stops and
restarts a broker of its own. The topic is read back with Kafka's own Java client, and every
value must parse as an OTLP `ExportLogsServiceRequest` with the Python protobuf runtime.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

from harness.clients import http_session
from harness.kafka import Broker, Ingester, KafkaRecord, bodies, service_names
from harness.lake import APPENDERS
from harness.wait import wait_until
from otlp_client import (
    LogSpec,
    Transport,
    grpc_export_raw,
    loghub_records,
    otlp_protobuf,
    post_logs,
    send,
)

SYSTEMS = ("Apache", "HDFS", "Hadoop", "Linux", "OpenSSH", "OpenStack", "Spark", "Zookeeper")
# A zstd frame's first four bytes (RFC 8878, 3.1.1).
ZSTD_MAGIC = bytes.fromhex("28b52ffd")
HEADERS = {"content-type": "application/x-protobuf", "telemetry-lake-schema": "otlp-logs-v1"}


class MakeIngester(Protocol):
    def __call__(self, config: dict[str, Any] | None = None, *, broker: Broker | None = None) -> Ingester: ...


@pytest.fixture
def make_ingester(request: pytest.FixtureRequest, tmp_path: Path, broker: Broker) -> Iterator[MakeIngester]:
    """Ingesters on their own topic (named after the test), started and ready."""
    created: list[Ingester] = []
    # conftest.py attaches the logs of everything in this list to a failing test's report.
    request.node.stash[APPENDERS] = created  # type: ignore[assignment]
    base = re.sub(r"[^a-zA-Z0-9]+", "-", request.node.name).strip("-")[:80]

    def make(config: dict[str, Any] | None = None, *, broker: Broker = broker) -> Ingester:
        ingester = Ingester(tmp_path / f"ingester-{len(created)}", broker, f"{base}-{len(created)}", config)
        created.append(ingester)
        ingester.start_and_wait(timeout=60)
        return ingester

    yield make
    for ingester in created:
        ingester.close()


def record_ids(record: KafkaRecord) -> list[str]:
    request = record.request()
    return [
        attribute.value.string_value
        for resource_logs in request.resource_logs
        for scope_logs in resource_logs.scope_logs
        for log in scope_logs.log_records
        for attribute in log.attributes
        if attribute.key == "record.id"
    ]


def assert_well_formed(records: list[KafkaRecord]) -> None:
    """Headers as documented, the value an OTLP request, the key its only service name."""
    for record in records:
        assert record.headers == HEADERS, record.headers
        names = service_names(record.request())
        assert names == {record.key}, f"key {record.key!r} but services {names} at {record.partition}/{record.offset}"


def wait_records(broker: Broker, topic: str, expected: int) -> list[KafkaRecord]:
    """The topic's records once they hold `expected` log records (an export answered OK is
    already on the topic, so this normally returns at once)."""

    def probe() -> list[KafkaRecord] | None:
        records = broker.records(topic)
        return records if sum(len(record_ids(r)) for r in records) >= expected else None

    return wait_until(probe, timeout=30, interval=0.2, retry_errors=True, what=f"{expected} log records on {topic}")


def status_details(error: grpc.RpcError) -> status_pb2.Status:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    return status_pb2.Status()


def retry_info(status: status_pb2.Status) -> error_details_pb2.RetryInfo | None:
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info
    return None


def test_topic_created_with_partitions_and_services_spread(broker: Broker, make_ingester: MakeIngester) -> None:
    ingester = make_ingester({"kafka": {"partitions": 4}})
    assert broker.partitions(ingester.topic) == 4
    specs = [spec for system in SYSTEMS for spec in loghub_records(system, 40)]
    send(ingester.ports, specs, Transport.GRPC)

    records = wait_records(broker, ingester.topic, len(specs))
    assert_well_formed(records)
    partitions_of: dict[str, set[int]] = {}
    for record in records:
        partitions_of.setdefault(record.key or "", set()).add(record.partition)
    assert set(partitions_of) == set(SYSTEMS)
    assert all(len(p) == 1 for p in partitions_of.values()), f"a service spread over partitions: {partitions_of}"
    used = set().union(*partitions_of.values())
    assert len(used) >= 2, f"8 services all landed on partitions {used}"
    ids = Counter(i for r in records for i in record_ids(r))
    assert ids == Counter(f"{s.attributes['record.id']}" for s in specs)


@pytest.mark.parametrize("transport", [Transport.GRPC, Transport.HTTP_PROTOBUF_GZIP, Transport.HTTP_JSON])
def test_exports_land_as_keyed_otlp_protobuf(broker: Broker, make_ingester: MakeIngester, transport: Transport) -> None:
    ingester = make_ingester()
    specs = loghub_records("OpenSSH", 30, tag="ssh") + loghub_records("Spark", 20, tag="spark")
    send(ingester.ports, specs, transport)
    records = wait_records(broker, ingester.topic, len(specs))
    assert_well_formed(records)
    assert {r.key for r in records} == {"OpenSSH", "Spark"}
    ids = [i for r in records for i in record_ids(r)]
    assert sorted(ids) == sorted(str(s.attributes["record.id"]) for s in specs)
    # One service's records keep their order (one partition, in offset order).
    ssh = [int(i.split(":")[1]) for r in records if r.key == "OpenSSH" for i in record_ids(r)]
    assert ssh == sorted(ssh)


def test_single_service_value_is_the_request_bytes(broker: Broker, make_ingester: MakeIngester) -> None:
    """What the OpenTelemetry Collector's `otlp_proto` encoding would write: the request itself."""
    ingester = make_ingester()
    payload = otlp_protobuf(loghub_records("Zookeeper", 25))
    assert grpc_export_raw(ingester.ports, payload) is None
    (record,) = wait_records(broker, ingester.topic, 25)
    assert record.key == "Zookeeper"
    assert record.value == payload


def test_zstd_batches_state_their_decompressed_size(broker: Broker, make_ingester: MakeIngester) -> None:
    """Every zstd frame the ingester writes says how large it decompresses. Without that a
    consumer's librdkafka guesses twice the compressed size and retries at three times the guess
    until the batch fits: on real logs (about 20x) it decompressed each batch four times and
    held buffers 2.7 times the data (`.cargo/config.toml` says how the size gets written)."""
    ingester = make_ingester()
    specs = [spec for system in ("HDFS", "OpenSSH") for spec in loghub_records(system, 200)]
    send(ingester.ports, specs, Transport.GRPC)
    wait_records(broker, ingester.topic, len(specs))
    batches = broker.stored_batches(ingester.topic)
    assert {batch.codec for batch in batches} == {4}, "the ingester's batches are not all zstd"
    for batch in batches:
        assert batch.records[:4] == ZSTD_MAGIC, f"not a zstd frame: {batch.records[:8].hex()}"
        descriptor = batch.records[4]
        content_size_flag, single_segment = descriptor >> 6, (descriptor >> 5) & 1
        assert content_size_flag or single_segment, f"a zstd frame without its content size ({descriptor:#x})"


def test_request_larger_than_message_max_bytes_is_split(broker: Broker, make_ingester: MakeIngester) -> None:
    ingester = make_ingester({"kafka": {"producer": {"message.max.bytes": "100000"}}})
    specs = loghub_records("Hadoop", 3000) + loghub_records("Linux", 500)
    payload = otlp_protobuf(specs)
    assert len(payload) > 500_000, len(payload)
    assert grpc_export_raw(ingester.ports, payload) is None

    records = wait_records(broker, ingester.topic, len(specs))
    assert_well_formed(records)
    assert len(records) >= len(payload) // 100_000, f"{len(records)} records for {len(payload)} bytes"
    assert max(len(r.value) for r in records) <= 90_000
    ids = Counter(i for r in records for i in record_ids(r))
    assert ids == Counter(str(s.attributes["record.id"]) for s in specs), "every record exactly once"
    hadoop = [int(i.split(":")[1]) for r in records if r.key == "Hadoop" for i in record_ids(r)]
    assert hadoop == list(range(3000)), "split pieces keep the service's order"


def test_single_record_above_the_limit_is_a_partial_success(broker: Broker, make_ingester: MakeIngester) -> None:
    ingester = make_ingester({"kafka": {"producer": {"message.max.bytes": "100000"}}})
    small = loghub_records("Apache", 2, tag="small")
    big = LogSpec(body="x" * 150_000, service="Apache", time_ns=small[0].time_ns, observed_ns=small[0].observed_ns)
    response = post_logs(ingester.ports, otlp_protobuf([small[0], big, small[1]]), "application/x-protobuf")
    assert response.status_code == 200, response.content[:300]
    partial = ExportLogsServiceResponse.FromString(response.content).partial_success
    assert partial.rejected_log_records == 1
    assert "larger than the kafka message limit" in partial.error_message, partial.error_message
    records = wait_records(broker, ingester.topic, 2)
    assert sorted(b for r in records for b in bodies(r.request())) == sorted(str(s.body) for s in small)
    assert ingester.stats()["ingester"]["records_rejected"] == 1


def test_health_stats_flush_and_sigterm(broker: Broker, make_ingester: MakeIngester) -> None:
    ingester = make_ingester()
    for port in (ingester.ports.otlp_grpc, ingester.ports.admin_grpc):
        assert ingester.health(port) == "SERVING"
        assert ingester.health(port, "opentelemetry.proto.collector.logs.v1.LogsService") == "SERVING"
    assert "telemetry_lake.admin.v1.Admin" in ingester.reflection_services(ingester.ports.admin_grpc)

    specs = loghub_records("HDFS", 200)
    send(ingester.ports, specs, Transport.GRPC)
    stats = ingester.stats()
    assert stats["mode"] == "ingester"
    assert stats["serving"] is True and stats["not_serving_reasons"] == [], stats
    assert stats["buffer_records"] == 0, "an answered export is delivered, nothing stays in flight"
    # The ingester's own section only: no appender totals, no partitions.
    assert "ingester" in stats and "appender" not in stats, stats
    assert not {"totals", "partitions", "producer_queue_messages"} & set(stats), stats
    totals = stats["ingester"]
    assert totals["records_received"] == 200
    assert totals["records_accepted"] == 200
    assert totals["records_delivered"] == 200
    assert totals["bytes_delivered"] > 0
    assert totals["delivery_errors"] == 0
    assert totals["messages_delivered"] >= 1
    assert (totals["queue_full"], totals["producer_queue_messages"]) == (0, 0), totals

    assert ingester.flush_grpc().records == 0
    assert ingester.flush_http()["records"] == 0
    assert ingester.stats()["last_flush"]["outcome"] == "ok"
    assert ingester.stats()["ingester"]["flushes"] == 2
    metrics = ingester.metrics()
    assert 'ingester_kafka_records_delivered_total{signal="logs"} 200' in metrics, metrics
    assert 'ingester_kafka_records_delivered_total{signal="traces"} 0' in metrics, metrics
    assert "ingester_producer_queue_messages 0" in metrics

    assert ingester.stop() == 0
    assert "producer flushed" in ingester.log_text()
    assert "final producer flush incomplete" not in ingester.log_text()


def test_refuses_to_start_without_brokers(tmp_path: Path, broker: Broker) -> None:
    ingester = Ingester(tmp_path, broker, "unused", {"kafka": {"brokers": ""}})
    ingester.start()
    assert ingester.process is not None
    code = ingester.process.wait(timeout=30)
    assert code == 2
    assert 'kafka.brokers = "": the ingester needs at least one broker' in ingester.log_text()


def test_guarantee_settings_cannot_be_overridden(tmp_path: Path, broker: Broker) -> None:
    ingester = Ingester(tmp_path, broker, "unused", {"kafka": {"producer": {"acks": "1"}}})
    ingester.start()
    assert ingester.process is not None
    assert ingester.process.wait(timeout=30) == 2
    assert "kafka.producer.acks" in ingester.log_text()


def test_broker_outage_gives_retryable_errors_and_health_flips(
    tmp_path_factory: pytest.TempPathFactory, make_ingester: MakeIngester
) -> None:
    own = Broker(tmp_path_factory.mktemp("kafka-outage")).start_and_wait()
    try:
        ingester = make_ingester({"kafka": {"producer": {"message.timeout.ms": "8000"}}}, broker=own)
        before = loghub_records("Linux", 50, tag="before")
        send(ingester.ports, before, Transport.GRPC)

        own.stop()
        # An export racing the outage is answered within message.timeout.ms, retryably.
        started = time.monotonic()
        error = grpc_export_raw(ingester.ports, otlp_protobuf(loghub_records("Linux", 5, tag="race")))
        elapsed = time.monotonic() - started
        assert elapsed < 8 + 1 + 2, f"export held for {elapsed:.1f}s, past message.timeout.ms + 1 s"
        if error is not None:
            assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED), error

        for port in (ingester.ports.otlp_grpc, ingester.ports.admin_grpc):
            wait_until(
                lambda p=port: ingester.health(p) == "NOT_SERVING",
                timeout=20,
                interval=0.2,
                retry_errors=True,
                what=f"NOT_SERVING on {port}",
            )
            # Liveness is not readiness: no restart for an outage a restart cannot fix.
            assert ingester.health(port, "telemetry_lake.liveness") == "SERVING"
        with http_session() as session:
            assert session.get(f"{ingester.ports.admin_http_url}/readyz", timeout=5).status_code == 503

        started = time.monotonic()
        error = grpc_export_raw(ingester.ports, otlp_protobuf(loghub_records("Linux", 5, tag="down-grpc")))
        assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE, error
        info = retry_info(status_details(error))
        assert info is not None and info.retry_delay.seconds >= 1, status_details(error)
        down_http = otlp_protobuf(loghub_records("Linux", 5, tag="down-http"))
        response = post_logs(ingester.ports, down_http, "application/x-protobuf")
        assert response.status_code in (429, 503), response.status_code
        assert int(response.headers["Retry-After"]) >= 1
        assert time.monotonic() - started < 5, "a known outage is answered at once"
        assert ingester.stats()["serving"] is False

        own.start_and_wait()
        for port in (ingester.ports.otlp_grpc, ingester.ports.admin_grpc):
            wait_until(
                lambda p=port: ingester.health(p) == "SERVING",
                timeout=60,
                interval=0.2,
                retry_errors=True,
                what=f"SERVING again on {port}",
            )
        after = loghub_records("Linux", 50, tag="after")
        send(ingester.ports, after, Transport.HTTP_PROTOBUF)

        records = wait_records(own, ingester.topic, len(before) + len(after))
        ids = {i for r in records for i in record_ids(r)}
        acknowledged = {str(s.attributes["record.id"]) for s in before + after}
        assert acknowledged <= ids, f"acknowledged records missing: {sorted(acknowledged - ids)[:5]}"
        assert not any(i.startswith("down-") for i in ids), "a refused export must not land"
        assert ingester.stop() == 0
    finally:
        own.close()


def test_full_producer_queue_is_resource_exhausted(broker: Broker, make_ingester: MakeIngester) -> None:
    # A queue of one message that lingers: the second service's batch of a request finds it full.
    ingester = make_ingester({"kafka": {"producer": {"queue.buffering.max.messages": "1", "linger.ms": "3000"}}})
    two_services = otlp_protobuf(loghub_records("HDFS", 3, tag="q1") + loghub_records("Spark", 3, tag="q2"))
    error = grpc_export_raw(ingester.ports, two_services)
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    info = retry_info(status_details(error))
    assert info is not None, status_details(error)
    response = post_logs(ingester.ports, two_services, "application/x-protobuf")
    assert response.status_code == 429, response.status_code
    assert int(response.headers["Retry-After"]) >= 1
    assert "ingester_producer_queue_full_total 2" in ingester.metrics()
    rejected = ingester.stats()["ingester"]
    assert (rejected["records_rejected"], rejected["queue_full"]) == (12, 2), rejected


def test_starts_before_the_broker_and_creates_the_topic_when_it_comes(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    late = Broker(tmp_path / "kafka")
    ingester = Ingester(tmp_path / "ingester", late, "late-topic", {"kafka": {"partitions": 3}})
    request.node.stash[APPENDERS] = [ingester]  # type: ignore[assignment]
    try:
        ingester.start()
        wait_until(
            lambda: ingester.health(ingester.ports.otlp_grpc) == "NOT_SERVING",
            timeout=20,
            interval=0.2,
            retry_errors=True,
            what="NOT_SERVING",
        )
        response = post_logs(ingester.ports, otlp_protobuf(loghub_records("Spark", 3)), "application/x-protobuf")
        assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1

        late.start_and_wait()
        ingester.wait_ready(timeout=60)
        assert late.partitions("late-topic") == 3
        send(ingester.ports, loghub_records("Spark", 10), Transport.GRPC)
        assert ingester.stop() == 0
    finally:
        ingester.close()
        late.close()


def test_sigterm_drains_an_export_in_flight(broker: Broker, make_ingester: MakeIngester) -> None:
    # Lingering batches keep the export waiting for its delivery while SIGTERM arrives.
    ingester = make_ingester({"kafka": {"producer": {"linger.ms": "2000"}}})
    specs = loghub_records("OpenStack", 20, tag="drain")
    outcome: list[grpc.RpcError | None] = []
    sender = threading.Thread(target=lambda: outcome.append(grpc_export_raw(ingester.ports, otlp_protobuf(specs))))
    sender.start()
    wait_until(
        lambda: ingester.stats()["buffer_records"] == 20,
        timeout=10,
        interval=0.2,
        retry_errors=True,
        what="the export in flight",
    )
    started = time.monotonic()
    assert ingester.stop() == 0
    sender.join(timeout=30)
    assert outcome == [None], f"the export in flight failed: {outcome}"
    assert time.monotonic() - started < 10
    records = wait_records(broker, ingester.topic, 20)
    assert sorted(i for r in records for i in record_ids(r)) == sorted(str(s.attributes["record.id"]) for s in specs)
