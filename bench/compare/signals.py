"""Logs, traces and metrics through the ingester (and the Collector) at saturation: CPU-s per
million items of each signal.

    eval "$(./dev env)"; cargo build --release -p telemetry-lake-ingester
    "$(bash integration-tests/setup.sh)/bin/python" bench/compare/signals.py \\
        --bin-dir $CARGO_TARGET_DIR/release --systems ingester,collector-sync --repeats 2

One broker (started here, as `compare.py` does). For each signal, each system runs `--repeats`
times, the order reversed every repeat: `compare.py`'s A/B run (a fresh topic and process,
`compare-loadgen --signal` at saturation for `--duration` seconds, the wait until everything
accepted left the process, the topic read back with Kafka's own client). The load is the same
Loghub lines for every signal: a log record, a span or a metric data point per line (see
`bench/workload/src/signals.rs`), `--batch` of them per request. CPU-s and peak RSS are the
service process's only. The figures are printed as a table and written as JSON to `--json`;
nothing is written under bench/ unless asked.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from compare import Run, Setup, Topics, ab_run, check_loghub, loadgen_binary, note, started_broker

SIGNALS = ("logs", "traces", "metrics")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin-dir", required=True, help="where the ingester is")
    parser.add_argument("--systems", default="ingester,collector-sync", help="ingester, collector, collector-sync")
    parser.add_argument("--signals", default=",".join(SIGNALS), help="comma-separated, of " + ", ".join(SIGNALS))
    parser.add_argument("--repeats", type=int, default=2, help="runs per system and signal")
    parser.add_argument("--duration", type=float, default=20, help="seconds of load per run")
    parser.add_argument("--batch", type=int, default=1000, help="items per export request")
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    systems = [s for s in args.systems.split(",") if s]
    signals = [s for s in args.signals.split(",") if s]
    unknown = set(signals) - set(SIGNALS)
    if unknown:
        parser.error(f"unknown signals {sorted(unknown)}")
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-signals-") as tmp:
        tools: dict[str, Any] = {}

        def prepare(broker: Any) -> None:
            tools["loadgen"] = loadgen_binary()
            tools["topics"] = Topics(broker)

        with started_broker(Path(tmp), prepare) as broker:
            topics: Topics = tools["topics"]
            for signal in signals:
                for repeat in range(args.repeats):
                    order = systems if repeat % 2 == 0 else systems[::-1]
                    for system in order:
                        topic = f"{signal}-{system}-{repeat}"
                        workdir = Path(tmp) / topic
                        workdir.mkdir()
                        setup = Setup(
                            bin_dir=Path(args.bin_dir),
                            loadgen=tools["loadgen"],
                            loghub=check_loghub(),
                            batch=args.batch,
                            concurrency=8,
                            saturation_concurrency=64,
                            partitions=args.partitions,
                            workdir=workdir,
                            signal=signal,
                        )
                        topics.create([topic], args.partitions)
                        run = ab_run(
                            setup, broker, topics, Run(system, signal, None, repeat, topic), args.duration, False
                        )
                        f = run.figures
                        results["runs"].append({"signal": signal, "system": system, "repeat": repeat, **f})
                        note(f"{signal} {system} #{repeat}: {f['cpu_s_per_million']:.2f} CPU-s per million items")
    print(
        "| signal | system | items/s accepted | CPU-s per million items | peak RSS MiB | Kafka bytes per item | lost |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        print(
            f"| {r['signal']} | {r['system']} | {r['accepted_logs_per_s']:,.0f} | {r['cpu_s_per_million']:.2f} | "
            f"{r['peak_rss_mib']:.1f} | {r['kafka_bytes_per_log']:.1f} | {r['lost_records']} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
