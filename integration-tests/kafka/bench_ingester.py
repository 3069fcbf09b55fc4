"""Ingester throughput against a local Kafka broker: sustained logs/s at saturation, CPU-seconds
per million logs, export latency percentiles and peak RSS. With `--appender`, then the appender's
Kafka -> Iceberg rate: an appender in Kafka mode starts on the backlog the ingester wrote and
commits it; rows/s until every delivered record is in the table, its CPU and peak RSS.

    cargo build --release -p telemetry-lake-ingester -p telemetry-lake-appender
    LAKE_BIN_DIR=target/release \
        "$(integration-tests/setup.sh)/bin/python" integration-tests/kafka/bench_ingester.py --duration 30 --appender

A broker (broker.sh) and the ingester start in a temp dir on free ports. Requests of `--batch`
Loghub records (8 services, so every request spreads over partitions) are encoded before the
clock starts; `--concurrency` threads each keep one gRPC export in flight. Every export must be
answered OK; the ingester's `Stats` must count every acknowledged record as delivered.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness.clients import GRPC_CHANNEL_OPTIONS  # noqa: E402
from harness.config import NEVER_FLUSH, merge_config  # noqa: E402
from harness.kafka import Broker, Ingester  # noqa: E402
from harness.lake import Appender  # noqa: E402
from otlp_client import LOGS_EXPORT_METHOD, loghub_records, otlp_protobuf  # noqa: E402

SYSTEMS = ("Apache", "HDFS", "Hadoop", "Linux", "OpenSSH", "OpenStack", "Spark", "Zookeeper")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks of 10 ms


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=64, help="distinct pre-encoded requests")
    parser.add_argument("--appender", action="store_true", help="then measure Kafka -> Iceberg")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-ingester-") as tmp:
        broker = Broker(Path(tmp) / "kafka").start_and_wait()
        ingester = Ingester(Path(tmp) / "ingester", broker, "bench", {"log": {"level": "warn"}})
        try:
            ingester.start_and_wait()
            per_system = max(1, args.batch // len(SYSTEMS))
            payloads = [
                otlp_protobuf(
                    [s for system in SYSTEMS for s in loghub_records(system, per_system, start=i * per_system)]
                )
                for i in range(args.requests)
            ]
            records_per_request = per_system * len(SYSTEMS)
            print(
                f"requests of {records_per_request} records, {statistics.mean(map(len, payloads)) / 1024:.0f} KiB "
                f"each; {args.concurrency} in flight; {args.duration:.0f} s",
                flush=True,
            )

            latencies: list[float] = []
            errors: list[str] = []
            lock = threading.Lock()
            stop_at = time.monotonic() + args.duration

            def worker(index: int) -> None:
                with grpc.insecure_channel(ingester.ports.otlp_grpc_target, options=GRPC_CHANNEL_OPTIONS) as channel:
                    export = channel.unary_unary(LOGS_EXPORT_METHOD)
                    i = index
                    mine: list[float] = []
                    while time.monotonic() < stop_at:
                        started = time.perf_counter()
                        try:
                            export(payloads[i % len(payloads)], timeout=60)
                        except grpc.RpcError as error:
                            with lock:
                                errors.append(f"{error.code()}: {error.details()}")
                            continue
                        mine.append(time.perf_counter() - started)
                        i += args.concurrency
                    with lock:
                        latencies.extend(mine)

            cpu_before = cpu_seconds(ingester.pid)
            started = time.monotonic()
            threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.concurrency)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.monotonic() - started
            cpu = cpu_seconds(ingester.pid) - cpu_before
            stats = ingester.stats()
            acknowledged = len(latencies) * records_per_request
            latencies.sort()

            def pct(p: float) -> float:
                return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

            print(f"exports ok: {len(latencies)}, failed: {len(errors)} {sorted(set(errors))[:3]}")
            print(f"logs acknowledged: {acknowledged} in {elapsed:.1f} s = {acknowledged / elapsed:,.0f} logs/s")
            print(f"ingester CPU: {cpu:.1f} s = {cpu / (acknowledged / 1e6):.2f} CPU-s per million logs")
            print(f"export latency: p50 {pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms, max {latencies[-1] * 1000:.1f} ms")
            print(f"ingester peak RSS: {peak_rss_mib(ingester.pid):.0f} MiB")
            totals = stats["ingester"]
            print(
                f"stats: delivered {totals['records_delivered']}, accepted {totals['records_accepted']}, "
                f"kafka messages {totals['messages_delivered']}, delivery errors {totals['delivery_errors']}"
            )
            assert totals["records_delivered"] >= acknowledged, "an acknowledged record was not delivered"
            if args.appender:
                bench_appender(Path(tmp), broker, int(totals["records_delivered"]))
        finally:
            ingester.close()
            broker.close()


def bench_appender(tmp: Path, broker: Broker, backlog: int) -> None:
    """Starts a Kafka-mode appender on the topic's backlog and times it until all is committed."""
    config = merge_config(
        NEVER_FLUSH,
        {
            "kafka": {"brokers": broker.bootstrap, "topic": "bench", "group_id": "bench-appenders"},
            "flush": {"max_records": 500_000},
            "log": {"level": "warn"},
        },
    )
    appender = Appender(tmp / "appender", config)
    try:
        started = time.monotonic()
        appender.start_and_wait()
        pid = appender.pid
        committed = 0
        last_report = started
        while committed < backlog:
            time.sleep(0.5)
            stats = appender.stats()
            committed = int(stats["appender"]["records_committed"])
            if committed < backlog and stats["buffer_records"] + committed >= backlog:
                appender.flush_http()
            if time.monotonic() - last_report > 5:
                last_report = time.monotonic()
                print(
                    f"  {last_report - started:.0f} s: consumed {stats['appender']['kafka_messages']} messages, "
                    f"staged {stats['buffer_records']}, committed {committed}, "
                    f"last flush {stats['last_flush']['outcome']}",
                    flush=True,
                )
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(pid)
        print(
            f"appender Kafka -> Iceberg: {committed} rows in {elapsed:.1f} s = {committed / elapsed:,.0f} rows/s "
            f"(from start-up), CPU {cpu:.1f} s = {cpu / (committed / 1e6):.2f} CPU-s per million, "
            f"peak RSS {peak_rss_mib(pid):.0f} MiB"
        )
    finally:
        problems = [line for line in appender.log_text().splitlines() if " WARN " in line or " ERROR " in line]
        for line in problems[:10]:
            print(f"  appender log: {line[:400]}")
        appender.close()


if __name__ == "__main__":
    main()
