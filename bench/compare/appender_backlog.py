"""The Kafka-mode appender alone on one backlog: before/after comparisons without the full run.

    eval "$(./dev env)"; cargo build --release -p telemetry-lake-ingester -p telemetry-lake-appender
    "$(bash integration-tests/setup.sh)/bin/python" bench/compare/appender_backlog.py \
        --bin-dir $CARGO_TARGET_DIR/release --records 20000000 \
        --appender before=/tmp/appender-old --appender after=$CARGO_TARGET_DIR/release/appender

One broker (started here, as `compare.py` does), one topic of `--partitions` partitions filled
by the ingester at saturation (`compare-loadgen`, the same requests as `compare.py`) in runs of
`--fill-seconds` until it holds at least `--records` log records, then each `--appender` in turn
on that same backlog with `compare.py`'s appender run (`bench_appender`: a fresh table and
consumer group, `flush.max_records` 500,000, a last flush once the rest is staged, timed from
its start-up; CPU-s and peak RSS of the appender process only). Optional `--set KEY=VALUE`
(dotted, e.g. `staging.memory_limit=16MiB`) goes to every appender. The figures are printed and
written as JSON to `--json`; with `--profile-dir`, perf samples each run (as `compare.py
--profile` does) into `profile-LABEL.txt`. Nothing is written under bench/ unless asked.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import compare
from compare import Run, Setup, Topics, ab_run, bench_appender, check_loghub, loadgen_binary, note, started_broker


def nested(pairs: list[str]) -> dict[str, Any]:
    """`a.b=v` pairs as {"a": {"b": "v"}}; a quoted part keeps its dots, as in TOML
    (`kafka.consumer."fetch.max.bytes"=4194304`)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        *path, leaf = [part.strip('"') for part in re.findall(r'"[^"]*"|[^.]+', key)]
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin-dir", required=True, help="where the ingester that fills the topic is")
    parser.add_argument("--appender", action="append", required=True, help="LABEL=PATH of an appender binary")
    parser.add_argument("--records", type=int, default=20_000_000, help="at least this many records in the backlog")
    parser.add_argument("--fill-seconds", type=float, default=30, help="seconds of each ingester fill run")
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--set", action="append", default=[], help="appender setting KEY=VALUE (dotted key)")
    parser.add_argument("--json", help="write the figures here (and each run's RSS/CPU samples)")
    parser.add_argument("--keep-logs", help="copy each appender's log here as appender-LABEL.log")
    parser.add_argument(
        "--profile-dir", help="perf-profile each appender run (profile-LABEL.txt here); perf costs it ~1%% CPU"
    )
    args = parser.parse_args()
    overrides = nested(args.set)
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "settings": overrides, "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-backlog-") as tmp:
        tools: dict[str, Any] = {}

        def prepare(broker: Any) -> None:
            tools["loadgen"] = loadgen_binary()
            tools["topics"] = Topics(broker)

        with started_broker(Path(tmp), prepare) as broker:
            topics: Topics = tools["topics"]
            setup = Setup(
                bin_dir=Path(args.bin_dir),
                loadgen=tools["loadgen"],
                loghub=check_loghub(),
                batch=args.batch,
                concurrency=8,
                saturation_concurrency=64,
                partitions=args.partitions,
                workdir=Path(tmp),
            )
            topic = "backlog"
            topics.create([topic], args.partitions)
            records, fills = 0, 0
            while records < args.records:
                # Every fill run writes to the same topic (and counts it whole afterwards).
                run = Run("ingester", "saturation", None, fills, topic)
                fill_setup = Setup(**{**setup.__dict__, "workdir": Path(tmp) / f"fill-{fills}"})
                fill_setup.workdir.mkdir()
                ab_run(fill_setup, broker, topics, run, args.fill_seconds, True)
                records = run.figures["delivered"] + int(run.loadgen["warmup_records"])
                fills += 1
                note(f"backlog: {records:,} records after {fills} fill run(s)")
            results["backlog_records"] = records
            if overrides:
                base = compare.appender_config
                compare.appender_config = lambda *a, **k: compare.merge_config(base(*a, **k), overrides)
            for labelled in args.appender:
                label, _, path = labelled.partition("=")
                bin_dir = Path(tmp) / f"bin-{label}"
                bin_dir.mkdir()
                (bin_dir / "appender").symlink_to(Path(path).resolve())
                run_setup = Setup(**{**setup.__dict__, "bin_dir": bin_dir, "workdir": Path(tmp) / f"run-{label}"})
                run_setup.workdir.mkdir()
                profile = Path(args.profile_dir) / f"profile-{label}.txt" if args.profile_dir else None
                try:
                    measured = bench_appender(run_setup, broker, topic, records, profile=profile)
                finally:
                    # Kept whether the run succeeded or not: a failed run's log says why.
                    if args.keep_logs:
                        Path(args.keep_logs).mkdir(parents=True, exist_ok=True)
                        for log in run_setup.workdir.glob("appender-*/appender.log"):
                            shutil.copy(log, Path(args.keep_logs) / f"appender-{label}.log")
                results["runs"].append({"label": label, "binary": path, **measured["figures"]})
                results.setdefault("samples", {})[label] = measured["samples"]
    for run in results["runs"]:
        print(
            f"{run['label']}: {run['rows']:,} rows, {run['rows_per_s']:,.0f} rows/s, "
            f"{run['cpu_s_per_million']:.2f} CPU-s/M, peak RSS {run['peak_rss_mib']:.0f} MiB"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
