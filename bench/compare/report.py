"""What compare.py measured, as figures per scenario, ratios, targets, Markdown and a PNG chart.

In: the `results` mapping compare.py builds (machine, setup, runs with figures, load generator
timelines and /proc samples, appender, freshness). Out: `summarise` (means per scenario and
system, the ratios ours/Collector, the targets met or missed and by how much), `markdown` (the
tables of results.md) and `chart` (timeline.png: logs/s and RSS over time, one column per
scenario, one colour per system).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# (key in a run's figures, label, unit, which way is better)
FIGURES: tuple[tuple[str, str, str, str], ...] = (
    ("accepted_logs_per_s", "logs/s accepted", "logs/s", "higher"),
    ("delivered_logs_per_s", "logs/s delivered to Kafka", "logs/s", "higher"),
    ("cpu_s_per_million", "CPU-s per million logs delivered", "s", "lower"),
    ("cpu_s_per_million_accepted", "CPU-s per million logs accepted", "s", "lower"),
    ("logs_per_cpu_s", "logs per CPU-second", "logs", "higher"),
    ("peak_rss_mib", "peak RSS", "MiB", "lower"),
    ("kafka_bytes_per_log", "bytes on the broker's disk per log", "bytes", "lower"),
    ("broker_cpu_s_per_million", "broker CPU-s per million logs", "s", "lower"),
    ("latency_p50_ms", "export latency p50", "ms", "lower"),
    ("latency_p99_ms", "export latency p99", "ms", "lower"),
    ("failed_calls", "failed export calls", "", "lower"),
    ("lost_records", "acknowledged, not in Kafka", "records", "lower"),
)
OURS = "ingester"
BASELINE = "collector"
LABELS = {
    "ingester": "ingester",
    "collector": "Collector",
    "collector-sync": "Collector (sync)",
}
COLOURS = {"ingester": "tab:blue", "collector": "tab:orange", "collector-sync": "tab:green"}
# Freshness may exceed flush.interval by this much.
FRESHNESS_SLACK_S = 5.0


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def ratio(ours: float, theirs: float) -> float | None:
    if theirs == 0 or math.isnan(ours) or math.isnan(theirs):
        return None
    return ours / theirs


def summarise(results: Mapping[str, Any]) -> dict[str, Any]:
    """Means per (scenario, system) over the repeats, the ratios to each Collector set-up, and
    the targets."""
    scenarios: dict[str, dict[str, Any]] = {}
    for run in results["runs"]:
        derive(run["figures"])
        scenario = scenarios.setdefault(run["scenario"], {"rate": run["rate"], "systems": {}})
        scenario["systems"].setdefault(run["system"], []).append(run["figures"])
    out: dict[str, Any] = {"scenarios": {}}
    for name, scenario in scenarios.items():
        order = sorted(scenario["systems"], key=lambda s: list(LABELS).index(s) if s in LABELS else len(LABELS))
        means = {
            system: {key: mean([float(f.get(key, "nan")) for f in scenario["systems"][system]]) for key, *_ in FIGURES}
            | {"runs": len(scenario["systems"][system])}
            for system in order
        }
        ratios = {
            other: {key: ratio(means[OURS][key], means[other][key]) for key, *_ in FIGURES}
            for other in means
            if other != OURS and OURS in means
        }
        out["scenarios"][name] = {"rate": scenario["rate"], "means": means, "ratios": ratios}
    out["targets"] = targets(results, out["scenarios"])
    return out


def derive(figures: dict[str, Any]) -> None:
    """Figures computed from others, for results.json files written before they existed."""
    figures.setdefault("cpu_s_per_million_accepted", figures["cpu_seconds"] / max(figures["acknowledged"], 1) * 1e6)


def targets(results: Mapping[str, Any], scenarios: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, judged against each Collector set-up that ran: the batching one (the
    issue's configuration) and the synchronous one (the same delivery guarantee as ours)."""
    found: list[dict[str, Any]] = []
    for name, scenario in scenarios.items():
        means = scenario["means"]
        for baseline in (BASELINE, "collector-sync"):
            if OURS not in means or baseline not in means:
                continue
            label = LABELS[baseline]
            theirs_runs = means[baseline]
            per_cpu = scenario["ratios"][baseline]["logs_per_cpu_s"]
            met = per_cpu is not None and per_cpu >= 2.0
            remarks = [] if met or per_cpu is None else [f"{(1 - per_cpu / 2) * 100:.0f}% short of 2x"]
            if theirs_runs["lost_records"] > 0:
                remarks.append(f"the {label} dropped {theirs_runs['lost_records']:,.0f} acknowledged records per run")
            found.append(
                {
                    "target": f"{name}: ingester logs per CPU-second >= 2x the {label}'s",
                    "value": per_cpu,
                    "threshold": 2.0,
                    "met": met,
                    "shortfall": "; ".join(remarks) or None,
                }
            )
            ours, theirs = means[OURS]["latency_p99_ms"], theirs_runs["latency_p99_ms"]
            found.append(
                {
                    "target": f"{name}: ingester export p99 below the {label}'s",
                    "value": ours,
                    "threshold": theirs,
                    "met": ours < theirs,
                    "shortfall": None if ours < theirs else f"{ours - theirs:.1f} ms above ({ours / theirs:.1f}x)",
                }
            )
    saturation = scenarios.get("saturation", {}).get("means", {}).get(OURS)
    appender = results.get("appender", {}).get("figures")
    if saturation and appender:
        need = saturation["delivered_logs_per_s"]
        got = appender["rows_per_s"]
        found.append(
            {
                "target": "appender Kafka -> Iceberg rows/s >= the ingester's saturation logs/s (delivered, mean)",
                "value": got,
                "threshold": need,
                "met": got >= need,
                "shortfall": None if got >= need else f"{(1 - got / need) * 100:.0f}% short ({got / need:.2f}x)",
            }
        )
    for step in ("appender", "freshness"):
        if "error" in results.get(step, {}):
            found.append(
                {
                    "target": f"{step}: measured",
                    "value": None,
                    "threshold": None,
                    "met": False,
                    "shortfall": results[step]["error"][:300],
                }
            )
    freshness = results.get("freshness")
    if freshness and "error" not in freshness:
        limit = freshness["flush_interval_seconds"] + FRESHNESS_SLACK_S
        p99 = freshness["freshness_p99_s"]
        met = not math.isnan(p99) and p99 <= limit and freshness["not_visible"] == 0
        found.append(
            {
                "target": f"freshness p99 <= flush.interval + {FRESHNESS_SLACK_S:g} s",
                "value": p99,
                "threshold": limit,
                "met": met,
                "shortfall": None
                if met
                else f"{p99 - limit:.1f} s over; {freshness['not_visible']} records never seen",
            }
        )
    return found


# ---- Markdown ----------------------------------------------------------------------------------


def fmt(value: Any, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        if value.is_integer() and unit in ("", "records"):
            return f"{int(value):,}"
        if unit in ("logs/s", "logs", "records", "") and abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def markdown(results: Mapping[str, Any]) -> str:
    summary = results["summary"]
    machine = results["machine"]
    setup = results["setup"]
    lines = [
        "# telemetry-lake ingester vs OpenTelemetry Collector, side by side",
        "",
        f"Run {results['started']}, {results['wall_seconds'] / 60:.0f} min"
        + (" (`--quick`: a smoke run, not a measurement)" if results["quick"] else "")
        + f". Services: `{machine['services_build']}` build. Load average before "
        f"{' '.join(f'{x:.2f}' for x in machine['load_average_before'])}, after "
        f"{' '.join(f'{x:.2f}' for x in machine['load_average_after'])}: the machine was shared "
        "with other work; each run's `other CPU` column says how much CPU the rest of the machine used.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    for key in ("cores", "cpu_model", "cpu_mhz", "memory_gib", "os", "kernel", "rustc", "go", "java", "python"):
        lines.append(f"| {key} | {machine[key]} |")
    lines += [
        f"| Kafka | {machine['kafka']} (one KRaft node, 127.0.0.1) |",
        f"| Collector | {machine['otelcol']} |",
        f"| git | {machine['git_commit']} |",
        f"| services built | {machine.get('services_built', 'unknown')} |",
        "",
        "## Set-up",
        "",
        f"- One load generator for both (`loadgen/`, the embedded benchmark's workload and load loop): "
        f"OTLP/gRPC requests of {setup['batch']} Loghub records (~200-byte bodies, 8 services, 3 attributes), "
        f"one export in flight on each of {setup['saturation_concurrency']} connections at saturation and "
        f"{setup['concurrency']} at the fixed rates (paced).",
        f"- Every run: a fresh topic of {setup['partitions']} partitions, a fresh service process, both writing "
        "zstd-compressed `otlp_proto` records with all-replica acks to the same broker. Delivered = log "
        "records counted in the topic afterwards (every value decoded), minus the load generator's warm-up request.",
        "- CPU and peak RSS are the service process's own (`/proc/PID/stat`, `VmHWM`), from the start of the "
        "load until the service had handed everything it accepted to Kafka.",
        f"- Ingester settings (beside the broker and topic): `{json.dumps(setup.get('ingester_config', {}))}`.",
        "- `Collector`: otlp receiver -> batch processor "
        f"(`send_batch_size: {setup['batch']}`, `timeout: 200ms`) -> kafka exporter (sending queue on): it "
        "answers an export once the batch processor has it, **before** Kafka does. `Collector (sync)`: no "
        "batch processor, no sending queue: it answers after Kafka acknowledged, like the ingester.",
        "",
    ]
    for scenario in summary["scenarios"].values():
        systems = list(scenario["means"])
        others = [s for s in systems if s != OURS]
        title = "saturation" if scenario["rate"] is None else f"fixed rate {scenario['rate']:,.0f} logs/s"
        runs = max(m["runs"] for m in scenario["means"].values())
        lines += [f"## {title}" + (f" (mean of {runs} runs each)" if runs > 1 else ""), ""]
        header = ["figure", *(LABELS.get(s, s) for s in systems), *(f"ingester / {LABELS.get(o, o)}" for o in others)]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for key, label, unit, better in FIGURES:
            cells = [f"{label} ({unit}, {better} is better)" if unit else f"{label} ({better} is better)"]
            cells += [fmt(scenario["means"][s][key], unit) for s in systems]
            cells += [fmt_ratio(scenario["ratios"].get(o, {}).get(key)) for o in others]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    appender = results.get("appender", {}).get("figures")
    if appender:
        lines += [
            "## Appender: Kafka -> Iceberg at saturation",
            "",
            f"A Kafka-mode appender started on the backlog an ingester run left ({appender['rows']:,} records, "
            "topic `" + appender["topic"] + "`), committing every 500,000 rows; timed from its start-up until "
            "`Stats` counted every record committed.",
            "",
            "| figure | value |",
            "|---|---|",
            f"| rows/s (from start-up) | {fmt(appender['rows_per_s'])} |",
            f"| rows/s (from the first record consumed) | {fmt(appender['rows_per_s_from_first_record'])} |",
            f"| CPU-s per million rows | {fmt(appender['cpu_s_per_million'])} |",
            f"| peak RSS (MiB) | {fmt(appender['peak_rss_mib'])} |",
            "",
        ]
    for step in ("appender", "freshness"):
        if "error" in results.get(step, {}):
            lines += [f"## {step.capitalize()}: not measured", "", "```", results[step]["error"], "```", ""]
    freshness = results.get("freshness")
    if freshness and "error" not in freshness:
        lines += [
            "## Freshness: export to queryable",
            "",
            f"Ingester and appender together, `flush.interval = {freshness['flush_interval_seconds']:g}s`, "
            f"{freshness['rate']:,.0f} logs/s for {freshness['duration_seconds']:g} s in requests of "
            f"{freshness['batch']} records, each record with a unique `bench.sequence`. The table was polled every "
            f"{freshness['poll_interval_seconds']:g} s (pyiceberg for the snapshot's data files, DuckDB for their "
            "rows); a record's freshness is the time its snapshot was first seen minus the time its export was sent.",
            "",
            "| figure | value |",
            "|---|---|",
            f"| records acknowledged / seen in the table | {freshness['acknowledged']:,} / {freshness['visible']:,} |",
            f"| achieved rate (logs/s) | {fmt(freshness['achieved_logs_per_s'])} |",
            f"| freshness p50 / p99 / max (s) | {fmt(freshness['freshness_p50_s'])} / "
            f"{fmt(freshness['freshness_p99_s'])} / {fmt(freshness['freshness_max_s'])} |",
            f"| export answered -> visible p50 / p99 (s) | {fmt(freshness['answer_to_visible_p50_s'])} / "
            f"{fmt(freshness['answer_to_visible_p99_s'])} |",
            f"| sent -> snapshot committed (its timestamp) p50 / p99 (s) | {fmt(freshness['send_to_commit_p50_s'])} / "
            f"{fmt(freshness['send_to_commit_p99_s'])} |",
            f"| snapshots seen | {freshness['snapshots_seen']} |",
            "",
        ]
    lines += ["## Targets", "", "| target | measured | needed | met | shortfall |", "|---|---|---|---|---|"]
    for target in summary["targets"]:
        lines.append(
            f"| {target['target']} | {fmt(target['value'])} | {fmt(target['threshold'])} | "
            f"{'yes' if target['met'] else '**no**'} | {target['shortfall'] or ''} |"
        )
    lines += [
        "",
        "## Every run",
        "",
        "| scenario | # | system | accepted logs/s | delivered | CPU-s | CPU-s/M | peak RSS MiB | p50 ms | p99 ms "
        "| slowest ms: 1st s / after | failed calls | lost | load gen CPU-s | broker CPU-s | other CPU-s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        f = run["figures"]
        lines.append(
            f"| {run['scenario']} | {run['repeat']} | {LABELS.get(run['system'], run['system'])} | "
            f"{fmt(f['accepted_logs_per_s'])} | {f['delivered']:,} | {fmt(f['cpu_seconds'])} | "
            f"{fmt(f['cpu_s_per_million'])} | {fmt(f['peak_rss_mib'])} | {fmt(f['latency_p50_ms'])} | "
            f"{fmt(f['latency_p99_ms'])} | {fmt(f.get('slowest_first_second_ms'))} / "
            f"{fmt(f.get('slowest_after_first_second_ms'))} | {f['failed_calls']} | {f['lost_records']:,} | "
            f"{fmt(f['loadgen_cpu_seconds'])} | {fmt(f['broker_cpu_seconds'])} | {fmt(f['other_cpu_seconds'])} |"
        )
    lines += ["", "![throughput and RSS over time](timeline.png)", ""]
    return "\n".join(lines)


# ---- the chart ---------------------------------------------------------------------------------


def delivered_rate(samples: Sequence[Mapping[str, Any]], start: float) -> tuple[list[float], list[float]]:
    """(t, logs/s) from the service's own delivered counter, over about one second."""
    points = [(s["t"] - start, s["delivered"]) for s in samples if s.get("delivered") is not None]
    xs, ys = [], []
    for (t0, d0), (t1, d1) in zip(points, points[2:], strict=False):
        if t1 > t0:
            xs.append(t1)
            ys.append(max(0.0, (d1 - d0) / (t1 - t0)))
    return xs, ys


def chart(results: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first_runs: dict[str, dict[str, Any]] = {}
    for run in results["runs"]:
        first_runs.setdefault(run["scenario"], {}).setdefault(run["system"], run)
    appender = results.get("appender") if "samples" in results.get("appender", {}) else None
    columns = len(first_runs) + (1 if appender else 0)
    fig, axes = plt.subplots(2, columns, figsize=(5.2 * columns, 7.5), squeeze=False, sharex="col")
    for column, (scenario, runs) in enumerate(first_runs.items()):
        top, bottom = axes[0][column], axes[1][column]
        for system, run in runs.items():
            colour = COLOURS.get(system, "tab:grey")
            label = LABELS.get(system, system)
            start = run["loadgen"]["start_unix_seconds"]
            step, elapsed = run["loadgen"]["timeline_step"], run["loadgen"]["elapsed_seconds"]
            # Whole windows only (the last one is cut short by the end of the load), at their middle.
            windows = [w for w in run["loadgen"]["timeline"] if w["t"] <= elapsed + 1e-6]
            top.plot(
                [w["t"] - step / 2 for w in windows],
                [w["acknowledged"] / step for w in windows],
                color=colour,
                label=f"{label} accepted",
            )
            xs, ys = delivered_rate(run["samples"], start)
            top.plot(xs, ys, color=colour, linestyle="--", linewidth=1, label=f"{label} delivered")
            bottom.plot(
                [s["t"] - start for s in run["samples"]],
                [s["rss_kib"] / 1024 for s in run["samples"]],
                color=colour,
                label=label,
            )
        top.set_title(scenario if scenario == "saturation" else f"fixed rate {scenario}")
        top.set_ylabel("logs/s")
        top.set_ylim(bottom=0)
        top.grid(alpha=0.3)
        top.legend(fontsize=7)
        peaks = [max((s["rss_kib"] for s in run["samples"]), default=0) for run in runs.values()]
        if min(peaks, default=0) > 0 and max(peaks) / min(peaks) > 20:
            bottom.set_yscale("log")  # tens of MiB beside gigabytes
            bottom.set_ylabel("RSS (MiB, log scale)")
        else:
            bottom.set_ylim(bottom=0)
            bottom.set_ylabel("RSS (MiB)")
        bottom.set_xlabel("seconds since the load started")
        bottom.grid(alpha=0.3)
        bottom.legend(fontsize=7)
    if appender:
        top, bottom = axes[0][columns - 1], axes[1][columns - 1]
        samples = appender["samples"]
        if samples:
            start = samples[0]["t"]
            top.plot([s["t"] - start for s in samples], [s["committed"] for s in samples], label="committed")
            top.plot([s["t"] - start for s in samples], [s["staged"] for s in samples], label="staged", linestyle="--")
            bottom.plot([s["t"] - start for s in samples], [s["rss_kib"] / 1024 for s in samples], label="appender")
        top.set_title("appender, Kafka -> Iceberg (backlog)")
        top.set_ylabel("rows")
        top.grid(alpha=0.3)
        top.legend(fontsize=7)
        bottom.set_ylabel("RSS (MiB)")
        bottom.set_xlabel("seconds since the appender started")
        bottom.set_ylim(bottom=0)
        bottom.grid(alpha=0.3)
    fig.suptitle(
        f"telemetry-lake ingester vs OpenTelemetry Collector -> Kafka ({results['machine']['cores']} cores, "
        f"{results['started'][:10]}{', quick' if results['quick'] else ''})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    """`python report.py DIR [SUMMARY_DIR]`: rewrites SUMMARY_DIR/results.md and
    SUMMARY_DIR/timeline.png (SUMMARY_DIR defaults to DIR) from DIR/results.json, e.g.
    `report.py out results` for the committed summary of the full run."""
    import sys

    directory = Path(sys.argv[1])
    summary = Path(sys.argv[2]) if len(sys.argv) > 2 else directory
    results = json.loads((directory / "results.json").read_text())
    results["summary"] = summarise(results)
    (directory / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    summary.mkdir(parents=True, exist_ok=True)
    (summary / "results.md").write_text(markdown(results))
    chart(results, summary / "timeline.png")


if __name__ == "__main__":
    main()
