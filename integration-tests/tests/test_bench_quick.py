"""The side-by-side benchmark (`bench/compare/compare.py --quick`) still runs end to end.

It runs the quick mode against the binaries under test (`LAKE_BIN_DIR`) and checks what it
wrote: `results.json` with figures for the ingester and the Collector in every scenario (all
positive where a positive figure is the only sane one), the ratios ours/Collector, the appender's
rows/s, the freshness run (every acknowledged record seen in the table), the targets judged;
`results.md` with the tables; `timeline.png`, a real PNG with something drawn on it. It never
checks a speed: CI machines differ and the quick mode is a smoke run. The correctness the
benchmark relies on is checked: the ingester delivers every record it acknowledged, and the
topic holds only decodable OTLP requests.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from harness.paths import REPO_DIR, bin_dir

COMPARE = REPO_DIR / "bench" / "compare" / "compare.py"
# A cold machine builds the load generator (cargo) and the Collector (Go) first.
PREPARE_TIMEOUT = 3600
# The quick mode is meant to take at most 2 minutes; a loaded machine gets slack, never a failure
# for being slow alone.
QUICK_TIMEOUT = 600

POSITIVE = (
    "accepted_logs_per_s",
    "delivered_logs_per_s",
    "delivered",
    "kafka_messages",
    "cpu_seconds",
    "cpu_s_per_million",
    "logs_per_cpu_s",
    "peak_rss_mib",
    "latency_p50_ms",
    "latency_p99_ms",
)


def run_compare(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, str(COMPARE), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert out.returncode == 0, (
        f"compare.py {' '.join(args)} exited {out.returncode}:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    )
    return out


def finite_positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_compare("--prepare-only", timeout=PREPARE_TIMEOUT)
    out = tmp_path_factory.mktemp("bench-compare") / "results"
    started = time.monotonic()
    result = run_compare("--quick", "--bin-dir", str(bin_dir()), "--out", str(out), timeout=QUICK_TIMEOUT)
    print(f"compare.py --quick took {time.monotonic() - started:.0f} s\n{result.stdout[-3000:]}")
    return out


@pytest.mark.timeout(PREPARE_TIMEOUT + QUICK_TIMEOUT)
def test_quick_run_measures_both_systems_in_every_scenario(quick_results: Path) -> None:
    results = json.loads((quick_results / "results.json").read_text())
    assert results["quick"] is True
    machine = results["machine"]
    assert machine["cores"] >= 1 and machine["memory_gib"] > 0 and machine["cpu_model"]
    assert len(machine["load_average_before"]) == 3 and len(machine["load_average_after"]) == 3

    runs = results["runs"]
    scenarios = {run["scenario"] for run in runs}
    assert "saturation" in scenarios and len(scenarios) >= 2, scenarios
    for scenario in scenarios:
        systems = {run["system"] for run in runs if run["scenario"] == scenario}
        assert {"ingester", "collector"} <= systems, (scenario, systems)
    for run in runs:
        figures = run["figures"]
        where = f"{run['system']} {run['scenario']}"
        for key in POSITIVE:
            assert finite_positive(figures[key]), f"{where}: {key} = {figures[key]!r}"
        assert figures["latency_p50_ms"] <= figures["latency_p99_ms"], where
        assert figures["undecodable_messages"] == 0, f"{where}: the topic holds values that are not OTLP"
        assert figures["exit_code"] == 0, f"{where}: the service exited {figures['exit_code']} on SIGTERM"
        timeline = run["loadgen"]["timeline"]
        assert timeline and sum(w["acknowledged"] for w in timeline) == figures["acknowledged"], where
        assert len(run["samples"]) >= 2 and all(s["rss_kib"] > 0 for s in run["samples"]), where
        if run["system"] == "ingester":
            # The ingester answers OK only once Kafka has the records: nothing acknowledged is missing.
            assert figures["lost_records"] == 0, f"{where}: {figures['lost_records']} acknowledged records not in Kafka"
            assert figures["failed_calls"] == 0, f"{where}: {figures['errors_by_code']}"


@pytest.mark.timeout(PREPARE_TIMEOUT + QUICK_TIMEOUT)
def test_quick_run_computes_ratios_appender_freshness_and_targets(quick_results: Path) -> None:
    results = json.loads((quick_results / "results.json").read_text())
    summary = results["summary"]
    for name, scenario in summary["scenarios"].items():
        ratios = scenario["ratios"]["collector"]
        for key in ("accepted_logs_per_s", "cpu_s_per_million", "logs_per_cpu_s", "peak_rss_mib", "latency_p99_ms"):
            means = scenario["means"]
            assert finite_positive(ratios[key]), f"{name}: ratio {key} = {ratios[key]!r}"
            assert math.isclose(ratios[key], means["ingester"][key] / means["collector"][key], rel_tol=1e-9)

    appender = results["appender"]["figures"]
    backlog_run = next(
        run for run in results["runs"] if run["system"] == "ingester" and run["topic"] == appender["topic"]
    )
    assert appender["rows"] == backlog_run["figures"]["delivered"] + backlog_run["loadgen"]["warmup_records"]
    assert finite_positive(appender["rows_per_s"]) and finite_positive(appender["peak_rss_mib"])

    freshness = results["freshness"]
    assert freshness["acknowledged"] > 0
    assert freshness["visible"] == freshness["acknowledged"], "an acknowledged record never became visible"
    assert 0 < freshness["freshness_p50_s"] <= freshness["freshness_p99_s"] <= freshness["freshness_max_s"]

    targets = summary["targets"]
    assert len(targets) >= 4, targets
    assert all(isinstance(t["met"], bool) and (t["met"] or t["shortfall"]) for t in targets), targets


@pytest.mark.timeout(PREPARE_TIMEOUT + QUICK_TIMEOUT)
def test_quick_run_writes_the_table_and_a_real_chart(quick_results: Path) -> None:
    markdown = (quick_results / "results.md").read_text()
    for heading in ("## Machine", "## saturation", "## Appender", "## Freshness", "## Targets", "## Every run"):
        assert heading in markdown, heading
    assert "| logs per CPU-second" in markdown and "ingester / Collector" in markdown
    assert "n/a" not in markdown.split("## Targets")[1].split("## Every run")[0], "a target was not judged"

    png = quick_results / "timeline.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        width, height = image.size
        assert width >= 800 and height >= 400, image.size
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50, "the chart looks blank"


SIGNALS_BENCH = REPO_DIR / "bench" / "compare" / "signals.py"


@pytest.mark.timeout(PREPARE_TIMEOUT + QUICK_TIMEOUT)
def test_signals_bench_measures_every_signal(quick_results: Path, tmp_path: Path) -> None:
    """`signals.py` (CPU-s per million log records, spans and data points) runs end to end on
    the binaries under test, and the ingester delivers every item of every signal it accepted.
    (`quick_results` first: it builds the load generator and the tools.)"""
    out = tmp_path / "signals.json"
    args = ["--bin-dir", str(bin_dir()), "--systems", "ingester", "--repeats", "1", "--duration", "3"]
    result = subprocess.run(
        [sys.executable, str(SIGNALS_BENCH), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=QUICK_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, (
        f"signals.py exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    runs = json.loads(out.read_text())["runs"]
    assert [r["signal"] for r in runs] == ["logs", "traces", "metrics"]
    for run in runs:
        assert all(finite_positive(run[key]) for key in ("delivered", "cpu_s_per_million", "peak_rss_mib")), run
        assert run["lost_records"] == 0 and run["failed_calls"] == 0, run
    assert "| traces | ingester |" in result.stdout and "| metrics | ingester |" in result.stdout
