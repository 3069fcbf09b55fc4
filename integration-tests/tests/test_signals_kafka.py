"""Traces and metrics through Kafka: the appender in Kafka mode on a real broker.

    OTel Python SDK span / metric exporters --> ingester --> <topic>-spans   --> appender --> default.traces
    hand-built OTLP requests                                 <topic>-metrics             default.metrics_*
    telemetrygen --> Collector (kafka exporter, otlp_proto) --^      (one consumer group, exactly once per table)

Every span and data point the SDK sent lands once, column for column (as in embedded mode,
test_signals_appender.py), at the Kafka partition and offset of the record that carried it;
each table's snapshots name its signal's topic, the topic id, the cluster id and the next
offsets. Exactly once through `kill -9` and through a rebalance of two appenders while spans and
points flow; malformed spans and points dead-lettered alone (a garbage record whole); the
Collector's kafka exporter feeding the appender with no ingester; a restart with nothing new to
read commits nothing and reads nothing (the tables, not the group, say where to start).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import requests
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import Exemplar, Gauge, Metric, NumberDataPoint
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.table.snapshots import Snapshot

from harness.collector import COLLECTOR_CONFIGS, Collector, run_tool
from harness.config import merge_config
from harness.kafka import Broker, Ingester, KafkaRecord
from harness.lake import APPENDERS, Appender, AppenderFactory
from harness.wait import wait_until
from test_appender_kafka import kafka_config
from test_signals_appender import (
    BASE_NS,
    EXEMPLAR_TRACE_ID,
    SIGNAL_TABLES,
    TELEMETRYGEN_TYPES,
    Row,
    assert_rows,
    export_metrics,
    export_request,
    export_spans,
    key_values,
    load_signal_table,
    metric_rows,
    metrics_request,
    numbered_id,
    numbered_points,
    numbered_spans,
    once_differences,
    point_metric,
    proto_span,
    same_point,
    same_span,
    sdk_metrics,
    sdk_spans,
    span_rows,
    spans_and_points_committed,
    spans_request,
    summary_and_exemplar_request,
    telemetrygen_args,
    wait_collector_sent,
)

METRICS_TABLES = SIGNAL_TABLES[1:]
TOPIC = "telemetry-lake.kafka.topic"
TOPIC_ID = "telemetry-lake.kafka.topic-id"
CLUSTER_ID = "telemetry-lake.kafka.cluster-id"
OFFSETS = "telemetry-lake.kafka.offsets"
PARTITIONS = 4
# Services spread the ingester's records over the partitions (it keys them by service.name).
SERVICES = ("checkout", "cart", "auth", "payments", "search", "shipping")


def signals_config(broker: Broker, topic: str, lake: Path, **flush: Any) -> dict[str, dict[str, Any]]:
    """An appender of the group consuming `topic`, `topic`-spans and `topic`-metrics (the
    harness names the last two), on the lake under `lake`, with four partitions per topic when
    it creates them (as the ingester of the `ingester` fixture does)."""
    return merge_config(kafka_config(broker, topic, lake, **flush), {"kafka": {"partitions": PARTITIONS}})


# A member killed with -9 holds its partitions until the group gives up on it: in 6 s (the
# broker's minimum), not librdkafka's default 45 s.
QUICK_GROUP = {"kafka": {"consumer": {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}}}


def flush_in_background(appender: Appender) -> None:
    """Asks for a flush without waiting for the answer (the appender may be killed meanwhile)."""

    def flush() -> None:
        with contextlib.suppress(requests.RequestException):
            appender.http("POST", "/flush")

    threading.Thread(target=flush, daemon=True).start()


def topics_of(appender: Appender) -> dict[str, str]:
    """The appender's topic of each signal."""
    kafka = appender.config["kafka"]
    return {"logs": kafka["topic"], "traces": kafka["traces_topic"], "metrics": kafka["metrics_topic"]}


def topic_of_table(appender: Appender, table: str) -> str:
    return topics_of(appender)["traces" if table == "traces" else "metrics"]


# ---- reading the lake and the appender ------------------------------------------------------------


def row_count(appender: Appender, table: str) -> int:
    try:
        return load_signal_table(appender, table).scan(selected_fields=("kafka_offset",)).to_arrow().num_rows
    except NoSuchTableError:
        return 0


def row_counts(appender: Appender) -> dict[str, int]:
    return {table: row_count(appender, table) for table in SIGNAL_TABLES}


def drain(appender: Appender, expected: Mapping[str, int], timeout: float = 120) -> None:
    """Flushes until every table of `expected` holds at least that many rows."""

    def landed() -> bool:
        appender.flush_http()
        counts = row_counts(appender)
        return all(counts[table] >= n for table, n in expected.items())

    wait_until(landed, timeout=timeout, what=f"rows in the tables: {dict(expected)}", interval=1.0)


def partition_stats(appender: Appender) -> list[dict[str, Any]]:
    return list(appender.stats()["appender"]["partitions"])


def owned(appender: Appender) -> set[tuple[str, int]]:
    """(topic, partition) of every partition assigned to the appender, all topics."""
    return {(p["topic"], p["partition"]) for p in partition_stats(appender)}


def every_partition(appender: Appender) -> set[tuple[str, int]]:
    return {(topic, p) for topic in topics_of(appender).values() for p in range(PARTITIONS)}


def caught_up(appender: Appender) -> list[dict[str, Any]] | None:
    """Stats' partitions when every partition of the three topics is assigned and the tables
    hold each up to its end (lag 0); None otherwise."""
    stats = partition_stats(appender)
    listed = {(p["topic"], p["partition"]) for p in stats}
    if listed != every_partition(appender) or any(p["lag"] != 0 or p["high_watermark"] < 0 for p in stats):
        return None
    return stats


def kafka_properties(snapshot: Snapshot | None) -> dict[str, str]:
    assert snapshot is not None and snapshot.summary is not None, "no snapshot"
    return {k: v for k, v in snapshot.summary.additional_properties.items() if k.startswith("telemetry-lake.kafka.")}


def high_watermarks(records: Iterable[KafkaRecord]) -> dict[int, int]:
    """The next offset of each partition holding `records` (a topic written without
    transactions: its offsets have no gaps)."""
    ends: dict[int, int] = {}
    for record in records:
        ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
    return ends


class TopicEnds:
    """What the broker says of the appender's topics (asked once each: every question starts
    a JVM): a topic's id and the next offset of each of its partitions holding records."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.known: dict[str, tuple[str, dict[int, int]]] = {}

    def __call__(self, topic: str) -> tuple[str, dict[int, int]]:
        if topic not in self.known:
            self.known[topic] = (self.broker.topic_id(topic), high_watermarks(self.broker.records(topic)))
        return self.known[topic]


def assert_offsets_recorded(appender: Appender, ends_of: TopicEnds, table: str) -> None:
    """The table's latest snapshot and its properties name its signal's topic (id and cluster
    too) and hold the next offset of every partition: the end of each."""
    topic = topic_of_table(appender, table)
    topic_id, ends = ends_of(topic)
    lake_table = load_signal_table(appender, table)
    recorded = kafka_properties(lake_table.current_snapshot())
    assert recorded.get(TOPIC) == topic, f"{table}: latest snapshot names {recorded}"
    assert recorded.get(TOPIC_ID) == topic_id, f"{table}: {recorded}"
    assert recorded.get(CLUSTER_ID), f"{table}: no cluster id in {recorded}"
    offsets = {int(p): n for p, n in json.loads(recorded[OFFSETS]).items()}
    assert ends, f"nothing on {topic}"
    wrong = {p: (offsets.get(p, 0), end) for p, end in ends.items() if offsets.get(p, 0) != end}
    beyond = {p: n for p, n in offsets.items() if p not in ends and n != 0}
    assert not wrong and not beyond, f"{table}: offsets {offsets}, the topic's ends {ends}"
    properties = {k: v for k, v in lake_table.properties.items() if k.startswith("telemetry-lake.kafka.")}
    assert properties.get(TOPIC) == topic and json.loads(properties[OFFSETS]) == json.loads(recorded[OFFSETS]), (
        f"{table}: table properties {properties}, latest snapshot {recorded}"
    )


# ---- where each item travelled ------------------------------------------------------------------


def attributes_key(row: Row) -> str:
    return json.dumps(sorted(dict(row["attributes"]).items()), default=str)


def point_key(row: Row) -> tuple[str, str, str]:
    return (row["service_name"], row["metric_name"], attributes_key(row))


def same_service_point(row: Row, want: Row) -> bool:
    """The same point of the same service (the SDK's points of two services share names and
    attributes)."""
    return bool(row["service_name"] == want["service_name"] and same_point(row, want))


def with_positions(rows: list[Row], positions: Mapping[Any, tuple[int, int]], key: Callable[[Row], Any]) -> list[Row]:
    """`rows` (what embedded mode writes) with the partition and offset of the Kafka record
    that carried each (looked up by `key`)."""
    out = []
    for row in rows:
        assert key(row) in positions, f"{key(row)} is on no Kafka record"
        partition, offset = positions[key(row)]
        out.append({**row, "kafka_partition": partition, "kafka_offset": offset})
    return out


def span_positions(records: list[KafkaRecord]) -> dict[str, tuple[int, int]]:
    """span id (hex) -> (partition, offset) of the record carrying it; a span twice fails."""
    out: dict[str, tuple[int, int]] = {}
    for record in records:
        for row in span_rows(record.traces()):
            assert row["span_id"] not in out, f"span {row['span_id']} on the topic twice"
            out[row["span_id"]] = (record.partition, record.offset)
    return out


def point_positions(records: list[KafkaRecord]) -> dict[tuple[str, str, str], tuple[int, int]]:
    """(service, metric, attributes) -> (partition, offset) of the record carrying the point."""
    out: dict[tuple[str, str, str], tuple[int, int]] = {}
    for record in records:
        for rows in metric_rows(record.metrics()).values():
            for row in rows:
                assert point_key(row) not in out, f"point {point_key(row)} on the topic twice"
                out[point_key(row)] = (record.partition, record.offset)
    return out


# ---- numbered spans and points, to count --------------------------------------------------------


class SignalSender:
    """Sends numbered spans and data points to the ingester, alternately over gRPC and HTTP,
    until stopped; keeps the ids of what the ingester acknowledged."""

    def __init__(self, ingester: Ingester, spans: int = 60, points_per_type: int = 10, pause: float = 0.02) -> None:
        self.ingester = ingester
        self.spans, self.points_per_type, self.pause = spans, points_per_type, pause
        self.span_ids: list[str] = []
        self.point_ids: dict[str, list[str]] = {table: [] for table in METRICS_TABLES}
        self.exports = 0
        self.error: BaseException | None = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, name="signal-sender", daemon=True)
        self.thread.start()

    def run(self) -> None:
        i = 0
        try:
            while not self.stopped.is_set():
                service = SERVICES[i % len(SERVICES)]
                request, span_ids = numbered_spans(i * self.spans, self.spans, service)
                export_request(self.ingester, "traces", request, http=i % 2 == 1)
                self.span_ids += span_ids
                points, ids = numbered_points(i * self.points_per_type, self.points_per_type, service)
                export_request(self.ingester, "metrics", points, http=i % 2 == 0)
                for table, names in ids.items():
                    self.point_ids[table] += names
                self.exports += 1
                i += 1
                time.sleep(self.pause)
        except BaseException as error:  # noqa: BLE001 - reported by `stop`
            self.error = error

    def wait_for(self, exports: int, timeout: float = 60) -> None:
        """Waits until `exports` more span and metric exports were acknowledged."""
        target = self.exports + exports
        wait_until(lambda: self.error or self.exports >= target, timeout=timeout, what=f"{exports} more exports")
        assert self.error is None, f"the sender failed: {self.error!r}"

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the sender did not stop"
        assert self.error is None, f"the sender failed: {self.error!r}"

    def expected(self) -> dict[str, int]:
        return {"traces": len(self.span_ids), **{table: len(ids) for table, ids in self.point_ids.items()}}


def landed_ids(appender: Appender, table: str) -> tuple[list[str], int]:
    """The span ids (traces) or `point.id` attributes (metrics tables) of the table's rows, and
    how many rows have no Kafka partition or offset."""
    column = "span_id" if table == "traces" else "attributes"
    rows = (
        load_signal_table(appender, table)
        .scan(selected_fields=(column, "kafka_partition", "kafka_offset"))
        .to_arrow()
        .to_pylist()
    )
    ids = [numbered_id(row, table) for row in rows]
    unplaced = sum(row["kafka_partition"] is None or row["kafka_offset"] is None for row in rows)
    return ids, unplaced


def once_problems(appender: Appender, sender: SignalSender) -> list[str]:
    """How the tables differ from "every acknowledged span and point exactly once"."""
    problems = []
    wanted = {"traces": sender.span_ids, **sender.point_ids}
    for table, sent in wanted.items():
        ids, unplaced = landed_ids(appender, table)
        doubled, missing, unexpected = once_differences(ids, sent)
        if doubled or missing or unexpected or unplaced or len(ids) != len(sent):
            problems.append(
                f"{table}: {len(ids)} rows for {len(sent)} sent; {len(doubled)} twice or more (e.g. {doubled[:3]}), "
                f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} never sent (e.g. {unexpected[:3]}), "
                f"{unplaced} without a Kafka position"
            )
    return problems


# ---- 1. SDK -> ingester -> Kafka -> appender --------------------------------------------------------


def test_sdk_spans_and_points_land_once_at_their_kafka_positions(
    make_appender: AppenderFactory, broker: Broker, ingester: Ingester, topic: str, tmp_path: Path
) -> None:
    appender = make_appender(signals_config(broker, topic, tmp_path / "lake"))
    assert appender.stats()["mode"] == "kafka"
    spans = sdk_spans("checkout") + sdk_spans("payments")
    data = [sdk_metrics("checkout")[0], sdk_metrics("payments")[0]]
    handmade = summary_and_exemplar_request()
    export_spans(ingester.ports, spans, http=False)
    export_metrics(ingester.ports, data[0], http=False)
    export_metrics(ingester.ports, data[1], http=True)
    export_request(ingester, "metrics", handmade, http=False)

    span_records = broker.records(ingester.traces_topic)
    metric_records = broker.records(ingester.metrics_topic)
    expected_spans = with_positions(
        span_rows(encode_spans(spans)), span_positions(span_records), lambda r: r["span_id"]
    )
    points = point_positions(metric_records)
    expected_points = {
        table: with_positions(rows, points, point_key)
        for table, rows in metric_rows(encode_metrics(data[0]), encode_metrics(data[1]), handmade).items()
    }
    assert all(expected_points.values()), {table: len(rows) for table, rows in expected_points.items()}
    drain(appender, {"traces": len(expected_spans), **{t: len(rows) for t, rows in expected_points.items()}})

    assert_rows(appender, "traces", expected_spans, same_span)
    for table, rows in expected_points.items():
        assert_rows(appender, table, rows, same_service_point)
    used = {row["kafka_partition"] for row in expected_spans}
    assert len(used) > 1, f"the two services' spans all on partition {used}: offsets of one partition checked"

    ends_of = TopicEnds(broker)
    for table in SIGNAL_TABLES:
        assert_offsets_recorded(appender, ends_of, table)
    stats = wait_until(lambda: caught_up(appender), timeout=30, what="every partition of the three topics at lag 0")
    assert {p["topic"] for p in stats} == set(topics_of(appender).values()), stats
    appender_stats = appender.stats()["appender"]
    assert appender_stats["dead_lettered"] == 0, appender_stats
    points_sent = sum(map(len, expected_points.values()))
    committed = appender.committed_per_signal()
    assert committed == {"logs": 0, "traces": len(expected_spans), "metrics": points_sent}, appender_stats


# ---- 2. kill -9 while spans and points flow -----------------------------------------------------------


@pytest.mark.timeout(600)
def test_kill9_and_restarts_while_spans_and_points_flow_keep_each_once(
    make_appender: AppenderFactory, broker: Broker, ingester: Ingester, topic: str, tmp_path: Path
) -> None:
    config = merge_config(
        signals_config(broker, topic, tmp_path / "lake", interval="2s", max_records=5_000), QUICK_GROUP
    )
    appender = make_appender(config)
    sender = SignalSender(ingester)
    try:
        # After commits of this process (the restart must start from the tables' offsets) ...
        wait_until(
            lambda: spans_and_points_committed(appender),
            timeout=60,
            what="spans and points committed",
            interval=0.5,
        )
        appender.kill9()
        appender.start_and_wait()
        # ... as soon as it reads again (what came meanwhile), before it commits ...
        wait_until(
            lambda: appender.stats()["appender"]["kafka_messages"] > 0, timeout=60, what="messages read", interval=0.2
        )
        appender.kill9()
        appender.start_and_wait()
        # ... and during a commit: a flush asked for and a kill while it runs.
        wait_until(lambda: appender.committed_per_signal()["traces"] > 0, timeout=60, what="a commit after the restart")
        sender.wait_for(5)
        flush_in_background(appender)
        time.sleep(0.05)
        appender.kill9()
        appender.start_and_wait()
        sender.wait_for(10)
    finally:
        sender.stop()
    assert sender.exports >= 20, f"{sender.exports} exports while the appender was killed 3 times"
    drain(appender, sender.expected(), timeout=240)
    wait_until(lambda: caught_up(appender), timeout=60, what="every partition at lag 0")
    appender.flush_http()
    problems = once_problems(appender, sender)
    assert not problems, "spans or points lost or doubled:\n  " + "\n  ".join(problems)


# ---- 3. two appenders in one group ----------------------------------------------------------------


@pytest.mark.timeout(420)
def test_two_appenders_in_one_group_rebalance_spans_and_points_without_doubles(
    make_appender: AppenderFactory, broker: Broker, ingester: Ingester, topic: str, tmp_path: Path
) -> None:
    config = signals_config(broker, topic, tmp_path / "lake", interval="2s")
    first = make_appender(config)
    sender = SignalSender(ingester)
    try:
        wait_until(
            lambda: spans_and_points_committed(first),
            timeout=60,
            what="the first appender committing spans and points",
            interval=0.5,
        )
        second = make_appender(config)
        wait_until(
            lambda: (owned(first) | owned(second)) == every_partition(first) and owned(first) and owned(second),
            timeout=60,
            what="the partitions of the three topics shared by both appenders",
            interval=0.5,
        )
        assert not owned(first) & owned(second), "a partition assigned to both"
        wait_until(
            lambda: (
                first.committed_per_signal()["traces"] + first.committed_per_signal()["metrics"] > 0
                and second.committed_per_signal()["traces"] + second.committed_per_signal()["metrics"] > 0
            ),
            timeout=60,
            what="both appenders committing spans or points to the shared tables",
            interval=0.5,
        )
        sender.wait_for(20)
        assert first.stop() == 0
        wait_until(
            lambda: owned(second) == every_partition(second),
            timeout=60,
            what="every partition with the second appender",
            interval=0.5,
        )
        sender.wait_for(20)
    finally:
        sender.stop()
    drain(second, sender.expected(), timeout=180)
    wait_until(lambda: caught_up(second), timeout=60, what="every partition at lag 0")
    second.flush_http()
    problems = once_problems(second, sender)
    assert not problems, "spans or points lost or doubled:\n  " + "\n  ".join(problems)


# ---- 4. dead letters ---------------------------------------------------------------------------------


def test_malformed_spans_and_points_are_dead_lettered_alone_and_garbage_whole(
    make_appender: AppenderFactory, broker: Broker, topic: str, tmp_path: Path
) -> None:
    appender = make_appender(signals_config(broker, topic, tmp_path / "lake"))
    spans_topic, metrics_topic = topics_of(appender)["traces"], topics_of(appender)["metrics"]
    assert broker.partitions(spans_topic) == PARTITIONS, "the appender did not create the spans topic"

    good_spans = [proto_span(i, f"good {i}", BASE_NS + i * 1_000) for i in range(3)]
    bad_spans = [
        Span(trace_id=b"\x01\x02\x03", span_id=bytes(range(1, 9)), name="short trace id", start_time_unix_nano=BASE_NS),
        Span(trace_id=bytes(range(16)), span_id=b"\x07\x07", name="short span id", start_time_unix_nano=BASE_NS),
    ]
    mixed = [good_spans[0], bad_spans[0], good_spans[1], bad_spans[1], good_spans[2]]
    broker.produce(spans_topic, "checkout", spans_request("checkout", mixed).SerializeToString())

    bad_exemplar = Exemplar(time_unix_nano=BASE_NS, as_int=3, trace_id=EXEMPLAR_TRACE_ID, span_id=b"\x01\x02")
    good_exemplar = Exemplar(time_unix_nano=BASE_NS, as_int=5, trace_id=EXEMPLAR_TRACE_ID, span_id=bytes(range(8)))
    gauge = Metric(
        name="queue.depth",
        gauge=Gauge(
            data_points=[
                NumberDataPoint(
                    time_unix_nano=BASE_NS, as_int=5, exemplars=[good_exemplar], attributes=key_values({"q": "good"})
                ),
                NumberDataPoint(
                    time_unix_nano=BASE_NS, as_int=3, exemplars=[bad_exemplar], attributes=key_values({"q": "bad"})
                ),
            ]
        ),
    )
    others = [point_metric("sum", "requests", [BASE_NS]), point_metric("histogram", "latency", [BASE_NS])]
    points = metrics_request("billing", [gauge, *others])
    broker.produce(metrics_topic, "billing", points.SerializeToString())
    garbage = b"\x0a\xff\xff\xff this is not protobuf"
    broker.produce(spans_topic, "checkout", garbage)

    span_records = broker.records(spans_topic)
    metric_records = broker.records(metrics_topic)
    assert len(span_records) == 2 and len(metric_records) == 1
    (mixed_record,) = [r for r in span_records if r.value != garbage]
    (garbage_record,) = [r for r in span_records if r.value == garbage]
    (points_record,) = metric_records

    expected_spans = [
        {**row, "kafka_partition": mixed_record.partition, "kafka_offset": mixed_record.offset}
        for row in span_rows(spans_request("checkout", good_spans))
    ]
    good_points = ExportMetricsServiceRequest()
    good_points.CopyFrom(points)
    del good_points.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points[1]
    at = {"kafka_partition": points_record.partition, "kafka_offset": points_record.offset}
    expected_points = {table: [{**row, **at} for row in rows] for table, rows in metric_rows(good_points).items()}
    drain(appender, {"traces": 3, "metrics_gauge": 1, "metrics_sum": 1, "metrics_histogram": 1})
    assert_rows(appender, "traces", expected_spans, same_span)
    for table, rows in expected_points.items():
        assert_rows(appender, table, rows, same_point)

    dlq = f"{topic}-dlq"
    wait_until(lambda: len(broker.records(dlq)) >= 3, timeout=30, what="three dead letters")
    letters = broker.records(dlq)
    assert len(letters) == 3, [letter.headers for letter in letters]
    by_source = {letter.headers.get("telemetry-lake-source"): letter for letter in letters}
    mixed_source = f"{spans_topic}/{mixed_record.partition}/{mixed_record.offset}"
    garbage_source = f"{spans_topic}/{garbage_record.partition}/{garbage_record.offset}"
    points_source = f"{metrics_topic}/{points_record.partition}/{points_record.offset}"
    assert set(by_source) == {mixed_source, garbage_source, points_source}, [letter.headers for letter in letters]

    malformed = by_source[mixed_source]
    assert malformed.headers.get("telemetry-lake-error") == "trace_id must be 16 bytes, got 3", malformed.headers
    assert malformed.key == "checkout"
    dead_spans = [s for rs in malformed.traces().resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert dead_spans == bad_spans, f"not just the malformed spans: {dead_spans}"
    assert malformed.traces().resource_spans[0].resource.attributes[0].value.string_value == "checkout"

    point_letter = by_source[points_source]
    assert point_letter.headers.get("telemetry-lake-error") == "exemplars.span_id must be 8 bytes, got 2"
    dead_metrics = [m for rm in point_letter.metrics().resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
    dead_points = [(m.name, list(m.gauge.data_points)) for m in dead_metrics]
    assert dead_points == [("queue.depth", [gauge.gauge.data_points[1]])], dead_points

    whole = by_source[garbage_source]
    assert whole.value == garbage
    error = whole.headers.get("telemetry-lake-error") or ""
    assert error.startswith("not an OTLP ExportTraceServiceRequest: "), whole.headers

    stats = appender.stats()["appender"]
    counts = (stats["dead_lettered"], stats["dead_lettered_records"], stats["dead_letter_failures"])
    assert counts == (3, 3, 0), stats
    assert appender.stats_grpc().appender.dead_lettered == 3
    # Past the dead letters: the tables hold every partition up to its end.
    wait_until(lambda: caught_up(appender), timeout=30, what="every partition at lag 0")


# ---- 5. the Collector's kafka exporter, no ingester ----------------------------------------------------


@pytest.mark.timeout(300)
def test_the_collector_s_kafka_exporter_feeds_the_appender_spans_and_points(
    make_appender: AppenderFactory, broker: Broker, topic: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    appender = make_appender(signals_config(broker, topic, tmp_path / "lake"))
    topics = topics_of(appender)
    collector = Collector(
        tmp_path / "collector",
        COLLECTOR_CONFIGS / "kafka-to-appender.yaml",
        {
            "exporters.kafka.brokers": f"[{broker.bootstrap}]",
            "exporters.kafka.logs.topic": topics["logs"],
            "exporters.kafka.traces.topic": topics["traces"],
            "exporters.kafka.metrics.topic": topics["metrics"],
        },
    )
    request.node.stash.setdefault(APPENDERS, []).append(collector)
    collector.start_and_wait()

    common = telemetrygen_args(collector.ports.otlp_grpc_target, http=False)
    traces = 150
    run_tool("telemetrygen", "traces", *common, "--traces", str(traces), "--service", "gen", timeout=120, check=True)
    points = {"Gauge": 40, "Sum": 50, "Histogram": 60, "ExponentialHistogram": 30}
    for metric_type, count in points.items():
        name = f"gen.{TELEMETRYGEN_TYPES[metric_type]}"
        run_tool(
            "telemetrygen", "metrics", *common, "--metrics", str(count), "--metric-type", metric_type,
            "--otlp-metric-name", name, "--service", "gen", timeout=120, check=True,
        )  # fmt: skip
    spans = 2 * traces  # a parent and one child span per trace
    wait_collector_sent(collector, spans, sum(points.values()))

    expected = {"traces": spans, **{TELEMETRYGEN_TYPES[kind]: n for kind, n in points.items()}}
    drain(appender, expected)
    wait_until(lambda: caught_up(appender), timeout=30, what="every partition at lag 0")
    appender.flush_http()
    assert row_counts(appender) == {**expected, "metrics_summary": 0}

    rows = load_signal_table(appender, "traces").scan().to_arrow().to_pylist()
    ids = Counter(row["span_id"] for row in rows)
    assert len(ids) == spans, f"spans in the table twice: {[i for i, n in ids.items() if n > 1][:3]}"
    assert {row["service_name"] for row in rows} == {"gen"}
    children = [row for row in rows if row["parent_span_id"] is not None]
    assert len(children) == traces and all(row["parent_span_id"] in ids for row in children)
    for table in SIGNAL_TABLES:
        assert landed_ids(appender, table)[1] == 0, f"{table}: rows without a Kafka position"
    ends_of = TopicEnds(broker)
    for table in ("traces", *TELEMETRYGEN_TYPES.values()):
        assert_offsets_recorded(appender, ends_of, table)
    assert appender.stats()["appender"]["dead_lettered"] == 0


# ---- 6. a restart resumes from the tables ------------------------------------------------------------


def data_snapshots(appender: Appender) -> dict[str, list[int]]:
    """Per table, the ids of the snapshots that added data files."""
    out = {}
    for table in SIGNAL_TABLES:
        out[table] = [
            s.snapshot_id
            for s in load_signal_table(appender, table).snapshots()
            if s.summary is not None and int(s.summary.additional_properties.get("added-data-files", "0")) > 0
        ]
    return out


def snapshot_ids(appender: Appender) -> dict[str, list[int]]:
    return {table: [s.snapshot_id for s in load_signal_table(appender, table).snapshots()] for table in SIGNAL_TABLES}


@pytest.mark.timeout(300)
def test_a_restart_with_nothing_new_reads_nothing_and_commits_nothing(
    make_appender: AppenderFactory, broker: Broker, ingester: Ingester, topic: str, tmp_path: Path
) -> None:
    appender = make_appender(signals_config(broker, topic, tmp_path / "lake"))
    # No summaries: metrics_summary holds the metrics topic's offsets in snapshots without data
    # files only, and must still say where that topic starts.
    spans = sdk_spans("checkout") + sdk_spans("payments")
    data = [sdk_metrics(service)[0] for service in ("checkout", "payments", "search")]
    export_spans(ingester.ports, spans, http=True)
    for sent in data:
        export_metrics(ingester.ports, sent, http=False)
    for i in range(4):
        export_request(ingester, "traces", numbered_spans(100 + 40 * i, 40, SERVICES[i])[0], http=False)
    expected = {table: len(rows) for table, rows in metric_rows(*map(encode_metrics, data)).items()}
    assert expected["metrics_summary"] == 0
    expected["traces"] = len(spans) + 160
    drain(appender, expected)
    wait_until(lambda: caught_up(appender), timeout=30, what="every partition at lag 0")
    appender.flush_http()
    counts = row_counts(appender)
    assert counts == expected
    assert_offsets_recorded(appender, TopicEnds(broker), "metrics_summary")
    before = data_snapshots(appender)

    # Once gracefully in the same group, once after kill -9 in a group Kafka knows nothing of
    # (no committed offsets there: only the tables can say where each partition starts).
    for restart in ("restart", "kill -9, new group"):
        if restart == "restart":
            assert appender.stop() == 0
        else:
            appender.kill9()
            appender.config["kafka"]["group_id"] = f"{topic}-new-group"
        appender.start_and_wait()
        stats = wait_until(lambda: caught_up(appender), timeout=90, what=f"every partition at lag 0 after {restart}")
        ends = {(p["topic"], p["partition"]): p["high_watermark"] for p in stats}
        starts = {(p["topic"], p["partition"]): p["committed_offset"] for p in stats}
        assert {k: max(v, 0) for k, v in starts.items()} == ends, f"{restart}: the tables' offsets {starts}"
        # A window for the consumer to read, were it to start below the tables' offsets
        # (the topics' whole content takes it well under a second).
        snapshots = snapshot_ids(appender)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            read = appender.stats()["appender"]["kafka_messages"]
            assert read == 0, f"{restart}: {read} messages below the tables' offsets read again"
            time.sleep(0.2)
        appender.flush_http()
        assert data_snapshots(appender) == before, f"{restart}: a snapshot with data files, nothing new to read"
        new = {t: [s for s in ids if s not in snapshots[t]] for t, ids in snapshot_ids(appender).items()}
        assert row_counts(appender) == counts, f"{restart}: new snapshots {new}"
        assert appender.stats()["appender"]["kafka_messages"] == 0
        assert appender.committed_per_signal() == {"logs": 0, "traces": 0, "metrics": 0}
