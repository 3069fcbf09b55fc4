"""When the lake's storage fails, the appender pushes back instead of dropping (DESIGN.md guarantee 4).

The table's data directory is replaced by a plain file, so every Parquet write fails (even for
root). Flushes then fail and staged rows stay; once staging is full, exports are refused with
OTLP's retryable answers (HTTP 429/503 + `Retry-After`, gRPC `RESOURCE_EXHAUSTED`/`UNAVAILABLE`
+ `RetryInfo`) and readiness drops. After the repair one flush commits exactly what was
acknowledged.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import requests
from google.rpc import error_details_pb2, status_pb2

from harness.lake import Appender, AppenderFactory, read_table
from harness.wait import wait_until
from otlp_client import (
    LogSpec,
    grpc_export_raw,
    loghub_records,
    otlp_protobuf,
    post_logs,
    response_status,
    table_mismatches,
)

PROTOBUF = "application/x-protobuf"
CONFIG = {
    "flush": {"max_bytes": "100KiB"},
    "staging": {"max_bytes": "300KiB"},
}


def break_storage(appender: Appender) -> Path:
    """Puts a regular file where the table's data directory is; returns its path."""
    data_dir = appender.warehouse_dir / "default" / "logs" / "data"
    if data_dir.exists():
        shutil.rmtree(data_dir)  # nothing committed yet, so nothing referenced is lost
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    data_dir.write_text("not a directory: writes under it fail with ENOTDIR\n")
    return data_dir


def has_retry_info(status: status_pb2.Status) -> bool:
    return any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)


def assert_retryable_http(response: requests.Response) -> None:
    assert response.status_code in (429, 503), (response.status_code, response.content[:300])
    assert response.headers.get("retry-after", "").isdigit(), f"no Retry-After: {dict(response.headers)}"
    status = response_status(response)
    assert status.message and has_retry_info(status), f"Status without RetryInfo: {status}"


def assert_retryable_grpc(appender: Appender, batch: list[LogSpec]) -> None:
    error = grpc_export_raw(appender.ports, otlp_protobuf(batch))
    assert error is not None, "gRPC export accepted while staging is full"
    code = error.code()  # type: ignore[attr-defined]
    assert code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE), (code, error.details())  # type: ignore[attr-defined]
    trailers = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    details = trailers.get("grpc-status-details-bin")
    assert details and has_retry_info(status_pb2.Status.FromString(details)), "no RetryInfo on a retryable refusal"


def fill_until_refused(appender: Appender, max_batches: int = 40) -> tuple[list[LogSpec], requests.Response]:
    """Exports 100-record batches until one is refused; returns the acknowledged records."""
    acknowledged: list[LogSpec] = []
    for i in range(max_batches):
        batch = loghub_records("HDFS", 100, start=100 * i, tag=f"fill-{i}")
        response = post_logs(appender.ports, otlp_protobuf(batch), PROTOBUF)
        if response.status_code != 200:
            return acknowledged, response
        acknowledged += batch
    raise AssertionError(f"{len(acknowledged)} records staged with failing storage and nothing refused")


def test_failing_storage_pushes_back_then_recovers_without_loss(make_appender: AppenderFactory) -> None:
    appender = make_appender(CONFIG)
    broken = break_storage(appender)

    acknowledged, refusal = fill_until_refused(appender)
    assert_retryable_http(refusal)
    assert_retryable_grpc(appender, loghub_records("HDFS", 100, tag="refused-grpc"))
    appender.assert_alive()

    flush = appender.http("POST", "/flush")
    assert flush.status_code >= 500 or flush.status_code == 429, f"a failing flush answered {flush.status_code}"
    stats = appender.stats()
    assert stats["last_flush"]["outcome"] == "failed" and stats["last_flush"]["error"], stats["last_flush"]
    assert stats["appender"]["flush_failures"] >= 1, stats["appender"]
    assert stats["buffer_records"] == len(acknowledged), stats
    assert appender.http("GET", "/readyz").status_code == 503, "ready while refusing every export"
    assert appender.health(appender.ports.otlp_grpc) == "NOT_SERVING"

    broken.unlink()
    appender.flush_http()  # the committer may retry on its own and get there first: fine
    wait_until(lambda: appender.stats()["buffer_records"] == 0, timeout=20, what="staging to drain")
    problems = table_mismatches(read_table(appender), acknowledged)
    assert not problems, "after the repair the table differs from what was acknowledged:\n  " + "\n  ".join(problems)
    wait_until(lambda: appender.health(appender.ports.otlp_grpc) == "SERVING", timeout=10, what="SERVING again")
    assert appender.http("GET", "/readyz").status_code == 200
