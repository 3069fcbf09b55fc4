"""OTLP log records for the tests and the ways a real client sends them.

`LogSpec` is one log record described once, independent of the wire: `sdk_records` turns specs
into OpenTelemetry SDK records for the real exporters (gRPC, HTTP/protobuf, gzip), `otlp_json`
builds the OTLP/JSON document per the spec (hex ids, int64 as strings), and `expected_row` says
what the appender must write to the Iceberg table for it. `loghub_records` makes specs from the
shared Loghub files: body = the line, `service.name` = the system.
"""

from __future__ import annotations

import base64
import enum
import gzip
import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pyarrow as pa
import requests
import zstandard
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

from harness.clients import GRPC_CHANNEL_OPTIONS, http_session
from harness.paths import loghub_dir
from harness.ports import Ports

# BoundedAttributes warns for each attribute it evicts, which is the point in dropped-count tests.
logging.getLogger("opentelemetry.attributes").setLevel(logging.ERROR)

AttrValue = str | bool | int | float | list[Any] | dict[str, Any] | bytes

LOGS_EXPORT_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
RECORD_ID = "record.id"
SCOPE_NAME = "telemetry-lake-integration-tests"
SCOPE_VERSION = "1.0.0"
# Two minutes before midnight UTC, so 2,000 records 100 ms apart span two day partitions.
LOGHUB_BASE_NS = int(datetime(2026, 11, 27, 23, 58, tzinfo=UTC).timestamp()) * 10**9
LOGHUB_STEP_NS = 100_000_000

SEVERITIES: tuple[tuple[str, int, str], ...] = (
    ("FATAL", 21, "FATAL"),
    ("ERROR", 17, "ERROR"),
    ("WARN", 13, "WARN"),
    ("DEBUG", 5, "DEBUG"),
)


@dataclass(frozen=True)
class LogSpec:
    """One OTLP log record and the resource and scope it is sent under."""

    body: AttrValue
    service: str
    time_ns: int
    observed_ns: int
    severity_number: int = 9
    severity_text: str = "INFO"
    attributes: Mapping[str, AttrValue] = field(default_factory=dict)
    trace_id: str = ""
    span_id: str = ""
    trace_flags: int = 0
    event_name: str = ""
    dropped_attributes_count: int = 0
    resource_attributes: Mapping[str, AttrValue] = field(default_factory=dict)
    resource_schema_url: str = ""
    scope_name: str = SCOPE_NAME
    scope_version: str = SCOPE_VERSION
    scope_attributes: Mapping[str, AttrValue] = field(default_factory=dict)
    scope_schema_url: str = ""

    @property
    def all_resource_attributes(self) -> dict[str, AttrValue]:
        return {"service.name": self.service, **self.resource_attributes}

    def resource_key(self) -> str:
        return json.dumps([self.all_resource_attributes, self.resource_schema_url], sort_keys=True, default=str)

    def scope_key(self) -> str:
        return json.dumps(
            [self.scope_name, self.scope_version, self.scope_attributes, self.scope_schema_url],
            sort_keys=True,
            default=str,
        )


# ---- test data --------------------------------------------------------------------------------


def severity_of(line: str) -> tuple[int, str]:
    upper = line.upper()
    for word, number, text in SEVERITIES:
        if word in upper:
            return number, text
    return 9, "INFO"


def loghub_lines(system: str) -> list[str]:
    path = loghub_dir() / f"{system}_2k.log"
    # The files are CRLF (Apache also has bare CRs); a record body is the line without them.
    return [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line]


def loghub_records(system: str, n: int, *, start: int = 0, tag: str = "") -> list[LogSpec]:
    """`n` records from `<System>_2k.log` beginning at line `start` (wrapping around).

    Each carries `record.id` (`<tag or system>:<position>`, a string unique across a test when
    batches get distinct tags or starts) and `loghub.line` (the position, an int attribute), so
    tests can tell records apart even where lines repeat.
    """
    lines = loghub_lines(system)
    specs = []
    for i in range(start, start + n):
        line = lines[i % len(lines)]
        number, text = severity_of(line)
        attributes: dict[str, AttrValue] = {"record.id": f"{tag or system}:{i}", "loghub.line": i}
        specs.append(
            LogSpec(
                body=line,
                service=system,
                time_ns=LOGHUB_BASE_NS + i * LOGHUB_STEP_NS,
                observed_ns=LOGHUB_BASE_NS + i * LOGHUB_STEP_NS + 1_000,
                severity_number=number,
                severity_text=text,
                attributes=attributes,
            )
        )
    return specs


# ---- SDK records (for the real exporters) -----------------------------------------------------


def _sdk_attributes(spec: LogSpec) -> Mapping[str, Any]:
    if not spec.dropped_attributes_count:
        return dict(spec.attributes)
    # The SDK reports what its BoundedAttributes evicted (oldest first) as dropped_attributes_count.
    filler = {f"dropped.{i}": "x" for i in range(spec.dropped_attributes_count)}
    return BoundedAttributes(maxlen=len(spec.attributes), attributes={**filler, **spec.attributes}, immutable=False)


def sdk_records(specs: Sequence[LogSpec]) -> list[ReadableLogRecord]:
    resources: dict[str, Resource] = {}
    scopes: dict[str, InstrumentationScope] = {}
    records = []
    for spec in specs:
        resource = resources.setdefault(
            spec.resource_key(), Resource(spec.all_resource_attributes, spec.resource_schema_url or None)
        )
        scope = scopes.setdefault(
            spec.scope_key(),
            InstrumentationScope(
                spec.scope_name, spec.scope_version, spec.scope_schema_url or None, dict(spec.scope_attributes)
            ),
        )
        context = None
        if spec.trace_id:
            span_context = SpanContext(
                trace_id=int(spec.trace_id, 16),
                span_id=int(spec.span_id or "0", 16),
                is_remote=True,
                trace_flags=TraceFlags(spec.trace_flags),
            )
            context = set_span_in_context(NonRecordingSpan(span_context))
        record = LogRecord(
            timestamp=spec.time_ns,
            observed_timestamp=spec.observed_ns,
            context=context,
            severity_text=spec.severity_text,
            severity_number=SeverityNumber(spec.severity_number),
            body=spec.body,
            attributes=_sdk_attributes(spec),
            event_name=spec.event_name or None,
        )
        records.append(ReadableLogRecord(log_record=record, resource=resource, instrumentation_scope=scope))
    return records


def otlp_protobuf(specs: Sequence[LogSpec]) -> bytes:
    """An `ExportLogsServiceRequest` in protobuf, as the SDK's encoder writes it."""
    return encode_logs(sdk_records(specs)).SerializeToString()


# ---- OTLP/JSON (built by hand from the spec) --------------------------------------------------


def json_any_value(value: AttrValue) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}  # int64 is a decimal string in OTLP/JSON
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, bytes):
        return {"bytesValue": base64.b64encode(value).decode()}
    if isinstance(value, list):
        return {"arrayValue": {"values": [json_any_value(v) for v in value]}}
    if isinstance(value, dict):
        return {"kvlistValue": {"values": json_key_values(value)}}
    raise TypeError(f"no OTLP AnyValue for {value!r}")


def json_key_values(attributes: Mapping[str, AttrValue]) -> list[dict[str, Any]]:
    return [{"key": k, "value": json_any_value(v)} for k, v in attributes.items()]


def json_log_record(spec: LogSpec) -> dict[str, Any]:
    record: dict[str, Any] = {
        "timeUnixNano": str(spec.time_ns),
        "observedTimeUnixNano": str(spec.observed_ns),
        "severityNumber": spec.severity_number,
        "severityText": spec.severity_text,
        "body": json_any_value(spec.body),
        "attributes": json_key_values(spec.attributes),
    }
    if spec.trace_id:
        record["traceId"] = spec.trace_id
    if spec.span_id:
        record["spanId"] = spec.span_id
    if spec.trace_flags:
        record["flags"] = spec.trace_flags
    if spec.event_name:
        record["eventName"] = spec.event_name
    if spec.dropped_attributes_count:
        record["droppedAttributesCount"] = spec.dropped_attributes_count
    return record


def otlp_json(specs: Sequence[LogSpec]) -> dict[str, Any]:
    """`ExportLogsServiceRequest` in OTLP/JSON, grouped by resource, then scope, in input order."""
    resources: dict[str, tuple[LogSpec, dict[str, list[LogSpec]]]] = {}
    for spec in specs:
        _, scopes = resources.setdefault(spec.resource_key(), (spec, {}))
        scopes.setdefault(spec.scope_key(), []).append(spec)
    resource_logs = []
    for first, scopes in resources.values():
        scope_logs = []
        for members in scopes.values():
            head = members[0]
            scope: dict[str, Any] = {"name": head.scope_name, "version": head.scope_version}
            if head.scope_attributes:
                scope["attributes"] = json_key_values(head.scope_attributes)
            scope_log: dict[str, Any] = {"scope": scope, "logRecords": [json_log_record(s) for s in members]}
            if head.scope_schema_url:
                scope_log["schemaUrl"] = head.scope_schema_url
            scope_logs.append(scope_log)
        resource_log: dict[str, Any] = {
            "resource": {"attributes": json_key_values(first.all_resource_attributes)},
            "scopeLogs": scope_logs,
        }
        if first.resource_schema_url:
            resource_log["schemaUrl"] = first.resource_schema_url
        resource_logs.append(resource_log)
    return {"resourceLogs": resource_logs}


# ---- sending ----------------------------------------------------------------------------------


class Transport(enum.Enum):
    GRPC = "grpc"
    GRPC_GZIP = "grpc-gzip"  # the OpenTelemetry Collector's otlp exporter compresses by default
    HTTP_PROTOBUF = "http-protobuf"
    HTTP_PROTOBUF_GZIP = "http-protobuf-gzip"
    HTTP_PROTOBUF_ZSTD = "http-protobuf-zstd"  # no SDK exporter does zstd: sent raw
    HTTP_JSON = "http-json"
    HTTP_JSON_GZIP = "http-json-gzip"


def send(ports: Ports, specs: Sequence[LogSpec], transport: Transport = Transport.GRPC) -> None:
    """Sends `specs` in one export and asserts the appender acknowledged all of them."""
    if transport in (Transport.GRPC, Transport.GRPC_GZIP):
        send_grpc(ports, specs, gzip_body=transport is Transport.GRPC_GZIP)
    elif transport is Transport.HTTP_PROTOBUF_ZSTD:
        send_http_protobuf_zstd(ports, specs)
    elif transport in (Transport.HTTP_PROTOBUF, Transport.HTTP_PROTOBUF_GZIP):
        send_http_protobuf(ports, specs, gzip_body=transport is Transport.HTTP_PROTOBUF_GZIP)
    else:
        send_http_json(ports, specs, gzip_body=transport is Transport.HTTP_JSON_GZIP)


def send_grpc(ports: Ports, specs: Sequence[LogSpec], *, gzip_body: bool = False) -> None:
    exporter = GrpcLogExporter(
        endpoint=ports.otlp_grpc_target,
        insecure=True,
        timeout=30,
        compression=grpc.Compression.Gzip if gzip_body else grpc.Compression.NoCompression,
        channel_options=GRPC_CHANNEL_OPTIONS,
        # Only back-pressure is worth a retry here; any other refusal fails the test at once.
        retryable_error_codes=(grpc.StatusCode.UNAVAILABLE,),
    )
    try:
        result = exporter.export(sdk_records(specs))
    finally:
        exporter.shutdown()
    assert result == LogRecordExportResult.SUCCESS, f"gRPC export of {len(specs)} records: {result}"


def send_http_protobuf(ports: Ports, specs: Sequence[LogSpec], *, gzip_body: bool) -> None:
    session = http_session()
    exporter = HttpLogExporter(
        endpoint=ports.otlp_http_url,
        timeout=30,
        compression=Compression.Gzip if gzip_body else Compression.NoCompression,
        session=session,
    )
    try:
        result = exporter.export(sdk_records(specs))
    finally:
        exporter.shutdown()
        session.close()
    assert result == LogRecordExportResult.SUCCESS, f"HTTP/protobuf export of {len(specs)} records: {result}"


def send_http_protobuf_zstd(ports: Ports, specs: Sequence[LogSpec]) -> None:
    body = zstandard.ZstdCompressor().compress(otlp_protobuf(specs))
    response = post_logs(ports, body, "application/x-protobuf", content_encoding="zstd")
    assert response.status_code == 200, f"HTTP/protobuf+zstd export: {response.status_code} {response.content[:300]!r}"
    reply = ExportLogsServiceResponse.FromString(response.content)
    assert reply.partial_success.rejected_log_records == 0, f"records rejected: {reply.partial_success}"


def send_http_json(ports: Ports, specs: Sequence[LogSpec], *, gzip_body: bool) -> None:
    body = json.dumps(otlp_json(specs)).encode()
    response = post_logs(
        ports,
        gzip.compress(body) if gzip_body else body,
        "application/json",
        content_encoding="gzip" if gzip_body else None,
    )
    assert response.status_code == 200, f"HTTP/JSON export: {response.status_code} {response.text[:500]}"
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    partial = response.json().get("partialSuccess") or {}
    assert int(partial.get("rejectedLogRecords", 0)) == 0, f"records rejected: {partial}"


def post_logs(
    ports: Ports, body: bytes, content_type: str, *, content_encoding: str | None = None
) -> requests.Response:
    """A raw `POST /v1/logs` (for bad input)."""
    headers = {"Content-Type": content_type}
    if content_encoding:
        headers["Content-Encoding"] = content_encoding
    with http_session() as session:
        return session.post(ports.otlp_http_url, data=body, headers=headers, timeout=60)


def grpc_export_raw(ports: Ports, payload: bytes, compression: grpc.Compression | None = None) -> grpc.RpcError | None:
    """Calls `LogsService/Export` with `payload` as the message bytes; the error, None if OK."""
    with grpc.insecure_channel(
        ports.otlp_grpc_target, options=GRPC_CHANNEL_OPTIONS, compression=compression
    ) as channel:
        export = channel.unary_unary(LOGS_EXPORT_METHOD)  # no serializers: bytes go as they are
        try:
            export(payload, timeout=60)
        except grpc.RpcError as error:
            return error
    return None


def response_status(response: requests.Response) -> status_pb2.Status:
    """The `google.rpc.Status` an OTLP/HTTP error response carries, in its declared encoding."""
    content_type = response.headers.get("content-type", "")
    status = status_pb2.Status()
    if content_type.startswith("application/json"):
        json_format.ParseDict(json.loads(response.content), status, ignore_unknown_fields=True)
    elif content_type.startswith("application/x-protobuf"):
        status.ParseFromString(response.content)
    else:
        raise AssertionError(
            f"error response has content-type {content_type!r}, not a google.rpc.Status encoding; "
            f"body: {response.content[:300]!r}"
        )
    return status


# ---- what the table must hold -----------------------------------------------------------------

MAP_COLUMNS = ("resource_attributes", "scope_attributes", "log_attributes")
# The design does not say whether an absent optional string is null or "": accept either.
OPTIONAL_STRINGS = (
    "severity_text",
    "event_name",
    "deployment_environment",
    "scope_name",
    "scope_version",
    "resource_schema_url",
    "scope_schema_url",
)


def timestamp(ns: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)


def expected_row(spec: LogSpec) -> dict[str, Any]:
    """The columns of `default.logs` for a spec in embedded mode; map columns hold raw values."""
    resource = spec.all_resource_attributes
    environment = resource.get("deployment.environment.name", resource.get("deployment.environment"))
    return {
        "timestamp": timestamp(spec.time_ns or spec.observed_ns),
        "observed_timestamp": timestamp(spec.observed_ns),
        "severity_number": spec.severity_number,
        "severity_text": spec.severity_text,
        "body": spec.body,
        "trace_id": spec.trace_id.lower() or None,
        "span_id": spec.span_id.lower() or None,
        "trace_flags": spec.trace_flags,
        "event_name": spec.event_name,
        "service_name": spec.service,
        "deployment_environment": environment,
        "resource_attributes": dict(resource),
        "scope_attributes": dict(spec.scope_attributes),
        "log_attributes": dict(spec.attributes),
        "scope_name": spec.scope_name,
        "scope_version": spec.scope_version,
        "resource_schema_url": spec.resource_schema_url,
        "scope_schema_url": spec.scope_schema_url,
        "dropped_attributes_count": spec.dropped_attributes_count,
        "kafka_partition": None,
        "kafka_offset": None,
    }


def attribute_matches(actual: str | None, expected: AttrValue) -> bool:
    """Strings as is; other values as JSON (plain, or the OTLP/JSON AnyValue form)."""
    if isinstance(expected, str):
        return actual == expected
    try:
        decoded = json.loads(actual or "")
    except ValueError:
        return False
    return decoded == expected or decoded == json_any_value(expected)


def body_matches(actual: str | None, expected: AttrValue) -> bool:
    """String bodies as is; any other AnyValue as OTLP/JSON (the design's rule for `body`)."""
    if isinstance(expected, str):
        return actual == expected
    try:
        return json.loads(actual or "") == json_any_value(expected)
    except ValueError:
        return False


KAFKA_COLUMNS = ("kafka_partition", "kafka_offset")


def row_mismatches(row: Mapping[str, Any], spec: LogSpec, *, from_kafka: bool = False) -> list[str]:
    """Human-readable differences between a table row and what `spec` must become. Rows that
    came through Kafka carry a source position (checked by the Kafka tests themselves)."""
    problems = []
    for column, want in expected_row(spec).items():
        if from_kafka and column in KAFKA_COLUMNS:
            continue
        if column not in row:
            problems.append(f"missing column {column}")
            continue
        got = row[column]
        if column in MAP_COLUMNS:
            got_map = dict(got or {})
            if set(got_map) != set(want):
                problems.append(f"{column}: keys {sorted(got_map)} != {sorted(want)}")
            problems += [
                f"{column}[{k!r}]: {got_map.get(k)!r} does not encode {v!r}"
                for k, v in want.items()
                if k in got_map and not attribute_matches(got_map[k], v)
            ]
        elif column == "body":
            if not body_matches(got, want):
                problems.append(f"body: {got!r} != {want!r}")
        elif column in OPTIONAL_STRINGS and not want:
            if got not in (None, ""):
                problems.append(f"{column}: {got!r}, expected empty")
        elif got != want:
            problems.append(f"{column}: {got!r} != {want!r}")
    return problems


def record_id(spec: LogSpec) -> str:
    value = spec.attributes.get(RECORD_ID)
    assert isinstance(value, str), f"spec without a string {RECORD_ID}: {spec}"
    return value


def table_mismatches(
    table: pa.Table, specs: Sequence[LogSpec], limit: int = 8, *, from_kafka: bool = False
) -> list[str]:
    """Differences between the whole table and `specs`: each spec exactly once (by `record.id`)
    with every column right, and no other row. Empty when the table holds exactly `specs`."""
    rows = table_rows(table)
    ids = Counter(str((row.get("log_attributes") or {}).get(RECORD_ID)) for row in rows)
    wanted = {record_id(spec): spec for spec in specs}
    problems = [f"{rid!r} is in the table {n} times" for rid, n in ids.items() if n > 1 and rid in wanted]
    problems += [f"unexpected row {rid!r}" for rid in ids if rid not in wanted]
    problems += [f"missing row {rid!r}" for rid in wanted if rid not in ids]
    if len(rows) != len(specs):
        problems.insert(0, f"table has {len(rows)} rows, expected {len(specs)}")
    for row in rows:
        spec = wanted.get(str((row.get("log_attributes") or {}).get(RECORD_ID)))
        if spec is not None:
            problems += [f"{record_id(spec)}: {p}" for p in row_mismatches(row, spec, from_kafka=from_kafka)]
        if len(problems) > limit:
            break
    return problems[:limit]


def table_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as dicts, map columns as dicts."""
    rows = table.to_pylist()
    for row in rows:
        for column in MAP_COLUMNS:
            if row.get(column) is not None:
                row[column] = dict(row[column])
    return rows


def spec_body_counts(specs: Iterable[LogSpec]) -> Counter[str]:
    return Counter(str(s.body) for s in specs)
