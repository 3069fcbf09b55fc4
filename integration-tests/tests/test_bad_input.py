"""Bad input gets a clear, non-retryable error and changes nothing else (DESIGN.md guarantee 5).

Each case runs between two good batches on an appender with `otlp.max_recv_msg_size = 1MiB`;
afterwards the process must be healthy and a flush must commit exactly the good records.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from harness.clients import prometheus_samples
from harness.lake import Appender, AppenderFactory, read_table
from harness.ports import Ports
from otlp_client import (
    LogSpec,
    Transport,
    grpc_export_raw,
    loghub_records,
    otlp_json,
    otlp_protobuf,
    post_logs,
    response_status,
    send,
    table_mismatches,
)

MAX_RECV = 1024 * 1024
LIMITED: dict[str, dict[str, object]] = {"otlp": {"max_recv_msg_size": "1MiB"}}
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
INVALID_ARGUMENT = 3
# OTLP's retryable gRPC codes; RESOURCE_EXHAUSTED is retryable only with RetryInfo.
RETRYABLE = {
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
}
RSS_LIMIT = 400 * 1024 * 1024


def json_bytes(specs: list[LogSpec]) -> bytes:
    return json.dumps(otlp_json(specs)).encode()


def oversized_specs() -> list[LogSpec]:
    """A valid request of about 1.5 MiB: 600 HDFS lines padded to 2.5 kB each."""
    return [replace(spec, body=str(spec.body).ljust(2500, ".")) for spec in loghub_records("HDFS", 600, tag="big")]


def gzip_bomb(size: int = 100 * 1024 * 1024) -> bytes:
    """`size` zero bytes gzipped (about 100 kB for 100 MiB), compressed in 1 MiB steps."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip container
    chunk = bytes(1024 * 1024)
    parts = [compressor.compress(chunk) for _ in range(size // len(chunk))]
    return b"".join(parts) + compressor.flush()


def non_hex_trace_id() -> bytes:
    document = otlp_json(loghub_records("Linux", 3, tag="bad-trace"))
    document["resourceLogs"][0]["scopeLogs"][0]["logRecords"][1]["traceId"] = "zz" * 16
    return json.dumps(document).encode()


def length_delimited(field: int, payload: bytes) -> bytes:
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    return varint(field << 3 | 2) + varint(len(payload)) + payload


def deeply_nested_protobuf(depth: int = 5000) -> bytes:
    """A request whose one record's body is an array in an array ... `depth` levels deep."""
    value = b""
    for _ in range(depth):
        value = length_delimited(5, length_delimited(1, value))  # AnyValue.array_value.values
    record = length_delimited(5, value)  # LogRecord.body
    return length_delimited(1, length_delimited(2, length_delimited(2, record)))


def deeply_nested_json(depth: int = 5000) -> bytes:
    body = '{"arrayValue":{"values":[' * depth + "]}}" * depth
    return ('{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":' + body + "}]}]}]}").encode()


@dataclass(frozen=True)
class HttpCase:
    """A bad `POST /v1/logs` and the answer it must get."""

    body: Callable[[], bytes]
    content_type: str
    status: int
    encoding: str | None = None
    # The request's format, which an error response must use too (OTLP/HTTP); None: any Status.
    reply_type: str | None = None


HTTP_CASES: dict[str, HttpCase] = {
    "malformed-protobuf": HttpCase(
        lambda: b"\x0a\x64truncated length-delimited field", PROTOBUF, 400, reply_type=PROTOBUF
    ),
    "truncated-json": HttpCase(
        lambda: json_bytes(loghub_records("Linux", 5, tag="cut"))[:-40], JSON, 400, reply_type=JSON
    ),
    "non-hex-trace-id": HttpCase(non_hex_trace_id, JSON, 400, reply_type=JSON),
    "unsupported-content-type": HttpCase(lambda: b"hello", "text/plain", 415),
    "corrupt-gzip": HttpCase(
        lambda: b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage, not deflate",
        PROTOBUF,
        400,
        encoding="gzip",
        reply_type=PROTOBUF,
    ),
    "over-limit": HttpCase(lambda: otlp_protobuf(oversized_specs()), PROTOBUF, 413, reply_type=PROTOBUF),
    "over-limit-after-gunzip": HttpCase(
        lambda: gzip.compress(otlp_protobuf(oversized_specs())), PROTOBUF, 413, encoding="gzip", reply_type=PROTOBUF
    ),
    "gzip-bomb": HttpCase(gzip_bomb, PROTOBUF, 413, encoding="gzip", reply_type=PROTOBUF),
    "unsupported-encoding": HttpCase(lambda: otlp_protobuf(loghub_records("Linux", 2)), PROTOBUF, 415, encoding="br"),
    "deeply-nested-protobuf": HttpCase(deeply_nested_protobuf, PROTOBUF, 400, reply_type=PROTOBUF),
    "deeply-nested-json": HttpCase(deeply_nested_json, JSON, 400, reply_type=JSON),
}


def assert_http_refusal(response_ports: Ports, case: HttpCase) -> None:
    body = case.body()
    response = post_logs(response_ports, body, case.content_type, content_encoding=case.encoding)
    assert response.status_code == case.status, (
        f"expected HTTP {case.status}, got {response.status_code}: {response.content[:300]!r}"
    )
    status = response_status(response)
    assert status.message, f"google.rpc.Status without a message: {status}"
    assert status.code != 0, f"google.rpc.Status with code OK for an error: {status}"
    if case.status == 400:
        assert status.code == INVALID_ARGUMENT, f"a 400 should carry INVALID_ARGUMENT: {status}"
    if case.reply_type:
        assert response.headers.get("content-type", "").startswith(case.reply_type), (
            f"error answered as {response.headers.get('content-type')!r} to a {case.reply_type} request"
        )


def assert_non_retryable_grpc(
    ports: Ports,
    payload: bytes,
    compression: grpc.Compression | None = None,
    expected: set[grpc.StatusCode] | None = None,
) -> None:
    error = grpc_export_raw(ports, payload, compression)
    assert error is not None, "the appender accepted a bad gRPC export"
    code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
    if expected is not None:
        assert code in expected, f"got {code} ({error.details()}), expected one of {expected}"  # type: ignore[attr-defined]
    assert code not in RETRYABLE, (
        f"{code} ({error.details()}) is retryable under OTLP: a client would resend this request forever"  # type: ignore[attr-defined]
    )
    trailers = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "grpc-status-details-bin" in trailers:
        details = status_pb2.Status.FromString(trailers["grpc-status-details-bin"]).details
        assert not any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in details), (
            "RESOURCE_EXHAUSTED with RetryInfo is retryable"
        )


def assert_healthy(appender: Appender) -> None:
    appender.assert_alive()
    assert appender.health(appender.ports.otlp_grpc) == "SERVING"
    assert appender.http("GET", "/healthz").status_code == 200
    assert appender.http("GET", "/readyz").status_code == 200


def assert_only_good_records(appender: Appender, good: list[LogSpec]) -> None:
    reply = appender.flush_http()
    assert reply["records"] == len(good), reply
    problems = table_mismatches(read_table(appender), good)
    assert not problems, "table differs from the good records:\n  " + "\n  ".join(problems)
    totals = appender.stats()["appender"]
    assert totals["records_accepted"] == len(good), totals


@pytest.fixture
def limited(make_appender: AppenderFactory) -> Appender:
    return make_appender(LIMITED)


def client_errors(appender: Appender, transport: str) -> float:
    """The requests counted as client faults on `transport` ("http" or "grpc") in /metrics."""
    return sum(
        value
        for name, value in prometheus_samples(appender.metrics()).items()
        if "request" in name and 'outcome="client_error"' in name and f'transport="{transport}"' in name
    )


def between_good_batches(
    appender: Appender, bad: Callable[[], None], refusals: Mapping[str, int] | None = None
) -> None:
    """Good batch, `bad()`, good batch; then healthy, the refusals counted as client faults in
    /metrics (by transport; default one on http), and exactly the good records committed."""
    before = loghub_records("OpenSSH", 40, tag="before")
    after = loghub_records("OpenSSH", 60, tag="after")
    send(appender.ports, before, Transport.HTTP_PROTOBUF)
    bad()
    send(appender.ports, after, Transport.GRPC)
    assert_healthy(appender)
    for transport, count in (refusals or {"http": 1}).items():
        counted = client_errors(appender, transport)
        assert counted == count, f"{count} bad {transport} requests, {counted} counted as client errors in /metrics"
    assert_only_good_records(appender, before + after)


@pytest.mark.parametrize("name", list(HTTP_CASES))
def test_bad_http_request_is_refused_and_changes_nothing(limited: Appender, name: str) -> None:
    between_good_batches(limited, lambda: assert_http_refusal(limited.ports, HTTP_CASES[name]))


def test_malformed_grpc_message_is_invalid_argument(limited: Appender) -> None:
    garbage = b"\x0a\x64truncated length-delimited field"
    between_good_batches(
        limited,
        lambda: assert_non_retryable_grpc(limited.ports, garbage, expected={grpc.StatusCode.INVALID_ARGUMENT}),
        refusals={"grpc": 1},
    )


def test_deeply_nested_grpc_message_is_invalid_argument(limited: Appender) -> None:
    between_good_batches(
        limited,
        lambda: assert_non_retryable_grpc(
            limited.ports, deeply_nested_protobuf(), expected={grpc.StatusCode.INVALID_ARGUMENT}
        ),
        refusals={"grpc": 1},
    )


def test_oversized_grpc_message_is_refused_for_good(limited: Appender) -> None:
    payload = otlp_protobuf(oversized_specs())
    assert len(payload) > MAX_RECV
    between_good_batches(limited, lambda: assert_non_retryable_grpc(limited.ports, payload), refusals={"grpc": 1})


def test_bombs_keep_memory_bounded(limited: Appender) -> None:
    """Two HTTP gzip bombs and a gRPC one (100 MiB of zeros each): refused, RSS stays bounded."""
    bomb = gzip_bomb()

    def bombard() -> None:
        for _ in range(2):
            response = post_logs(limited.ports, bomb, PROTOBUF, content_encoding="gzip")
            assert response.status_code == 413, (response.status_code, response.content[:200])
        assert_non_retryable_grpc(limited.ports, bytes(100 * 1024 * 1024), compression=grpc.Compression.Gzip)
        rss = limited.rss_bytes()
        assert rss < RSS_LIMIT, f"RSS {rss / 2**20:.0f} MiB after the bombs (limit {RSS_LIMIT / 2**20:.0f} MiB)"

    between_good_batches(limited, bombard, refusals={"http": 2, "grpc": 1})
