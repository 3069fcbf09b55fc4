"""Traces and metrics through the ingester, on a real Kafka broker (issue 17, ingress).

    OTel Python SDK span / metric exporters (gRPC, HTTP) --> ingester --> otel-spans / otel-metrics
    telemetrygen traces / metrics --> ingester --> Kafka --> the Collector's kafka receiver

Each topic is read back with Kafka's own Java client and every value must parse as the signal's
OTLP export request with the Python protobuf runtime; the Collector's kafka receiver must decode
every record (its `otlp_proto` encoding). `[signals]` switches a signal off: UNIMPLEMENTED /
404 and no topic.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AGGREGATION_TEMPORALITY_CUMULATIVE,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ProtoResource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult, MetricsData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link

from harness.clients import GRPC_CHANNEL_OPTIONS, http_session
from harness.collector import COLLECTOR_CONFIGS, Collector, run_tool
from harness.kafka import Broker, Ingester, KafkaRecord
from harness.lake import APPENDERS
from harness.wait import wait_until

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
METRICS_EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"


class MakeIngester(Protocol):
    def __call__(self, config: dict[str, Any] | None = None) -> Ingester: ...


@pytest.fixture
def make_ingester(request: pytest.FixtureRequest, tmp_path: Path, broker: Broker) -> Iterator[MakeIngester]:
    """Ingesters on topics of the test's own, started and ready; closed by conftest.py."""
    created: list[Any] = request.node.stash.setdefault(APPENDERS, [])
    # Unique per test and parameter (a parameter at the end of a long name would be cut off).
    name = request.node.name
    base = (
        "sig-" + re.sub(r"[^a-zA-Z0-9]+", "-", name).strip("-")[:50] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    )

    def make(config: dict[str, Any] | None = None) -> Ingester:
        ingester = Ingester(tmp_path / f"ingester-{len(created)}", broker, f"{base}-{len(created)}", config)
        created.append(ingester)
        ingester.start_and_wait(timeout=60)
        return ingester

    yield make


# ---- what the SDK sends -------------------------------------------------------------------------


def sdk_spans(service: str, n: int) -> list[ReadableSpan]:
    """`n` finished spans of `service` (parents with a child each, events, a link, attributes)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service, "host.name": "node-1"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("signals-test", "1.2.3")
    previous = None
    for i in range(n // 2):
        links = [Link(previous.get_span_context(), {"link.n": i})] if previous is not None else []
        with tracer.start_as_current_span(f"{service} parent {i}", links=links, attributes={"i": i}) as parent:
            parent.add_event("started", {"attempt": i, "ok": True})
            with tracer.start_as_current_span(f"{service} child {i}") as child:
                child.set_attribute("http.status_code", 200 + i % 3)
        previous = parent
    provider.shutdown()
    return list(memory.get_finished_spans())


def sdk_metrics(service: str) -> MetricsData:
    """One collection of a counter, an up-down counter, a histogram and a gauge of `service`."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=Resource.create({"service.name": service}), metric_readers=[reader])
    meter = provider.get_meter("signals-test", "1.2.3")
    requests = meter.create_counter("requests", unit="1", description="requests served")
    in_flight = meter.create_up_down_counter("in_flight")
    latency = meter.create_histogram("latency", unit="ms")
    temperature = meter.create_gauge("temperature", unit="Cel")
    for i in range(20):
        route = {"route": f"/r{i % 4}"}
        requests.add(1 + i, route)
        in_flight.add(1 if i % 2 else -1, route)
        latency.record(0.5 * i, route)
        temperature.set(20.0 + i, {"room": f"r{i % 2}"})
    data = reader.get_metrics_data()
    provider.shutdown()
    assert data is not None
    return data


def export_spans(ingester: Ingester, spans: list[ReadableSpan], *, http: bool) -> None:
    exporter = (
        HttpSpanExporter(endpoint=f"http://127.0.0.1:{ingester.ports.otlp_http}/v1/traces", timeout=30)
        if http
        else GrpcSpanExporter(endpoint=ingester.ports.otlp_grpc_target, insecure=True, timeout=30)
    )
    try:
        assert exporter.export(spans) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()


def export_metrics(ingester: Ingester, data: MetricsData, *, http: bool) -> None:
    exporter = (
        HttpMetricExporter(endpoint=f"http://127.0.0.1:{ingester.ports.otlp_http}/v1/metrics", timeout=30)
        if http
        else GrpcMetricExporter(endpoint=ingester.ports.otlp_grpc_target, insecure=True, timeout=30)
    )
    try:
        assert exporter.export(data) == MetricExportResult.SUCCESS
    finally:
        exporter.shutdown()


# ---- what the topics hold -----------------------------------------------------------------------


def service_of(resource: ProtoResource) -> str:
    return next((a.value.string_value for a in resource.attributes if a.key == "service.name"), "unknown_service")


def spans_by_id(requests: list[ExportTraceServiceRequest]) -> dict[bytes, tuple[str, Span]]:
    """span_id -> (service.name, span) of every span; a span seen twice fails."""
    out: dict[bytes, tuple[str, Span]] = {}
    for request in requests:
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    assert span.span_id not in out, f"span {span.span_id.hex()} twice"
                    out[span.span_id] = (service_of(resource_spans.resource), span)
    return out


def data_points(requests: list[ExportMetricsServiceRequest]) -> dict[tuple[str, str], list[Any]]:
    """(service.name, metric name) -> every data point, in order."""
    out: dict[tuple[str, str], list[Any]] = {}
    for request in requests:
        for resource_metrics in request.resource_metrics:
            service = service_of(resource_metrics.resource)
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    points = getattr(metric, metric.WhichOneof("data")).data_points
                    out.setdefault((service, metric.name), []).extend(points)
    return out


def assert_keyed_and_labelled(records: list[KafkaRecord], schema: str, services: Any) -> None:
    """Headers as documented, the key the one service.name of the value's resources."""
    assert records, "no record on the topic"
    for record in records:
        assert record.headers == {"content-type": "application/x-protobuf", "telemetry-lake-schema": schema}
        assert {service_of(r.resource) for r in services(record)} == {record.key}


@pytest.mark.parametrize("http", [False, True], ids=["grpc", "http"])
def test_sdk_spans_and_metrics_land_on_their_own_topics(
    http: bool, broker: Broker, make_ingester: MakeIngester
) -> None:
    ingester = make_ingester()
    spans = sdk_spans("checkout", 40) + sdk_spans("payments", 20)
    metrics = sdk_metrics("checkout")
    export_spans(ingester, spans, http=http)
    export_metrics(ingester, metrics, http=http)

    assert broker.partitions(ingester.traces_topic) == 4
    assert broker.partitions(ingester.metrics_topic) == 4
    span_records = broker.records(ingester.traces_topic)
    assert_keyed_and_labelled(span_records, "otlp-traces-v1", lambda r: r.traces().resource_spans)
    got = spans_by_id([r.traces() for r in span_records])
    wanted = spans_by_id([encode_spans(spans)])
    assert sorted(got) == sorted(wanted)
    for span_id, (service, span) in wanted.items():
        assert got[span_id] == (service, span), f"span {span.name}: {got[span_id][1]} != {span}"
    assert any(span.links and span.events for _, span in got.values()), "links and events travel"

    metric_records = broker.records(ingester.metrics_topic)
    assert_keyed_and_labelled(metric_records, "otlp-metrics-v1", lambda r: r.metrics().resource_metrics)
    got_points = data_points([r.metrics() for r in metric_records])
    assert got_points == data_points([encode_metrics(metrics)])
    assert {name for _, name in got_points} == {"requests", "in_flight", "latency", "temperature"}

    assert broker.records(ingester.topic) == [], "no span or point on the logs topic"
    points = sum(map(len, got_points.values()))
    stats = ingester.stats()["ingester"]
    assert stats["records_accepted"] == len(spans) + points
    per_signal = {s["signal"]: (s["received"], s["accepted"], s["rejected"], s["delivered"]) for s in stats["signals"]}
    assert per_signal == {
        "logs": (0, 0, 0, 0),
        "traces": (len(spans),) * 2 + (0, len(spans)),
        "metrics": (points,) * 2 + (0, points),
    }


def grpc_call(ingester: Ingester, method: str, payload: bytes) -> tuple[grpc.StatusCode, bytes]:
    with grpc.insecure_channel(ingester.ports.otlp_grpc_target, options=GRPC_CHANNEL_OPTIONS) as channel:
        try:
            return grpc.StatusCode.OK, channel.unary_unary(method)(payload, timeout=30)
        except grpc.RpcError as error:
            return error.code(), b""


def post(ingester: Ingester, path: str, body: bytes, content_type: str = "application/x-protobuf") -> Any:
    with http_session() as session:
        return session.post(
            f"http://127.0.0.1:{ingester.ports.otlp_http}{path}",
            data=body,
            headers={"Content-Type": content_type},
            timeout=30,
        )


def test_a_switched_off_signal_is_unimplemented_and_gets_no_topic(broker: Broker, make_ingester: MakeIngester) -> None:
    ingester = make_ingester({"signals": {"traces": False}})
    spans = encode_spans(sdk_spans("checkout", 4)).SerializeToString()
    assert grpc_call(ingester, TRACE_EXPORT, spans)[0] == grpc.StatusCode.UNIMPLEMENTED
    assert post(ingester, "/v1/traces", spans).status_code == 404
    assert broker.partitions(ingester.traces_topic) == -1, "no topic for a signal switched off"
    # The others are untouched.
    metrics = encode_metrics(sdk_metrics("checkout")).SerializeToString()
    assert grpc_call(ingester, METRICS_EXPORT, metrics)[0] == grpc.StatusCode.OK
    assert broker.partitions(ingester.metrics_topic) == 4


def string_attribute(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def spans_request(service: str, spans: list[Span]) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=ProtoResource(attributes=[string_attribute("service.name", service)]),
                scope_spans=[ScopeSpans(spans=spans)],
            )
        ]
    )


def test_bad_spans_get_a_clear_error_and_change_nothing_else(broker: Broker, make_ingester: MakeIngester) -> None:
    ingester = make_ingester()
    good = Span(trace_id=bytes(range(16)), span_id=bytes(range(8)), name="good")
    bad = Span(trace_id=b"\x01\x02\x03", span_id=bytes(range(1, 9)), name="bad")
    response = post(ingester, "/v1/traces", spans_request("checkout", [good, bad]).SerializeToString())
    assert response.status_code == 200, response.text
    partial = ExportTraceServiceResponse.FromString(response.content).partial_success
    assert (partial.rejected_spans, partial.error_message) == (1, "trace_id must be 16 bytes, got 3")

    # Not protobuf at all: 400 with a google.rpc.Status, retried by no client.
    response = post(ingester, "/v1/traces", b"\x0a\x03\xff\xff\xff")
    assert response.status_code == 400
    assert grpc_call(ingester, TRACE_EXPORT, b"\x0a\x03\xff\xff\xff")[0] == grpc.StatusCode.INVALID_ARGUMENT
    response = post(ingester, "/v1/metrics", b"{not json", "application/json")
    assert response.status_code == 400 and "otlp/json" in response.json()["message"], response.text

    names = [span.name for record in broker.records(ingester.traces_topic) for span in spans_of(record)]
    assert names == ["good"]


def spans_of(record: KafkaRecord) -> list[Span]:
    return [span for r in record.traces().resource_spans for s in r.scope_spans for span in s.spans]


def test_a_large_trace_request_is_split_under_the_message_limit(broker: Broker, make_ingester: MakeIngester) -> None:
    """2 MB of spans of one service under a 100 kB message limit: every span, each record within
    the budget, one partition, the spans in the order sent."""
    ingester = make_ingester({"kafka": {"producer": {"message.max.bytes": "100000"}}})
    spans = [
        Span(
            trace_id=i.to_bytes(16, "big"),
            span_id=(i + 1).to_bytes(8, "big"),
            name=f"span {i:05d}",
            attributes=[string_attribute("payload", "x" * 400)],
        )
        for i in range(4000)
    ]
    status, _ = grpc_call(ingester, TRACE_EXPORT, spans_request("bulk", spans).SerializeToString())
    assert status == grpc.StatusCode.OK
    records = broker.records(ingester.traces_topic)
    assert len(records) > 10, "2 MB under a 90 kB budget"
    assert all(len(r.value) <= 90_000 for r in records), max(len(r.value) for r in records)
    assert {r.partition for r in records} == {records[0].partition}
    assert [span.name for r in records for span in spans_of(r)] == [f"span {i:05d}" for i in range(4000)]


def test_a_metric_larger_than_the_message_limit_is_cut_along_its_points(
    broker: Broker, make_ingester: MakeIngester
) -> None:
    """One sum of 4000 points (2 MB) under a 100 kB limit: every point once, in order, each
    piece the same metric (name, unit, temporality)."""
    ingester = make_ingester({"kafka": {"producer": {"message.max.bytes": "100000"}}})
    points = [
        NumberDataPoint(time_unix_nano=i, as_int=i, attributes=[string_attribute("payload", "x" * 400)])
        for i in range(4000)
    ]
    metric = Metric(
        name="bytes_sent",
        unit="By",
        sum=Sum(data_points=points, aggregation_temporality=AGGREGATION_TEMPORALITY_CUMULATIVE, is_monotonic=True),
    )
    request = ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(
                resource=ProtoResource(attributes=[string_attribute("service.name", "bulk")]),
                scope_metrics=[ScopeMetrics(metrics=[metric])],
            )
        ]
    )
    status, _ = grpc_call(ingester, METRICS_EXPORT, request.SerializeToString())
    assert status == grpc.StatusCode.OK
    records = broker.records(ingester.metrics_topic)
    assert len(records) > 10, "2 MB under a 90 kB budget"
    assert all(len(r.value) <= 90_000 for r in records), max(len(r.value) for r in records)
    pieces = [m for r in records for rm in r.metrics().resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
    assert {(m.name, m.unit, m.sum.aggregation_temporality, m.sum.is_monotonic) for m in pieces} == {
        ("bytes_sent", "By", AGGREGATION_TEMPORALITY_CUMULATIVE, True)
    }
    assert [p.as_int for m in pieces for p in m.sum.data_points] == list(range(4000))


def collector_reading(broker: Broker, ingester: Ingester, out: Path) -> dict[str, Any]:
    """A Collector config: kafka receivers on the ingester's traces and metrics topics, file
    exporters into `out`."""
    receiver = {"brokers": [broker.bootstrap], "group_id": f"{ingester.topic}-collector", "initial_offset": "earliest"}
    return {
        "receivers": {
            "kafka": {
                **receiver,
                "traces": {"topics": [ingester.traces_topic], "encoding": "otlp_proto"},
                "metrics": {"topics": [ingester.metrics_topic], "encoding": "otlp_proto"},
            }
        },
        "exporters": {
            "file/traces": {"path": str(out / "traces.json"), "flush_interval": "100ms"},
            "file/metrics": {"path": str(out / "metrics.json"), "flush_interval": "100ms"},
        },
        "service": {
            "pipelines": {
                "traces": {"receivers": ["kafka"], "exporters": ["file/traces"]},
                "metrics": {"receivers": ["kafka"], "exporters": ["file/metrics"]},
            }
        },
    }


@pytest.mark.parametrize("http", [False, True], ids=["grpc", "http"])
def test_telemetrygen_traces_and_metrics_reach_the_collector_s_kafka_receiver(
    http: bool, broker: Broker, tmp_path: Path, make_ingester: MakeIngester, request: pytest.FixtureRequest
) -> None:
    ingester = make_ingester()
    target = f"127.0.0.1:{ingester.ports.otlp_http if http else ingester.ports.otlp_grpc}"
    common = ["--otlp-insecure", "--otlp-endpoint", target, "--workers", "1", "--rate", "0"]
    common += ["--otlp-http"] if http else []
    traces, points = 150, 200
    run_tool("telemetrygen", "traces", *common, "--traces", str(traces), "--service", "gen", timeout=120, check=True)
    for metric_type in ("Sum", "Histogram"):
        run_tool(
            "telemetrygen", "metrics", *common, "--metrics", str(points // 2), "--metric-type", metric_type,
            timeout=120, check=True,
        )  # fmt: skip
    spans = 2 * traces  # a parent and one child span each
    assert ingester.stats()["ingester"]["records_accepted"] == spans + points

    out = tmp_path / "collector-out"
    out.mkdir()
    collector = Collector(tmp_path / "collector", collector_reading(broker, ingester, out), otlp_receiver=False)
    request.node.stash[APPENDERS].append(collector)
    collector.start_and_wait()
    wait_until(
        lambda: (
            (
                collector.metric_sum("otelcol_exporter_sent_spans"),
                collector.metric_sum("otelcol_exporter_sent_metric_points"),
            )
            == (spans, points)
        ),
        timeout=60,
        what=f"{spans} spans and {points} data points through the Collector's kafka receiver",
        interval=0.5,
    )
    assert collector.metric_sum("otelcol_receiver_refused_spans") == 0
    assert collector.running


def topic_counts(broker: Broker, ingester: Ingester) -> tuple[int, int]:
    """Spans on the traces topic, data points on the metrics topic."""
    spans = sum(len(spans_of(r)) for r in broker.records(ingester.traces_topic))
    points = sum(map(len, data_points([r.metrics() for r in broker.records(ingester.metrics_topic)]).values()))
    return spans, points


@pytest.mark.parametrize("http", [False, True], ids=["grpc", "http"])
def test_a_collector_in_front_forwards_traces_and_metrics(
    http: bool, broker: Broker, tmp_path: Path, make_ingester: MakeIngester, request: pytest.FixtureRequest
) -> None:
    """The README's copy-paste Collector configs (otlp receiver -> batch -> otlp_grpc /
    otlp_http exporter) forward telemetrygen's traces and metrics to the ingester."""
    ingester = make_ingester()
    if http:
        config = COLLECTOR_CONFIGS / "otlp-http-to-ingester.yaml"
        overrides = {"exporters.otlp_http.endpoint": f"http://127.0.0.1:{ingester.ports.otlp_http}"}
    else:
        config = COLLECTOR_CONFIGS / "otlp-grpc-to-ingester.yaml"
        overrides = {"exporters.otlp_grpc.endpoint": ingester.ports.otlp_grpc_target}
    collector = Collector(tmp_path / "collector", config, overrides)
    request.node.stash[APPENDERS].append(collector)
    collector.start_and_wait()
    target = ["--otlp-insecure", "--otlp-endpoint", collector.ports.otlp_grpc_target, "--rate", "0"]
    run_tool("telemetrygen", "traces", *target, "--traces", "100", "--service", "front", timeout=120, check=True)
    run_tool(
        "telemetrygen", "metrics", *target, "--metrics", "120", "--metric-type", "Histogram", timeout=120, check=True
    )
    wait_until(
        lambda: topic_counts(broker, ingester) == (200, 120),
        timeout=60,
        what="200 spans and 120 data points on the ingester's topics",
        interval=1,
    )
    assert collector.metric_sum("otelcol_exporter_send_failed_spans") == 0
    assert collector.metric_sum("otelcol_exporter_send_failed_metric_points") == 0
