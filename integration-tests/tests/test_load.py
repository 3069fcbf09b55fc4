"""Memory stays flat under sustained load (DESIGN.md guarantee 3), bounded in count and time.

Four rounds of the same 128,000 Loghub records (27 MiB of OTLP protobuf), sent by four gRPC
clients at once with flush thresholds in play; the peak RSS of the last round must not run away from
the first, nor past an absolute bound, and every record must be committed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from harness.lake import Appender, AppenderFactory, load_table
from otlp_client import grpc_export_raw, loghub_records, otlp_protobuf

SYSTEMS = ("HDFS", "Hadoop", "OpenStack", "Spark", "Zookeeper", "Linux", "OpenSSH", "Apache")
ROUNDS = 4
RECORDS_PER_BATCH = 2000
BATCHES_PER_SYSTEM = 8
MiB = 1024 * 1024
RSS_LIMIT = 512 * MiB
RSS_GROWTH_LIMIT = 128 * MiB


@contextmanager
def peak_rss(appender: Appender) -> Iterator[list[int]]:
    """Samples VmRSS every 50 ms while the block runs; the peak is in the yielded list."""
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], appender.rss_bytes())
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()


def export(appender: Appender, payload: bytes) -> None:
    error = grpc_export_raw(appender.ports, payload)
    if error is not None:
        appender.assert_alive()
        raise AssertionError(f"export refused under load: {error}")


def test_memory_stays_flat_under_sustained_load(make_appender: AppenderFactory) -> None:
    appender = make_appender(
        {"flush": {"max_records": 50_000, "interval": "2s"}, "staging": {"memory_limit": "128MiB"}}
    )
    # Encoding is the slow part here, so every round sends the same requests again.
    payloads = [
        otlp_protobuf(loghub_records(system, RECORDS_PER_BATCH, start=RECORDS_PER_BATCH * b))
        for b in range(BATCHES_PER_SYSTEM)
        for system in SYSTEMS
    ]
    peaks = []
    for _ in range(ROUNDS):
        with peak_rss(appender) as peak, ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda p: export(appender, p), payloads))
            appender.flush_http()
        peaks.append(peak[0])

    total = ROUNDS * len(SYSTEMS) * BATCHES_PER_SYSTEM * RECORDS_PER_BATCH
    summary = load_table(appender).current_snapshot().summary
    assert int(summary["total-records"]) == total
    assert appender.stats()["appender"]["records_committed"] == total
    in_mib = [p // MiB for p in peaks]
    assert max(peaks) < RSS_LIMIT, f"peak RSS per round {in_mib} MiB, limit {RSS_LIMIT // MiB} MiB"
    assert peaks[-1] - peaks[0] < RSS_GROWTH_LIMIT, f"peak RSS per round {in_mib} MiB keeps growing"
