"""Traces and metrics in embedded mode: OTLP in, one Iceberg table per signal and metric type.

    OTel Python SDK span / metric exporters (gRPC, HTTP) --> appender --> default.traces
    hand-built OTLP requests (summaries, exemplars, bad ids) --> default.metrics_gauge, metrics_sum,
    telemetrygen traces / metrics, a Collector in front      metrics_histogram, metrics_summary,
                                                             metrics_exponential_histogram

Every span and data point is checked column by column against the protobuf the SDK's encoder
sends (ids as lowercase hex, times truncated to the microsecond, attribute values as strings or
plain JSON, events, links, exemplars, buckets and quantiles as lists), read back with pyiceberg
and with DuckDB. Also: the tables' columns, format, day partitions and sort order, and the rows of
every data file in that order; malformed span ids as OTLP partial success; every span and point
exactly once through `kill -9`; a flush committing one snapshot per table that has rows; the
table names from the config; `[signals] traces = false`.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pytest
import requests
from google.protobuf.message import Message
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AGGREGATION_TEMPORALITY_DELTA,
    AggregationTemporality,
    Exemplar,
    ExponentialHistogram,
    ExponentialHistogramDataPoint,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
    Summary,
    SummaryDataPoint,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ProtoResource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from opentelemetry.proto.trace.v1.trace_pb2 import Status as ProtoStatus
from opentelemetry.sdk.metrics import MeterProvider, TraceBasedExemplarFilter
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult, MetricsData
from opentelemetry.sdk.metrics.view import (
    ExplicitBucketHistogramAggregation,
    ExponentialBucketHistogramAggregation,
    View,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.table import Table
from pyiceberg.table.sorting import NullOrder, SortDirection
from pyiceberg.transforms import DayTransform, IdentityTransform
from pyiceberg.types import IcebergType, ListType, MapType, StructType

from harness.catalog import read_data_file
from harness.clients import GRPC_CHANNEL_OPTIONS, grpc_channel, http_session
from harness.collector import COLLECTOR_CONFIGS, Collector, run_tool
from harness.lake import APPENDERS, Appender, AppenderFactory, duckdb_reader, read_table
from harness.ports import Ports
from harness.wait import wait_until
from otlp_client import AttrValue, attribute_matches, loghub_records, send, table_mismatches, timestamp

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
METRICS_EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
EXPORTS: dict[str, tuple[str, type[Message]]] = {
    "traces": (TRACE_EXPORT, ExportTraceServiceResponse),
    "metrics": (METRICS_EXPORT, ExportMetricsServiceResponse),
}

METRIC_TYPES = ("gauge", "sum", "histogram", "exponential_histogram", "summary")
# The tables by their default names (`iceberg.table`, `iceberg.traces_table`, and
# `iceberg.metrics_table_prefix` + the type); `table_name` gives an appender's configured name.
DEFAULT_TABLES = ("logs", "traces", *(f"metrics_{kind}" for kind in METRIC_TYPES))
SIGNAL_TABLES = DEFAULT_TABLES[1:]

# A row of a table or what it must be: column -> value (see `differences` for the rules).
Row = dict[str, Any]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BASE_NS = 1_764_288_000_123_456_789  # 2025-11-28T00:00:00.123456789Z: not on a microsecond
# Noon: a day of times from here crosses midnight, so the rows fall in two day partitions.
LAYOUT_START_NS = int(datetime(2026, 11, 27, 12, tzinfo=UTC).timestamp()) * 10**9
DAY_NS = 86_400 * 10**9
LAYOUT_DAYS = {date(2026, 11, 27), date(2026, 11, 28)}

# A caller's span in another process (a remote parent with a trace state) and a span of another
# trace that the SDK's spans link to.
REMOTE_PARENT = SpanContext(
    trace_id=0x0AF7651916CD43DD8448EB211C80319C,
    span_id=0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
    trace_state=TraceState([("lake", "t61rcWkgMzE")]),
)
LINKED = SpanContext(
    trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
    span_id=0x00F067AA0BA902B7,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
)
EXEMPLAR_TRACE_ID = bytes.fromhex("5b8efff798038103d269b633813fc60c")
EXEMPLAR_SPAN_ID = bytes.fromhex("eee19b7ec3c1b174")

# ---- the tables' layout -------------------------------------------------------------------------

MAP = "map<string,string>"
TS = "timestamptz"
COMMON_METRIC_COLUMNS = {
    "timestamp": TS,
    "start_timestamp": TS,
    "service_name": "string",
    "metric_name": "string",
    "metric_description": "string",
    "metric_unit": "string",
    "resource_attributes": MAP,
    "resource_schema_url": "string",
    "scope_name": "string",
    "scope_version": "string",
    "scope_attributes": MAP,
    "scope_schema_url": "string",
    "attributes": MAP,
    "flags": "int",
    "exemplars": f"list<struct<timestamp:{TS},value:double,trace_id:string,span_id:string,filtered_attributes:{MAP}>>",
}
KAFKA_COLUMNS = {"kafka_partition": "int", "kafka_offset": "long"}
HISTOGRAM_TAIL = {"min": "double", "max": "double", "aggregation_temporality": "string"}
EXPECTED_COLUMNS: dict[str, dict[str, str]] = {
    "traces": {
        "timestamp": TS,
        "end_timestamp": TS,
        "duration_ns": "long",
        "trace_id": "string",
        "span_id": "string",
        "parent_span_id": "string",
        "trace_state": "string",
        "span_name": "string",
        "span_kind": "string",
        "service_name": "string",
        "resource_attributes": MAP,
        "scope_name": "string",
        "scope_version": "string",
        "span_attributes": MAP,
        "status_code": "string",
        "status_message": "string",
        "events": f"list<struct<timestamp:{TS},name:string,attributes:{MAP}>>",
        "links": f"list<struct<trace_id:string,span_id:string,trace_state:string,attributes:{MAP}>>",
        **KAFKA_COLUMNS,
    },
    "metrics_gauge": {**COMMON_METRIC_COLUMNS, "value": "double", **KAFKA_COLUMNS},
    "metrics_sum": {
        **COMMON_METRIC_COLUMNS,
        "value": "double",
        "aggregation_temporality": "string",
        "is_monotonic": "boolean",
        **KAFKA_COLUMNS,
    },
    "metrics_histogram": {
        **COMMON_METRIC_COLUMNS,
        "count": "long",
        "sum": "double",
        "bucket_counts": "list<long>",
        "explicit_bounds": "list<double>",
        **HISTOGRAM_TAIL,
        **KAFKA_COLUMNS,
    },
    "metrics_exponential_histogram": {
        **COMMON_METRIC_COLUMNS,
        "count": "long",
        "sum": "double",
        "scale": "int",
        "zero_count": "long",
        "positive_offset": "int",
        "positive_bucket_counts": "list<long>",
        "negative_offset": "int",
        "negative_bucket_counts": "list<long>",
        **HISTOGRAM_TAIL,
        **KAFKA_COLUMNS,
    },
    "metrics_summary": {
        **COMMON_METRIC_COLUMNS,
        "count": "long",
        "sum": "double",
        "quantile_values": "list<struct<quantile:double,value:double>>",
        **KAFKA_COLUMNS,
    },
}
SORT_COLUMNS = {
    table: ("service_name", "span_name" if table == "traces" else "metric_name", "timestamp") for table in SIGNAL_TABLES
}
# As the logs table: Parquet, zstd, the default iceberg.target_file_size (128 MiB).
TABLE_PROPERTIES = {
    "write.format.default": "parquet",
    "write.parquet.compression-codec": "zstd",
    "write.target-file-size-bytes": str(128 * 1024 * 1024),
}


# ---- reading the lake ---------------------------------------------------------------------------


def table_name(appender: Appender, table: str) -> str:
    """The configured name of `table` (given by its default name, see DEFAULT_TABLES)."""
    iceberg = appender.config.get("iceberg", {})
    if table == "logs":
        return str(iceberg.get("table", "logs"))
    if table == "traces":
        return str(iceberg.get("traces_table", "traces"))
    return str(iceberg.get("metrics_table_prefix", "metrics_")) + table.removeprefix("metrics_")


def lake_catalog(appender: Appender) -> SqlCatalog:
    """pyiceberg's SQL catalog on the appender's sqlite file (as `harness.lake.load_table`)."""
    return SqlCatalog(
        "telemetry_lake",
        uri=f"sqlite:///{appender.catalog_db}",
        warehouse=f"file://{appender.warehouse_dir}",
    )


def namespace(appender: Appender) -> str:
    return str(appender.config.get("iceberg", {}).get("namespace", "default"))


def load_signal_table(appender: Appender, table: str) -> Table:
    """`table` (a default name) of the appender's lake, loaded fresh."""
    return lake_catalog(appender).load_table(f"{namespace(appender)}.{table_name(appender, table)}")


def table_rows(appender: Appender, table: str) -> list[Row]:
    """Every row of `table`'s current snapshot, as pyiceberg reads it (maps as lists of pairs)."""
    return load_signal_table(appender, table).scan().to_arrow().to_pylist()


def snapshot_counts(appender: Appender) -> dict[str, int]:
    """Snapshots of each table (by default name); 0 for a table not created yet."""
    catalog = lake_catalog(appender)
    counts = {}
    for table in DEFAULT_TABLES:
        try:
            counts[table] = len(catalog.load_table(f"{namespace(appender)}.{table_name(appender, table)}").snapshots())
        except NoSuchTableError:
            counts[table] = 0
    return counts


def canonical(value: Any) -> Any:
    """A value as two readers must agree on it: timestamps as epoch microseconds, structs and
    maps as sorted pairs, lists as tuples."""
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return (aware - EPOCH) // timedelta(microseconds=1)
    if isinstance(value, dict):
        return tuple(sorted((key, canonical(item)) for key, item in value.items()))
    if isinstance(value, list) and value and all(isinstance(item, tuple) for item in value):  # a map's entries
        return tuple(sorted((canonical(item) for item in value), key=repr))
    if isinstance(value, list | tuple):
        return tuple(canonical(item) for item in value)
    return value


def canonical_rows(rows: pa.Table) -> list[Any]:
    return sorted((canonical(row) for row in rows.to_pylist()), key=repr)


def assert_duckdb_agrees(appender: Appender, table: str) -> None:
    """DuckDB (`iceberg_scan` of the current metadata file, as test_embedded reads the logs)
    reads the same rows and values as pyiceberg."""
    lake_table = load_signal_table(appender, table)
    read = lake_table.scan().to_arrow()
    duck = duckdb_reader().execute(f"SELECT * FROM iceberg_scan('{lake_table.metadata_location}')").to_arrow_table()
    assert sorted(duck.column_names) == sorted(read.column_names)
    assert duck.num_rows == read.num_rows, f"{table}: DuckDB reads {duck.num_rows} rows, pyiceberg {read.num_rows}"
    assert canonical_rows(duck) == canonical_rows(read), f"DuckDB and pyiceberg read different rows of {table}"


# ---- what a row must be -------------------------------------------------------------------------


class Attributes(dict[str, AttrValue]):
    """A map column as sent: every key, each value as a string (strings as they are, anything
    else as plain JSON: 7 -> "7", True -> "true", ["a"] -> '["a"]'); an empty map may be null."""


class Blank:
    """An empty value as sent ("" or 0), which the row may hold as null or as that value."""

    def __init__(self, value: str | int) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"{self.value!r} or null"


MISSING = object()


def maybe_blank(value: Any) -> Any:
    return value if value else Blank(value)


def optional_time(ns: int) -> datetime | None:
    """A time column that is null when the OTLP field is 0."""
    return timestamp(ns) if ns else None


def enum_word(name: str, prefix: str) -> str:
    """`SPAN_KIND_SERVER` -> `Server`, `AGGREGATION_TEMPORALITY_DELTA` -> `Delta`: how the tables
    spell OTLP's enums."""
    return name.removeprefix(prefix).capitalize()


def plain(value: AnyValue) -> AttrValue:
    """An OTLP AnyValue as a Python value (`attribute_matches` compares a column with it)."""
    kind = value.WhichOneof("value")
    assert kind is not None, "an attribute without a value"
    if kind == "array_value":
        return [plain(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: plain(kv.value) for kv in value.kvlist_value.values}
    result: AttrValue = getattr(value, kind)
    return result


def attributes(key_values: Iterable[KeyValue]) -> Attributes:
    return Attributes({kv.key: plain(kv.value) for kv in key_values})


def differences(got: Any, want: Any, where: str) -> list[str]:
    """How `got` (read from the table) differs from `want`: `Attributes` as described there,
    `Blank` null or the empty value, a dict a struct (every key of it), a list element by
    element (an empty list may be null), anything else equal."""
    if got is MISSING:
        return [f"{where} is missing"]
    if isinstance(want, Attributes):
        got_map = dict(got or [])
        if set(got_map) != set(want):
            return [f"{where}: keys {sorted(got_map)} != {sorted(want)}"]
        return [
            f"{where}[{key!r}]: {got_map[key]!r} does not encode {value!r}"
            for key, value in want.items()
            if not attribute_matches(got_map[key], value)
        ]
    if isinstance(want, Blank):
        return [] if got is None or got == want.value else [f"{where}: {got!r}, expected {want!r}"]
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return [f"{where}: {got!r} is not a struct"]
        return [p for key, value in want.items() for p in differences(got.get(key, MISSING), value, f"{where}.{key}")]
    if isinstance(want, list):
        items = [] if got is None else got
        if not isinstance(items, list) or len(items) != len(want):
            return [f"{where}: {got!r} != {want!r}"]
        return [p for i, (g, w) in enumerate(zip(items, want, strict=True)) for p in differences(g, w, f"{where}[{i}]")]
    return [] if got == want else [f"{where}: {got!r} != {want!r}"]


def row_label(row: Row) -> str:
    if "span_id" in row:
        return f"span {row.get('span_name')!r} ({row['span_id']})"
    return f"point {row.get('metric_name')} {dict(row.get('attributes') or [])}"


def same_span(row: Row, want: Row) -> bool:
    return bool(row["span_id"] == want["span_id"])


def same_point(row: Row, want: Row) -> bool:
    return row["metric_name"] == want["metric_name"] and not differences(row["attributes"], want["attributes"], "")


def match_rows(
    rows: list[Row], expected: Sequence[Row], same: Callable[[Row, Row], bool], limit: int = 12
) -> list[str]:
    """Differences between a table's rows and `expected`: each expected row exactly once (found
    with `same`) with every column right, and no other row. Empty when they agree."""
    problems = [] if len(rows) == len(expected) else [f"the table has {len(rows)} rows, expected {len(expected)}"]
    matched: set[int] = set()
    for want in expected:
        found = [i for i, row in enumerate(rows) if same(row, want)]
        label = row_label(want)
        if not found:
            problems.append(f"missing row {label}")
        elif len(found) > 1:
            problems.append(f"{label} is in the table {len(found)} times")
        for i in found[:1]:
            problems += differences(rows[i], want, label)
        matched.update(found)
    problems += [f"unexpected row {row_label(row)}" for i, row in enumerate(rows) if i not in matched]
    return problems[:limit]


def assert_rows(appender: Appender, table: str, expected: Sequence[Row], same: Callable[[Row, Row], bool]) -> list[Row]:
    """`table` holds exactly `expected`, column by column; returns its rows."""
    rows = table_rows(appender, table)
    problems = match_rows(rows, expected, same)
    assert not problems, f"{table} differs from what was sent:\n  " + "\n  ".join(problems)
    return rows


def span_rows(request: ExportTraceServiceRequest) -> list[Row]:
    """The rows of `traces` for the spans of `request` in embedded mode."""
    rows = []
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                start, end = span.start_time_unix_nano, span.end_time_unix_nano
                rows.append(
                    {
                        "timestamp": timestamp(start),
                        "end_timestamp": optional_time(end),
                        "duration_ns": end - start if start and end else None,
                        "trace_id": span.trace_id.hex() or None,
                        "span_id": span.span_id.hex() or None,
                        "parent_span_id": span.parent_span_id.hex() or None,
                        "trace_state": maybe_blank(span.trace_state),
                        "span_name": maybe_blank(span.name),
                        "span_kind": enum_word(Span.SpanKind.Name(span.kind), "SPAN_KIND_"),
                        "service_name": resource.get("service.name"),
                        "resource_attributes": resource,
                        "scope_name": maybe_blank(scope_spans.scope.name),
                        "scope_version": maybe_blank(scope_spans.scope.version),
                        "span_attributes": attributes(span.attributes),
                        "status_code": enum_word(ProtoStatus.StatusCode.Name(span.status.code), "STATUS_CODE_"),
                        "status_message": maybe_blank(span.status.message),
                        "events": [
                            {
                                "timestamp": optional_time(event.time_unix_nano),
                                "name": maybe_blank(event.name),
                                "attributes": attributes(event.attributes),
                            }
                            for event in span.events
                        ],
                        "links": [
                            {
                                "trace_id": link.trace_id.hex() or None,
                                "span_id": link.span_id.hex() or None,
                                "trace_state": maybe_blank(link.trace_state),
                                "attributes": attributes(link.attributes),
                            }
                            for link in span.links
                        ],
                        "kafka_partition": None,
                        "kafka_offset": None,
                    }
                )
    return rows


def number_value(point: NumberDataPoint | Exemplar) -> float:
    """as_double, or as_int as a double."""
    return point.as_double if point.WhichOneof("value") == "as_double" else float(point.as_int)


def exemplar_row(exemplar: Exemplar) -> Row:
    return {
        "timestamp": optional_time(exemplar.time_unix_nano),
        "value": number_value(exemplar),
        "trace_id": exemplar.trace_id.hex() or None,
        "span_id": exemplar.span_id.hex() or None,
        "filtered_attributes": attributes(exemplar.filtered_attributes),
    }


def type_columns(kind: str, data: Any, point: Any) -> Row:
    """The columns of a point of metric type `kind` that the other types do not have."""
    if kind == "summary":
        quantiles = [{"quantile": q.quantile, "value": q.value} for q in point.quantile_values]
        return {"count": point.count, "sum": point.sum, "quantile_values": quantiles}
    if kind == "gauge":
        return {"value": number_value(point)}
    temporality = enum_word(AggregationTemporality.Name(data.aggregation_temporality), "AGGREGATION_TEMPORALITY_")
    if kind == "sum":
        return {"value": number_value(point), "aggregation_temporality": temporality, "is_monotonic": data.is_monotonic}
    counts = {
        "count": point.count,
        "sum": point.sum if point.HasField("sum") else None,
        "min": point.min if point.HasField("min") else None,
        "max": point.max if point.HasField("max") else None,
        "aggregation_temporality": temporality,
    }
    if kind == "histogram":
        return {**counts, "bucket_counts": list(point.bucket_counts), "explicit_bounds": list(point.explicit_bounds)}
    return {
        **counts,
        "scale": point.scale,
        "zero_count": point.zero_count,
        "positive_offset": point.positive.offset,
        "positive_bucket_counts": list(point.positive.bucket_counts),
        "negative_offset": point.negative.offset,
        "negative_bucket_counts": list(point.negative.bucket_counts),
    }


def metric_rows(*requests: ExportMetricsServiceRequest) -> dict[str, list[Row]]:
    """The rows of each metrics table (by default name) for the data points of `requests`."""
    out: dict[str, list[Row]] = {f"metrics_{kind}": [] for kind in METRIC_TYPES}
    for request in requests:
        for resource_metrics in request.resource_metrics:
            resource = attributes(resource_metrics.resource.attributes)
            for scope_metrics in resource_metrics.scope_metrics:
                scope = scope_metrics.scope
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data")
                    data = getattr(metric, kind)
                    for point in data.data_points:
                        out[f"metrics_{kind}"].append(
                            {
                                "timestamp": timestamp(point.time_unix_nano),
                                "start_timestamp": optional_time(point.start_time_unix_nano),
                                "service_name": resource.get("service.name"),
                                "metric_name": metric.name,
                                "metric_description": maybe_blank(metric.description),
                                "metric_unit": maybe_blank(metric.unit),
                                "resource_attributes": resource,
                                "resource_schema_url": maybe_blank(resource_metrics.schema_url),
                                "scope_name": maybe_blank(scope.name),
                                "scope_version": maybe_blank(scope.version),
                                "scope_attributes": attributes(scope.attributes),
                                "scope_schema_url": maybe_blank(scope_metrics.schema_url),
                                "attributes": attributes(point.attributes),
                                "flags": maybe_blank(point.flags),
                                # A summary's points have no exemplars: the column is empty.
                                "exemplars": [exemplar_row(e) for e in getattr(point, "exemplars", [])],
                                **type_columns(kind, data, point),
                                "kafka_partition": None,
                                "kafka_offset": None,
                            }
                        )
    return out


def point(rows: list[Row], name: str, **attrs: str) -> Row:
    """The one row of metric `name` whose attributes include `attrs`."""
    found = [r for r in rows if r["metric_name"] == name and attrs.items() <= dict(r["attributes"] or []).items()]
    assert len(found) == 1, f"{len(found)} rows of {name} with {attrs}: {found}"
    return found[0]


# ---- what the SDK sends -------------------------------------------------------------------------


def sdk_spans(service: str) -> list[ReadableSpan]:
    """Finished spans of `service`: a server span under a remote parent (whose trace state it
    inherits) with attributes of every type, an event and a link; its client child failing with
    a message and two events; an internal child that is OK; a span that raised (an exception
    event, status Error); a consumer span with explicit start and end (not on a microsecond),
    linking to the server span."""
    memory = InMemorySpanExporter()
    resource = Resource.create({"service.name": service, "host.name": "node-1", "host.cpus": 8})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("signals-appender-test", "1.2.3")
    with tracer.start_as_current_span(
        f"GET /{service}",
        context=set_span_in_context(NonRecordingSpan(REMOTE_PARENT)),
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": "GET",
            "http.response.status_code": 503,
            "ratio": 0.25,
            "retry": True,
            "tags": ["a", "b"],
            "attempts": [1, 2],
        },
        links=[Link(LINKED, {"link.reason": "retry of", "link.n": 1})],
    ) as server:
        server.add_event("cart.loaded", {"items": 3, "cached": False, "skus": ["x1", "x2"]})
        with tracer.start_as_current_span("POST /payments", kind=SpanKind.CLIENT) as client:
            client.set_attribute("peer.service", "payments")
            client.add_event("retry", {"attempt": 2})
            client.add_event("gave up")
            client.set_status(Status(StatusCode.ERROR, "card declined"))
        with tracer.start_as_current_span("render") as internal:
            internal.set_status(Status(StatusCode.OK))
    with contextlib.suppress(ValueError), tracer.start_as_current_span("failing job"):
        raise ValueError("boom")
    consumer = tracer.start_span(
        "consume order", kind=SpanKind.CONSUMER, start_time=BASE_NS, links=[Link(server.get_span_context())]
    )
    consumer.end(end_time=BASE_NS + 1_864_197_532)
    provider.shutdown()
    return list(memory.get_finished_spans())


def sdk_metrics(service: str) -> tuple[MetricsData, str]:
    """One collection of `service`'s instruments: a counter (cumulative, monotonic; its `user`
    attribute dropped by a View, so it goes to the exemplars' filtered attributes), an up-down
    counter, a gauge, an observable gauge of ints, a histogram with explicit bounds and an
    exponential histogram (a View). The last three rounds of measurements are made inside a
    sampled span, so with the trace-based exemplar filter their points carry exemplars of that
    trace; returns the data and the span's trace id (hex)."""
    tracer_provider = TracerProvider()
    tracer = tracer_provider.get_tracer("signals-appender-test")
    reader = InMemoryMetricReader()
    provider = MeterProvider(
        metric_readers=[reader],
        resource=Resource.create(
            {"service.name": service, "host.name": "node-1"}, "https://opentelemetry.io/schemas/1.26.0"
        ),
        exemplar_filter=TraceBasedExemplarFilter(),
        views=[
            View(instrument_name="requests", attribute_keys={"route"}),
            View(
                instrument_name="latency", aggregation=ExplicitBucketHistogramAggregation((0.0, 5.0, 10.0, 25.0, 50.0))
            ),
            View(instrument_name="payload_size", aggregation=ExponentialBucketHistogramAggregation(max_size=20)),
        ],
    )
    meter = provider.get_meter(
        "signals-appender-test", "1.2.3", "https://opentelemetry.io/schemas/1.25.0", {"library.language": "python"}
    )
    requests_served = meter.create_counter("requests", unit="1", description="requests served")
    in_flight = meter.create_up_down_counter("in_flight", description="requests in progress")
    temperature = meter.create_gauge("temperature", unit="Cel")
    latency = meter.create_histogram("latency", unit="ms")
    payload_size = meter.create_histogram("payload_size", unit="By")

    def queue_depth(options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(7, {"queue": "orders"})
        yield Observation(2, {"queue": "refunds"})

    meter.create_observable_gauge("queue_depth", callbacks=[queue_depth], unit="{item}")

    def measure(i: int) -> None:
        route = {"route": f"/r{i % 3}"}
        requests_served.add(1 + i, {**route, "user": f"u{i % 2}"})
        in_flight.add(1 if i % 2 else -1, route)
        temperature.set(20.0 + i / 4, {"room": f"r{i % 2}"})
        latency.record(1.5 * i, route)
        payload_size.record(10.0 * i + 1, route)

    for i in range(12):
        measure(i)
    with tracer.start_as_current_span("checkout") as span:
        for i in range(12, 15):
            measure(i)
    data = reader.get_metrics_data()
    provider.shutdown()
    tracer_provider.shutdown()
    assert data is not None
    return data, f"{span.get_span_context().trace_id:032x}"


def export_spans(ports: Ports, spans: Sequence[ReadableSpan], *, http: bool) -> None:
    """The SDK's OTLP span exporter to `ports` (an appender's, a Collector's), over gRPC or
    HTTP/protobuf; fails unless acknowledged."""
    session = http_session()
    exporter = (
        HttpSpanExporter(endpoint=f"http://127.0.0.1:{ports.otlp_http}/v1/traces", timeout=30, session=session)
        if http
        else GrpcSpanExporter(
            endpoint=ports.otlp_grpc_target, insecure=True, timeout=30, channel_options=GRPC_CHANNEL_OPTIONS
        )
    )
    try:
        result = exporter.export(spans)
    finally:
        exporter.shutdown()
        session.close()
    assert result == SpanExportResult.SUCCESS, f"export of {len(spans)} spans: {result}"


def export_metrics(ports: Ports, data: MetricsData, *, http: bool) -> None:
    """The SDK's OTLP metric exporter to `ports`, over gRPC or HTTP/protobuf; fails unless
    acknowledged."""
    session = http_session()
    exporter = (
        HttpMetricExporter(endpoint=f"http://127.0.0.1:{ports.otlp_http}/v1/metrics", timeout=30, session=session)
        if http
        else GrpcMetricExporter(
            endpoint=ports.otlp_grpc_target, insecure=True, timeout=30, channel_options=GRPC_CHANNEL_OPTIONS
        )
    )
    try:
        result = exporter.export(data)
    finally:
        exporter.shutdown()
        session.close()
    assert result == MetricExportResult.SUCCESS, f"metrics export: {result}"


# ---- hand-built requests ------------------------------------------------------------------------


def any_value(value: AttrValue) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    raise TypeError(f"no attribute value for {value!r}")


def key_values(attrs: Mapping[str, AttrValue]) -> list[KeyValue]:
    return [KeyValue(key=key, value=any_value(value)) for key, value in attrs.items()]


def service_resource(service: str) -> ProtoResource:
    return ProtoResource(attributes=key_values({"service.name": service}))


def spans_request(service: str, spans: Sequence[Span]) -> ExportTraceServiceRequest:
    scope = InstrumentationScope(name="hand-built", version="0.1")
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(resource=service_resource(service), scope_spans=[ScopeSpans(scope=scope, spans=spans)])
        ]
    )


def proto_span(n: int, name: str, start_ns: int, **fields: Any) -> Span:
    """Span number `n` (ids derived from it), 250 ms long, a server span unless `fields` say."""
    fields.setdefault("kind", Span.SPAN_KIND_SERVER)
    return Span(
        trace_id=(n + 1).to_bytes(16, "big"),
        span_id=(n + 1).to_bytes(8, "big"),
        name=name,
        start_time_unix_nano=start_ns,
        end_time_unix_nano=start_ns + 250_000_000,
        **fields,
    )


def metrics_request(service: str, metrics: Sequence[Metric]) -> ExportMetricsServiceRequest:
    return ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(resource=service_resource(service), scope_metrics=[ScopeMetrics(metrics=metrics)])
        ]
    )


def point_metric(kind: str, name: str, times: Sequence[int]) -> Metric:
    """A metric of type `kind` (delta where it has a temporality) with a small data point at
    each of `times`."""
    delta = AGGREGATION_TEMPORALITY_DELTA
    if kind == "gauge":
        return Metric(
            name=name,
            gauge=Gauge(data_points=[NumberDataPoint(time_unix_nano=t, as_double=i) for i, t in enumerate(times)]),
        )
    if kind == "sum":
        points = [NumberDataPoint(time_unix_nano=t, as_int=i) for i, t in enumerate(times)]
        return Metric(name=name, sum=Sum(data_points=points, aggregation_temporality=delta, is_monotonic=True))
    if kind == "histogram":
        histogram_points = [
            HistogramDataPoint(
                time_unix_nano=t, count=3, sum=7.5, bucket_counts=[1, 2], explicit_bounds=[2.0], min=0.5, max=4.0
            )
            for t in times
        ]
        return Metric(name=name, histogram=Histogram(data_points=histogram_points, aggregation_temporality=delta))
    if kind == "exponential_histogram":
        buckets = ExponentialHistogramDataPoint.Buckets(offset=2, bucket_counts=[1, 1])
        exponential_points = [
            ExponentialHistogramDataPoint(time_unix_nano=t, count=3, sum=7.5, scale=1, zero_count=1, positive=buckets)
            for t in times
        ]
        return Metric(
            name=name,
            exponential_histogram=ExponentialHistogram(data_points=exponential_points, aggregation_temporality=delta),
        )
    assert kind == "summary", kind
    quantile = SummaryDataPoint.ValueAtQuantile(quantile=0.5, value=2.0)
    summary_points = [SummaryDataPoint(time_unix_nano=t, count=3, sum=7.5, quantile_values=[quantile]) for t in times]
    return Metric(name=name, summary=Summary(data_points=summary_points))


SUMMARY_QUANTILES = [(0.0, 0.012), (0.5, 0.25), (0.99, 1.5), (1.0, 2.75)]


def summary_and_exemplar_request() -> ExportMetricsServiceRequest:
    """What the SDK cannot send: a summary with quantiles (and one with no recorded value, flag
    1), and a gauge whose points carry exemplars, one with a trace context and filtered
    attributes, one without; resource and scope with schema URLs and attributes."""
    ns = BASE_NS + 60 * 10**9
    summary = Metric(
        name="rpc.server.duration",
        description="RPC latency",
        unit="s",
        summary=Summary(
            data_points=[
                SummaryDataPoint(
                    attributes=key_values({"rpc.method": "Get"}),
                    start_time_unix_nano=BASE_NS,
                    time_unix_nano=ns,
                    count=1200,
                    sum=301.5,
                    quantile_values=[
                        SummaryDataPoint.ValueAtQuantile(quantile=q, value=v) for q, v in SUMMARY_QUANTILES
                    ],
                ),
                SummaryDataPoint(
                    attributes=key_values({"rpc.method": "Put", "rpc.shard": 3}), time_unix_nano=ns, flags=1
                ),
            ]
        ),
    )
    gauge = Metric(
        name="queue.depth",
        unit="{item}",
        gauge=Gauge(
            data_points=[
                NumberDataPoint(
                    attributes=key_values({"queue": "orders"}),
                    time_unix_nano=ns,
                    as_int=7,
                    exemplars=[
                        Exemplar(
                            time_unix_nano=BASE_NS + 500_000_999,
                            as_int=7,
                            trace_id=EXEMPLAR_TRACE_ID,
                            span_id=EXEMPLAR_SPAN_ID,
                            filtered_attributes=key_values({"user": "alice", "attempt": 2}),
                        )
                    ],
                ),
                NumberDataPoint(
                    attributes=key_values({"queue": "refunds", "urgent": True}),
                    time_unix_nano=ns,
                    as_double=0.5,
                    exemplars=[Exemplar(time_unix_nano=BASE_NS + 2_000, as_double=0.5)],
                ),
            ]
        ),
    )
    return ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(
                resource=ProtoResource(attributes=key_values({"service.name": "billing", "k8s.replicas": 3})),
                schema_url="https://opentelemetry.io/schemas/1.26.0",
                scope_metrics=[
                    ScopeMetrics(
                        scope=InstrumentationScope(
                            name="billing.rpc", version="2.1.0", attributes=key_values({"library.language": "rust"})
                        ),
                        schema_url="https://opentelemetry.io/schemas/1.25.0",
                        metrics=[summary, gauge],
                    )
                ],
            )
        ]
    )


def grpc_call(appender: Appender, method: str, payload: bytes) -> tuple[grpc.StatusCode, bytes]:
    """A unary call of `method` with `payload` as the message bytes: its status and reply bytes."""
    with grpc_channel(appender.ports.otlp_grpc_target) as channel:
        try:
            return grpc.StatusCode.OK, channel.unary_unary(method)(payload, timeout=30)
        except grpc.RpcError as error:
            return error.code(), b""


def post(appender: Appender, path: str, body: bytes) -> requests.Response:
    with http_session() as session:
        return session.post(
            f"http://127.0.0.1:{appender.ports.otlp_http}{path}",
            data=body,
            headers={"Content-Type": "application/x-protobuf"},
            timeout=30,
        )


def export_request(appender: Appender, signal: str, request: Message, *, http: bool) -> Any:
    """One hand-built export request of `signal` ("traces" or "metrics") over OTLP/HTTP
    (protobuf) or gRPC; fails unless accepted, returns the response (its partial success)."""
    method, response_type = EXPORTS[signal]
    payload = request.SerializeToString()
    if http:
        response = post(appender, f"/v1/{signal}", payload)
        assert response.status_code == 200, f"POST /v1/{signal}: {response.status_code} {response.text[:300]}"
        return response_type.FromString(response.content)
    status, reply = grpc_call(appender, method, payload)
    assert status == grpc.StatusCode.OK, f"{method}: {status}"
    return response_type.FromString(reply)


def wait_collector_sent(collector: Collector, spans: int, points: int) -> None:
    """Waits until the Collector's exporter has sent `spans` spans and `points` data points,
    and checks that it failed to send none."""
    wait_until(
        lambda: (
            (
                collector.metric_sum("otelcol_exporter_sent_spans"),
                collector.metric_sum("otelcol_exporter_sent_metric_points"),
            )
            == (spans, points)
        ),
        timeout=60,
        what=f"the collector to export {spans} spans and {points} data points",
        interval=0.5,
    )
    assert collector.metric_sum("otelcol_exporter_send_failed_spans") == 0
    assert collector.metric_sum("otelcol_exporter_send_failed_metric_points") == 0


def telemetrygen_args(host_port: str, *, http: bool) -> list[str]:
    return ["--otlp-insecure", "--otlp-endpoint", host_port, "--workers", "1", "--rate", "0"] + (
        ["--otlp-http"] if http else []
    )


# ---- numbered spans and points, to count (test_signals_kafka.py, test_signals_outages.py) -------

POINT_ID = "point.id"


def numbered_spans(first: int, n: int, service: str) -> tuple[ExportTraceServiceRequest, list[str]]:
    """Spans `first`..`first`+`n`-1 (ids derived from the number) and their span ids (hex)."""
    spans = [proto_span(i, f"op {i % 5}", BASE_NS + i * 1_000_000) for i in range(first, first + n)]
    return spans_request(service, spans), [span.span_id.hex() for span in spans]


def numbered_points(
    first: int, per_type: int, service: str
) -> tuple[ExportMetricsServiceRequest, dict[str, list[str]]]:
    """`per_type` points of each metric type, each with a `point.id` attribute of its own; the
    request and the ids per table (by default name)."""
    metrics = []
    ids: dict[str, list[str]] = {}
    for kind in METRIC_TYPES:
        numbers = range(first, first + per_type)
        metric = point_metric(kind, f"flow.{kind}", [BASE_NS + i * 1_000_000 for i in numbers])
        names = [f"{kind}-{i}" for i in numbers]
        for data_point, name in zip(getattr(metric, kind).data_points, names, strict=True):
            data_point.attributes.extend(key_values({POINT_ID: name}))
        metrics.append(metric)
        ids[f"metrics_{kind}"] = names
    return metrics_request(service, metrics), ids


def numbered_id(row: Row, table: str) -> Any:
    """The id of a numbered span's or point's row of `table`: its span id (traces) or its
    `point.id` attribute (metrics tables; None without one)."""
    return row["span_id"] if table == "traces" else dict(row["attributes"] or []).get(POINT_ID)


def once_differences(
    landed: Iterable[Any], acknowledged: Iterable[str], uncertain: Iterable[str] = ()
) -> tuple[list[Any], list[str], list[Any]]:
    """How the ids `landed` in a table differ from "every acknowledged id exactly once, uncertain
    ones at most once, nothing else", each sorted: the ids landed twice or more, the acknowledged
    ones missing, those neither acknowledged nor uncertain."""
    counts = Counter(landed)
    sent = set(acknowledged)
    doubled = sorted(i for i, n in counts.items() if n > 1)
    missing = sorted(sent - set(counts))
    unexpected = sorted(set(counts) - sent - set(uncertain), key=str)
    return doubled, missing, unexpected


def spans_and_points_committed(appender: Appender) -> bool:
    """Whether this process has committed spans and data points (`Stats`)."""
    committed = appender.committed_per_signal()
    return committed["traces"] > 0 and committed["metrics"] > 0


# ---- SDK exporters: every column ----------------------------------------------------------------


@pytest.mark.parametrize("http", [False, True], ids=["grpc", "http"])
def test_sdk_spans_land_column_for_column(http: bool, appender: Appender) -> None:
    spans = sdk_spans("checkout") + sdk_spans("payments")
    export_spans(appender.ports, spans, http=http)
    appender.flush_http()
    rows = assert_rows(appender, "traces", span_rows(encode_spans(spans)), same_span)
    assert_duckdb_agrees(appender, "traces")

    # What the comparison covers, spelled out for the checkout spans.
    mine = {row["span_name"]: row for row in rows if row["service_name"] == "checkout"}
    server, client, job = mine["GET /checkout"], mine["POST /payments"], mine["consume order"]
    remote = (f"{REMOTE_PARENT.trace_id:032x}", f"{REMOTE_PARENT.span_id:016x}")
    assert (server["trace_id"], server["parent_span_id"]) == remote, "the remote parent's trace, the parent's id"
    assert (server["span_kind"], server["trace_state"]) == ("Server", REMOTE_PARENT.trace_state.to_header())
    server_attributes = dict(server["span_attributes"])
    assert (server_attributes["http.response.status_code"], server_attributes["retry"]) == ("503", "true")
    assert json.loads(server_attributes["tags"]) == ["a", "b"]
    (link,) = server["links"]
    assert (link["trace_id"], link["span_id"]) == (f"{LINKED.trace_id:032x}", f"{LINKED.span_id:016x}")
    assert (client["span_kind"], client["status_code"]) == ("Client", "Error")
    assert client["status_message"] == "card declined"
    assert client["parent_span_id"] == server["span_id"] and client["trace_id"] == server["trace_id"]
    assert [event["name"] for event in client["events"]] == ["retry", "gave up"]
    assert mine["render"]["status_code"] == "Ok" and mine["render"]["span_kind"] == "Internal"
    assert mine["failing job"]["status_code"] == "Error" and mine["failing job"]["parent_span_id"] is None
    assert [event["name"] for event in mine["failing job"]["events"]] == ["exception"]
    assert job["span_kind"] == "Consumer" and job["parent_span_id"] is None
    assert job["timestamp"] == datetime(2025, 11, 28, 0, 0, 0, 123456, tzinfo=UTC), "truncated to the microsecond"
    assert job["end_timestamp"] == datetime(2025, 11, 28, 0, 0, 1, 987654, tzinfo=UTC)
    assert job["duration_ns"] == 1_864_197_532
    assert (job["kafka_partition"], job["kafka_offset"]) == (None, None)


@pytest.mark.parametrize("http", [False, True], ids=["grpc", "http"])
def test_sdk_metrics_land_point_for_point(http: bool, appender: Appender) -> None:
    data, trace_id = sdk_metrics("checkout")
    export_metrics(appender.ports, data, http=http)
    appender.flush_http()
    expected = metric_rows(encode_metrics(data))
    assert not expected["metrics_summary"]
    rows = {
        table: assert_rows(appender, table, expected[table], same_point)
        for table in ("metrics_sum", "metrics_gauge", "metrics_histogram", "metrics_exponential_histogram")
    }
    for table in rows:
        assert_duckdb_agrees(appender, table)

    # What the comparison covers, spelled out.
    requests_r0 = point(rows["metrics_sum"], "requests", route="/r0")
    assert (requests_r0["value"], requests_r0["aggregation_temporality"], requests_r0["is_monotonic"]) == (
        35.0,
        "Cumulative",
        True,
    )
    assert requests_r0["metric_unit"] == "1" and requests_r0["metric_description"] == "requests served"
    in_flight_r0 = point(rows["metrics_sum"], "in_flight", route="/r0")
    assert (in_flight_r0["value"], in_flight_r0["is_monotonic"]) == (-1.0, False)
    for route in ("/r0", "/r1", "/r2"):
        (exemplar,) = point(rows["metrics_sum"], "requests", route=route)["exemplars"]
        assert exemplar["trace_id"] == trace_id and re.fullmatch(r"[0-9a-f]{16}", exemplar["span_id"] or ""), exemplar
        assert set(dict(exemplar["filtered_attributes"])) == {"user"}, "the attribute the View dropped"
    assert point(rows["metrics_gauge"], "queue_depth", queue="orders")["value"] == 7.0, "as_int as a double"
    assert point(rows["metrics_gauge"], "temperature", room="r0")["value"] == 23.5
    latency = point(rows["metrics_histogram"], "latency", route="/r0")
    assert latency["explicit_bounds"] == [0.0, 5.0, 10.0, 25.0, 50.0] and len(latency["bucket_counts"]) == 6
    assert (sum(latency["bucket_counts"]), latency["count"], latency["sum"]) == (5, 5, 45.0)
    assert (latency["min"], latency["max"], latency["aggregation_temporality"]) == (0.0, 18.0, "Cumulative")
    assert latency["exemplars"] and {e["trace_id"] for e in latency["exemplars"]} == {trace_id}
    payload = point(rows["metrics_exponential_histogram"], "payload_size", route="/r1")
    assert sum(payload["positive_bucket_counts"]) + payload["zero_count"] == payload["count"] == 5
    assert (payload["min"], payload["max"], payload["sum"]) == (11.0, 131.0, 355.0)


@pytest.mark.parametrize("http", [False, True], ids=["grpc", "http"])
def test_a_summary_and_exemplars_with_trace_ids_land(http: bool, appender: Appender) -> None:
    request = summary_and_exemplar_request()
    response = export_request(appender, "metrics", request, http=http)
    assert response.partial_success.rejected_data_points == 0, response
    appender.flush_http()
    expected = metric_rows(request)
    summaries = assert_rows(appender, "metrics_summary", expected["metrics_summary"], same_point)
    gauges = assert_rows(appender, "metrics_gauge", expected["metrics_gauge"], same_point)
    assert_duckdb_agrees(appender, "metrics_summary")
    assert_duckdb_agrees(appender, "metrics_gauge")

    get = point(summaries, "rpc.server.duration", **{"rpc.method": "Get"})
    assert get["quantile_values"] == [{"quantile": q, "value": v} for q, v in SUMMARY_QUANTILES]
    assert (get["count"], get["sum"], get["start_timestamp"]) == (1200, 301.5, timestamp(BASE_NS))
    put = point(summaries, "rpc.server.duration", **{"rpc.method": "Put"})
    assert (put["flags"], put["quantile_values"] or []) == (1, [])
    assert dict(put["attributes"])["rpc.shard"] == "3"
    assert (get["resource_schema_url"], get["scope_name"], dict(get["scope_attributes"])) == (
        "https://opentelemetry.io/schemas/1.26.0",
        "billing.rpc",
        {"library.language": "rust"},
    )
    (exemplar,) = point(gauges, "queue.depth", queue="orders")["exemplars"]
    assert (exemplar["trace_id"], exemplar["span_id"]) == (EXEMPLAR_TRACE_ID.hex(), EXEMPLAR_SPAN_ID.hex())
    assert (exemplar["timestamp"], exemplar["value"]) == (datetime(2025, 11, 28, 0, 0, 0, 623457, tzinfo=UTC), 7.0)
    assert dict(exemplar["filtered_attributes"]) == {"user": "alice", "attempt": "2"}
    (untraced,) = point(gauges, "queue.depth", queue="refunds")["exemplars"]
    assert (untraced["trace_id"], untraced["span_id"], untraced["value"]) == (None, None, 0.5)


# ---- telemetrygen and the Collector -------------------------------------------------------------

# telemetrygen's metric types and the table each lands in.
TELEMETRYGEN_TYPES = {
    "Gauge": "metrics_gauge",
    "Sum": "metrics_sum",
    "Histogram": "metrics_histogram",
    "ExponentialHistogram": "metrics_exponential_histogram",
}


@pytest.mark.parametrize("http", [False, True], ids=["grpc", "http"])
def test_telemetrygen_traces_and_metrics_land_in_their_tables(http: bool, appender: Appender) -> None:
    port = appender.ports.otlp_http if http else appender.ports.otlp_grpc
    common = telemetrygen_args(f"127.0.0.1:{port}", http=http)
    traces = 150
    run_tool("telemetrygen", "traces", *common, "--traces", str(traces), "--service", "gen", timeout=120, check=True)
    points = {"Gauge": 40, "Sum": 50, "Histogram": 60, "ExponentialHistogram": 30}
    for metric_type, count in points.items():
        name = f"gen.{TELEMETRYGEN_TYPES[metric_type]}"
        run_tool(
            "telemetrygen", "metrics", *common, "--metrics", str(count), "--metric-type", metric_type,
            "--otlp-metric-name", name, "--service", "gen", timeout=120, check=True,
        )  # fmt: skip
    appender.flush_http()

    spans = table_rows(appender, "traces")
    assert len(spans) == 2 * traces, "a parent and one child span per trace"
    assert {row["service_name"] for row in spans} == {"gen"}
    ids = Counter(row["span_id"] for row in spans)
    assert len(ids) == len(spans), f"spans in the table twice: {[i for i, n in ids.items() if n > 1][:3]}"
    children = [row for row in spans if row["parent_span_id"] is not None]
    assert len(children) == traces and all(row["parent_span_id"] in ids for row in children)
    for metric_type, count in points.items():
        table = TELEMETRYGEN_TYPES[metric_type]
        rows = table_rows(appender, table)
        assert len(rows) == count, f"{table}: {len(rows)} rows, telemetrygen sent {count} {metric_type} points"
        assert {(row["service_name"], row["metric_name"]) for row in rows} == {("gen", f"gen.{table}")}
    assert snapshot_counts(appender)["metrics_summary"] == 0


@pytest.mark.parametrize("http", [False, True], ids=["grpc", "http"])
def test_a_collector_in_front_forwards_traces_and_metrics(
    http: bool, appender: Appender, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The README's copy-paste Collector configs (otlp receiver -> batch -> otlp_grpc (zstd) /
    otlp_http (gzip) exporter) in front of the appender: telemetrygen's spans and points all
    land, and the SDK's column for column."""
    if http:
        config = COLLECTOR_CONFIGS / "otlp-http-to-ingester.yaml"
        overrides = {"exporters.otlp_http.endpoint": f"http://127.0.0.1:{appender.ports.otlp_http}"}
    else:
        config = COLLECTOR_CONFIGS / "otlp-grpc-to-ingester.yaml"
        overrides = {"exporters.otlp_grpc.endpoint": appender.ports.otlp_grpc_target}
    collector = Collector(tmp_path / "collector", config, overrides)
    request.node.stash.setdefault(APPENDERS, []).append(collector)
    collector.start_and_wait()

    target = telemetrygen_args(collector.ports.otlp_grpc_target, http=False)
    run_tool("telemetrygen", "traces", *target, "--traces", "100", "--service", "front", timeout=120, check=True)
    for metric_type, count in (("Histogram", 120), ("Sum", 80)):
        run_tool(
            "telemetrygen", "metrics", *target, "--metrics", str(count), "--metric-type", metric_type,
            "--service", "front", "--otlp-metric-name", f"front.{metric_type.lower()}", timeout=120, check=True,
        )  # fmt: skip
    spans = sdk_spans("checkout")
    data, _ = sdk_metrics("checkout")
    export_spans(collector.ports, spans, http=http)
    export_metrics(collector.ports, data, http=http)

    expected_points = metric_rows(encode_metrics(data))
    sdk_points = sum(map(len, expected_points.values()))
    wait_collector_sent(collector, 200 + len(spans), 200 + sdk_points)
    appender.flush_http()

    traces = table_rows(appender, "traces")
    assert Counter(row["service_name"] for row in traces) == {"front": 200, "checkout": len(spans)}
    mine = [row for row in traces if row["service_name"] == "checkout"]
    problems = match_rows(mine, span_rows(encode_spans(spans)), same_span)
    assert not problems, "the SDK's spans differ after the Collector:\n  " + "\n  ".join(problems)
    for table, front in (
        ("metrics_histogram", 120),
        ("metrics_sum", 80),
        ("metrics_gauge", 0),
        ("metrics_exponential_histogram", 0),
    ):
        rows = table_rows(appender, table)
        assert sum(row["service_name"] == "front" for row in rows) == front, table
        mine = [row for row in rows if row["service_name"] == "checkout"]
        problems = match_rows(mine, expected_points[table], same_point)
        assert not problems, f"the SDK's points in {table} differ after the Collector:\n  " + "\n  ".join(problems)


# ---- the tables --------------------------------------------------------------------------------


def type_text(kind: IcebergType) -> str:
    """An Iceberg type without field ids: `map<string,string>`, `list<struct<name:type,...>>`."""
    if isinstance(kind, MapType):
        return f"map<{type_text(kind.key_type)},{type_text(kind.value_type)}>"
    if isinstance(kind, ListType):
        return f"list<{type_text(kind.element_type)}>"
    if isinstance(kind, StructType):
        return "struct<" + ",".join(f"{f.name}:{type_text(f.field_type)}" for f in kind.fields) + ">"
    return str(kind)


def shuffled_span_requests(n: int, batch: int, seed: int) -> list[ExportTraceServiceRequest]:
    """`n` spans in random order, `batch` per request: three services, four names (one empty),
    start times all over a day that crosses midnight."""
    rng = random.Random(seed)
    requests_out = []
    for first in range(0, n, batch):
        by_service: dict[str, list[Span]] = {}
        for i in range(first, min(first + batch, n)):
            name = rng.choice(["GET /cart", "POST /pay", "render", ""])
            span = proto_span(i, name, LAYOUT_START_NS + rng.randrange(DAY_NS))
            by_service.setdefault(rng.choice(["checkout", "cart", "auth"]), []).append(span)
        requests_out.append(
            ExportTraceServiceRequest(
                resource_spans=[
                    ResourceSpans(resource=service_resource(service), scope_spans=[ScopeSpans(spans=spans)])
                    for service, spans in by_service.items()
                ]
            )
        )
    return requests_out


def shuffled_metric_requests(per_type: int, batch: int, seed: int) -> list[ExportMetricsServiceRequest]:
    """`per_type` data points of each metric type in random order, `batch` of each per request:
    three services, three metric names, times all over a day that crosses midnight."""
    rng = random.Random(seed)
    requests_out = []
    for first in range(0, per_type, batch):
        by_service: dict[str, dict[tuple[str, str], list[int]]] = {}
        for kind in METRIC_TYPES:
            for _ in range(first, min(first + batch, per_type)):
                metrics = by_service.setdefault(rng.choice(["checkout", "cart", "auth"]), {})
                times = metrics.setdefault((kind, rng.choice(["requests", "bytes", "errors"])), [])
                times.append(LAYOUT_START_NS + rng.randrange(DAY_NS))
        requests_out.append(
            ExportMetricsServiceRequest(
                resource_metrics=[
                    ResourceMetrics(
                        resource=service_resource(service),
                        scope_metrics=[
                            ScopeMetrics(metrics=[point_metric(kind, name, t) for (kind, name), t in metrics.items()])
                        ],
                    )
                    for service, metrics in by_service.items()
                ]
            )
        )
    return requests_out


def nulls_first(value: Any) -> tuple[bool, Any]:
    return (value is not None, value)


def utc_day(moment: datetime) -> date:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC).date()


def test_tables_are_v2_day_partitioned_and_every_file_is_sorted(appender: Appender) -> None:
    spans, per_type = 600, 300
    for traces_request in shuffled_span_requests(spans, 100, seed=11):
        export_request(appender, "traces", traces_request, http=False)
    for metrics_request_ in shuffled_metric_requests(per_type, 50, seed=12):
        export_request(appender, "metrics", metrics_request_, http=True)
    appender.flush_http()

    for table, columns in EXPECTED_COLUMNS.items():
        lake_table = load_signal_table(appender, table)
        assert lake_table.format_version == 2, table
        assert {f.name: type_text(f.field_type) for f in lake_table.schema().fields} == columns, table
        assert [f.name for f in lake_table.schema().fields] == list(columns), f"{table}: column order"
        assert {key: lake_table.properties.get(key) for key in TABLE_PROPERTIES} == TABLE_PROPERTIES, table

        (partition_field,) = lake_table.spec().fields
        assert (partition_field.name, type(partition_field.transform)) == ("timestamp_day", DayTransform), table
        assert lake_table.schema().find_field(partition_field.source_id).name == "timestamp"
        order = [
            (lake_table.schema().find_field(f.source_id).name, type(f.transform), f.direction, f.null_order)
            for f in lake_table.sort_order().fields
        ]
        sort_columns = SORT_COLUMNS[table]
        assert order == [(c, IdentityTransform, SortDirection.ASC, NullOrder.NULLS_FIRST) for c in sort_columns], table

        files = [(task.file.file_path, task.file.record_count) for task in lake_table.scan().plan_files()]
        assert sum(count for _, count in files) == (spans if table == "traces" else per_type), (table, files)
        days: set[date] = set()
        for path, count in files:
            rows = read_data_file(lake_table, path)
            assert rows.num_rows == count, path
            keys = list(zip(*(rows.column(c).to_pylist() for c in sort_columns), strict=True))
            assert keys == sorted(keys, key=lambda k: tuple(map(nulls_first, k))), f"{path}: rows not in {sort_columns}"
            match = re.search(r"timestamp_day=(\d{4}-\d{2}-\d{2})", path)
            assert match, f"{path} is not in a day partition"
            day = date.fromisoformat(match.group(1))
            assert {utc_day(t) for t in rows.column("timestamp").to_pylist()} == {day}, path
            days.add(day)
        assert days == LAYOUT_DAYS, f"{table}: files of days {sorted(days)}"


def test_a_flush_commits_one_snapshot_per_table_with_rows(appender: Appender) -> None:
    nothing = dict.fromkeys(DEFAULT_TABLES, 0)
    assert snapshot_counts(appender) == nothing

    export_request(appender, "traces", spans_request("checkout", [proto_span(1, "a", BASE_NS)]), http=False)
    gauge_and_sum = [point_metric("gauge", "g", [BASE_NS]), point_metric("sum", "s", [BASE_NS, BASE_NS + 1])]
    export_request(appender, "metrics", metrics_request("checkout", gauge_and_sum), http=True)
    export_request(appender, "traces", spans_request("cart", [proto_span(2, "b", BASE_NS)]), http=True)
    appender.flush_http()
    first = {**nothing, "traces": 1, "metrics_gauge": 1, "metrics_sum": 1}
    assert snapshot_counts(appender) == first

    send(appender.ports, loghub_records("Apache", 20, tag="with-metrics"))
    histogram = [point_metric("histogram", "h", [BASE_NS])]
    export_request(appender, "metrics", metrics_request("checkout", histogram), http=False)
    appender.flush_grpc()
    second = {**first, "logs": 1, "metrics_histogram": 1}
    assert snapshot_counts(appender) == second

    appender.flush_http()  # nothing staged: nothing to commit
    assert snapshot_counts(appender) == second

    export_request(appender, "traces", spans_request("checkout", [proto_span(3, "c", BASE_NS)]), http=False)
    appender.flush_signal()
    wait_until(lambda: snapshot_counts(appender)["traces"] == 2, timeout=30, what="a second traces snapshot")
    assert snapshot_counts(appender) == {**second, "traces": 2}
    assert sorted(row["span_name"] for row in table_rows(appender, "traces")) == ["a", "b", "c"]
    assert len(table_rows(appender, "metrics_sum")) == 2


def test_table_names_come_from_the_config(make_appender: AppenderFactory) -> None:
    appender = make_appender({"iceberg": {"traces_table": "spans", "metrics_table_prefix": "otel_"}})
    export_request(appender, "traces", spans_request("checkout", [proto_span(1, "a", BASE_NS)]), http=False)
    export_request(appender, "metrics", summary_and_exemplar_request(), http=False)
    appender.flush_http()
    names = {ident[-1] for ident in lake_catalog(appender).list_tables("default")}
    assert {"spans", "otel_gauge", "otel_summary"} <= names, names
    assert not names & {"traces", "metrics_gauge", "metrics_summary"}, names
    assert [row["span_name"] for row in table_rows(appender, "traces")] == ["a"]  # table_name: default.spans
    assert len(table_rows(appender, "metrics_summary")) == 2  # default.otel_summary


# ---- refusals, crashes, switches ----------------------------------------------------------------


@pytest.mark.parametrize("http", [False, True], ids=["grpc", "http"])
def test_spans_with_malformed_ids_are_refused_alone(http: bool, appender: Appender) -> None:
    good = [proto_span(i, f"good {i}", BASE_NS + i * 1_000) for i in range(3)]
    good.append(proto_span(3, "good child", BASE_NS, parent_span_id=good[0].span_id, kind=Span.SPAN_KIND_CLIENT))
    linked = Span.Link(trace_id=good[0].trace_id, span_id=good[0].span_id, trace_state="vendor=v1")
    good.append(
        proto_span(
            4,
            "good link",
            BASE_NS,
            trace_state="lake=1",
            links=[linked],
            events=[Span.Event(time_unix_nano=BASE_NS + 999, name="checked", attributes=key_values({"ok": True}))],
            status=ProtoStatus(code=ProtoStatus.STATUS_CODE_ERROR, message="declined"),
        )
    )
    bad = [
        Span(trace_id=b"\x01\x02\x03", span_id=bytes(range(1, 9)), name="short trace id", start_time_unix_nano=BASE_NS),
        Span(trace_id=bytes(range(17)), span_id=bytes(range(1, 9)), name="long trace id", start_time_unix_nano=BASE_NS),
        Span(trace_id=bytes(range(16)), span_id=bytes(range(7)), name="short span id", start_time_unix_nano=BASE_NS),
        proto_span(10, "bad link", BASE_NS, links=[Span.Link(trace_id=bytes(range(16)), span_id=bytes(5))]),
    ]
    mixed = [good[0], bad[0], good[1], bad[1], bad[2], good[2], bad[3], good[3], good[4]]
    response = export_request(appender, "traces", spans_request("checkout", mixed), http=http)
    partial = response.partial_success
    assert partial.rejected_spans == len(bad), partial
    assert "trace_id" in partial.error_message, partial
    appender.flush_http()
    rows = assert_rows(appender, "traces", span_rows(spans_request("checkout", good)), same_span)
    (row,) = [row for row in rows if row["span_name"] == "good link"]
    assert (row["trace_state"], row["status_code"], row["status_message"]) == ("lake=1", "Error", "declined")
    assert [(link["span_id"], link["trace_state"]) for link in row["links"]] == [(good[0].span_id.hex(), "vendor=v1")]


def test_kill9_after_acknowledged_exports_keeps_each_span_and_point_once(appender: Appender) -> None:
    spans = sdk_spans("checkout") + sdk_spans("payments")
    data, _ = sdk_metrics("checkout")
    handmade = summary_and_exemplar_request()
    export_spans(appender.ports, spans, http=False)  # acknowledged: durable in staging from here on
    export_metrics(appender.ports, data, http=True)
    export_request(appender, "metrics", handmade, http=False)
    appender.kill9()
    assert set(snapshot_counts(appender).values()) == {0}, "nothing was flushed before the kill"

    expected_spans = span_rows(encode_spans(spans))
    expected_points = metric_rows(encode_metrics(data), handmade)

    def assert_each_once() -> None:
        assert_rows(appender, "traces", expected_spans, same_span)
        for table, rows in expected_points.items():
            assert_rows(appender, table, rows, same_point)

    appender.start_and_wait()
    appender.flush_http()  # commits on start-up or here, either way exactly once
    assert_each_once()

    # A second hard stop after the commit must not bring anything back a second time.
    appender.kill9()
    appender.start_and_wait()
    appender.flush_http()
    assert_each_once()


def test_traces_switched_off_are_unimplemented_while_logs_and_metrics_land(make_appender: AppenderFactory) -> None:
    appender = make_appender({"signals": {"traces": False}})
    payload = encode_spans(sdk_spans("checkout")).SerializeToString()
    assert grpc_call(appender, TRACE_EXPORT, payload)[0] == grpc.StatusCode.UNIMPLEMENTED
    assert post(appender, "/v1/traces", payload).status_code == 404

    specs = loghub_records("Apache", 60, tag="traces-off")
    send(appender.ports, specs)
    data, _ = sdk_metrics("checkout")
    export_metrics(appender.ports, data, http=False)
    appender.flush_http()
    problems = table_mismatches(read_table(appender), specs)
    assert not problems, "logs table differs from what was sent:\n  " + "\n  ".join(problems)
    expected = metric_rows(encode_metrics(data))
    assert_rows(appender, "metrics_sum", expected["metrics_sum"], same_point)
    assert snapshot_counts(appender)["traces"] == 0
