"""Logs, traces and metrics through the embedded appender at saturation: OTLP in, Iceberg out.
CPU-s per million items committed and peak RSS, per signal, in one run.

    eval "$(./dev env)"; cargo build --release -p telemetry-lake-appender
    "$(bash integration-tests/setup.sh)/bin/python" bench/compare/signals_appender.py \\
        --bin-dir $CARGO_TARGET_DIR/release --repeats 2 --duration 30

For each signal, `--repeats` runs, the signals' order reversed every repeat. A run: a fresh
embedded appender (the default config but for its ports and the lake under a temporary
directory: flush every 30 s or 500,000 items), `compare-loadgen --signal` at saturation for
`--duration` seconds (the same Loghub lines as a log record, a span or a metric data point each,
`--batch` per request, 64 connections), then `POST /flush` until `Stats` counts every
acknowledged item as committed to the signal's tables. At saturation the load generator sends
faster than the appender commits: once staging is full, exports get OTLP's retryable refusal
(`RESOURCE_EXHAUSTED` with a retry delay), counted as refused, not retried. CPU-s (utime + stime) and peak RSS
(VmHWM) are the appender process's own, from just before the load until everything was
committed; items/s are those committed over that time. The figures are printed as a table and
written as JSON to `--json`; nothing is written under bench/ unless asked.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from compare import Setup, check_loghub, loadgen_binary, note, proc_cpu_seconds, proc_status_kib, run_loadgen

from harness.lake import Appender

SIGNALS = ("logs", "traces", "metrics")
# How long the appender may take to commit everything acknowledged after the load.
COMMIT_TIMEOUT = 300.0


def committed(appender: Appender, signal: str) -> int:
    """Items of `signal` the appender's `Stats` counts as committed to its tables."""
    per_signal = appender.committed_per_signal()
    if signal not in per_signal:
        raise RuntimeError(f"the appender's Stats has no signal {signal!r}")
    return per_signal[signal]


def one_run(setup: Setup, bin_dir: Path, signal: str, duration: float) -> dict[str, Any]:
    appender = Appender(setup.workdir / "appender", {"log": {"level": "warn"}})
    appender.binary = bin_dir / "appender"
    try:
        appender.start()
        appender.wait_ready()
        pid = appender.pid
        cpu_before = proc_cpu_seconds(pid)
        started = time.time()
        target = f"127.0.0.1:{appender.ports.otlp_grpc}"
        summary = run_loadgen(setup, target, duration, None, setup.workdir / "load.json")
        expected = int(summary["acknowledged"]) + int(summary["warmup_records"])
        deadline = time.monotonic() + COMMIT_TIMEOUT
        while (done := committed(appender, signal)) < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{done:,} of {expected:,} {signal} items committed after {COMMIT_TIMEOUT:.0f} s")
            response = appender.http("POST", "/flush", timeout=COMMIT_TIMEOUT)
            assert response.status_code == 200, f"POST /flush: {response.status_code} {response.text}"
            time.sleep(0.2)
        finished = time.time()
        cpu = proc_cpu_seconds(pid) - cpu_before
        peak_rss_mib = proc_status_kib(pid, "VmHWM") / 1024
        problems = [line for line in appender.log_text().splitlines() if " ERROR " in line]
        appender.stop()
    finally:
        appender.close()
    if done != expected:
        raise RuntimeError(f"{done:,} {signal} items committed where {expected:,} were acknowledged")
    return {
        "signal": signal,
        "acknowledged": expected,
        "refused": int(summary["refused"]),
        "refusals_by_code": summary.get("errors", {}),
        "committed": done,
        "seconds": finished - started,
        "items_per_s_committed": done / (finished - started),
        "cpu_seconds": cpu,
        "cpu_s_per_million": cpu / max(done, 1) * 1e6,
        "peak_rss_mib": peak_rss_mib,
        "errors_logged": problems[:3],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin-dir", required=True, help="where the appender is")
    parser.add_argument("--signals", default=",".join(SIGNALS), help="comma-separated, of " + ", ".join(SIGNALS))
    parser.add_argument("--repeats", type=int, default=2, help="runs per signal")
    parser.add_argument("--duration", type=float, default=30, help="seconds of load per run")
    parser.add_argument("--batch", type=int, default=1000, help="items per export request")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    signals = [s for s in args.signals.split(",") if s]
    unknown = set(signals) - set(SIGNALS)
    if unknown:
        parser.error(f"unknown signals {sorted(unknown)}")
    loadgen = loadgen_binary()
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-signals-appender-") as tmp:
        for repeat in range(args.repeats):
            for signal in signals if repeat % 2 == 0 else signals[::-1]:
                workdir = Path(tmp) / f"{signal}-{repeat}"
                workdir.mkdir()
                setup = Setup(
                    bin_dir=Path(args.bin_dir),
                    loadgen=loadgen,
                    loghub=check_loghub(),
                    batch=args.batch,
                    concurrency=8,
                    saturation_concurrency=64,
                    partitions=1,
                    workdir=workdir,
                    signal=signal,
                )
                run = one_run(setup, Path(args.bin_dir), signal, args.duration) | {"repeat": repeat}
                results["runs"].append(run)
                note(
                    f"{signal} #{repeat}: {run['committed']:,} committed, {run['items_per_s_committed']:,.0f}/s, "
                    f"{run['cpu_s_per_million']:.2f} CPU-s per million, peak RSS {run['peak_rss_mib']:.0f} MiB"
                )
    print(
        "| signal | repeat | items committed | items/s committed | CPU-s per million items | peak RSS MiB "
        "| items refused (calls by code) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        print(
            f"| {r['signal']} | {r['repeat']} | {r['committed']:,} | {r['items_per_s_committed']:,.0f} | "
            f"{r['cpu_s_per_million']:.2f} | {r['peak_rss_mib']:.0f} | {r['refused']:,} {r['refusals_by_code']} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
