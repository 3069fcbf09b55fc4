"""Our ingester and the OpenTelemetry Collector side by side, on one Kafka broker, then the appender.

    bench/compare/run.sh            # full run (release build): results/ (summary), out/ (raw)
    bench/compare/run.sh --quick    # under 2 minutes, everything into out/quick/

In: the `ingester` and `appender` binaries (`--bin-dir`), the Collector built by
`tools/build.sh otelcol` (otlp receiver -> batch -> kafka exporter, `otlp_proto`, `required_acks:
-1`), the Kafka 4.1.1 jars of `kafka/fetch.sh`, Loghub lines (`$LAKE_SHARED_DIR/data/loghub`) and
the load generator `loadgen/` (a workspace member, built here with cargo on first use).

What runs, all on 127.0.0.1 against ONE broker started here:
1. A/B runs, alternating the order of the systems between repeats: each system on a fresh topic
   of `--partitions` partitions, fed by the same `compare-loadgen` (byte-identical requests of
   `--batch` records, ~200-byte Loghub bodies, `--saturation-concurrency` connections at
   saturation, `--concurrency` at fixed rates) at saturation and at each `--rates` value. The
   systems: `ingester`, `collector` (with the batch processor) and `collector-sync` (without
   batch processor and sending queue: answers after Kafka, as the ingester does). Per run:
   logs/s acknowledged, logs delivered (the topic read back after the run: messages from its
   offsets, log records by decoding every value), delivered logs/s, CPU-seconds of the service
   process only (from /proc/PID/stat, from the start of the load until everything accepted left
   the service) per million delivered logs, peak RSS (VmHWM), export latency percentiles,
   failed calls, records acknowledged but not delivered.
2. The appender (Kafka mode) on the backlog of one ingester run: Kafka -> Iceberg rows/s.
3. Freshness: ingester and appender together (`flush.interval` = `--flush-interval`), a fixed
   rate of records with unique `bench.sequence` attributes; the table is polled (pyiceberg for
   the snapshot's files, DuckDB for their rows) and each record's send -> visible time recorded.
4. With `--profile`, after the rest: perf on an extra ingester saturation run and an extra
   appender run (kept out of the figures), reported by symbol in `profile-*.txt`.

Out, rewritten after every step (an interrupted run keeps what it measured): in `--out` (by
default `out/` here, which git ignores) the raw output, `results.json` (every figure, every run,
the samples behind the chart, the configs, the machine) and `profile-*.txt`; in `--summary` the
summary git keeps, `results.md` (the tables) and `timeline.png` (throughput and RSS over time):
by default `results/` here for a full run, the `--out` directory when `--out` or `--quick` is
given, so that only a full run replaces the committed summary. The machine is shared: the load
average and the CPU the rest of the machine used are recorded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

HERE = Path(__file__).resolve().parent
TESTS_DIR = HERE.parents[1] / "integration-tests" / "tests"
sys.path.insert(0, str(TESTS_DIR))

import duckdb  # noqa: E402
import report  # noqa: E402
from pyiceberg.catalog.sql import SqlCatalog  # noqa: E402
from pyiceberg.exceptions import NoSuchTableError  # noqa: E402

from harness.collector import Collector, tool  # noqa: E402
from harness.config import merge_config  # noqa: E402
from harness.kafka import Broker, Ingester, kafka_home  # noqa: E402
from harness.lake import Appender  # noqa: E402
from harness.paths import REPO_DIR, loghub_dir  # noqa: E402

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "telemetry-lake"
LOADGEN_PACKAGE = "compare-loadgen"
# What git keeps of a full run (the summary), and where everything else goes (ignored by git).
SUMMARY_DIR = HERE / "results"
RAW_DIR = HERE / "out"
COUNTER_SOURCE = HERE / "KafkaCount.java"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLE_EVERY = 0.5
# How long a service may take to hand everything it accepted to Kafka after the load.
DRAIN_TIMEOUT = 180.0
# An appender that commits nothing for this long is stuck (it commits every 500,000 rows).
STALL_TIMEOUT = 300.0
SYSTEM_LABELS = {
    "ingester": "telemetry-lake ingester",
    "collector": "OTel Collector (batch + queue)",
    "collector-sync": "OTel Collector (no batch, no queue)",
}


# ---- the machine -------------------------------------------------------------------------------


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def machine_busy_seconds() -> float:
    """Busy CPU-seconds of the whole machine since boot (all but idle and iowait)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK


def command_output(*args: str) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unavailable ({error})"
    return (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr).strip() else ""


def machine_description(bin_dir: Path, otelcol: Path) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mhz = re.search(r"^cpu MHz\s*:\s*(.+)$", cpuinfo, re.M)
    meminfo = Path("/proc/meminfo").read_text()
    mem_kib = int(re.search(r"^MemTotal:\s+(\d+)", meminfo, re.M).group(1))  # type: ignore[union-attr]
    commit = command_output("git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD")
    dirty = subprocess.run(
        ["git", "-C", str(REPO_DIR), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "cpu_model": model.group(1).strip() if model else "unknown",
        "cpu_mhz": float(mhz.group(1)) if mhz else None,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": command_output("sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"),
        "rustc": command_output("rustc", "--version"),
        "go": command_output("go", "version"),
        "java": command_output("java", "-version"),
        "python": platform.python_version(),
        "kafka": kafka_home().name,
        "otelcol": command_output(str(otelcol), "--version"),
        "services_bin_dir": str(bin_dir),
        "services_built": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime((bin_dir / "ingester").stat().st_mtime)),
        "services_build": "release" if "release" in bin_dir.parts else "debug" if "debug" in bin_dir.parts else "?",
        "git_commit": commit + (" (with uncommitted changes)" if dirty else ""),
    }


# ---- /proc ---------------------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def try_cpu(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        return proc_cpu_seconds(pid)
    except (OSError, IndexError, ValueError):
        return None


class Sampler(threading.Thread):
    """Samples, every SAMPLE_EVERY s, the service's CPU and RSS, the broker's CPU, the machine's
    busy CPU, and the service's own count of records delivered."""

    def __init__(self, service_pid: int, broker_pid: int | None, delivered: Callable[[], int | None]) -> None:
        super().__init__(daemon=True)
        self.service_pid = service_pid
        self.broker_pid = broker_pid
        self.delivered = delivered
        self.samples: list[dict[str, Any]] = []
        self.stop_event = threading.Event()

    def sample(self) -> dict[str, Any]:
        try:
            delivered = self.delivered()
        except Exception:  # noqa: BLE001 - a busy service may not answer one poll
            delivered = None
        return {
            "t": time.time(),
            "cpu": try_cpu(self.service_pid),
            "rss_kib": proc_status_kib(self.service_pid, "VmRSS"),
            "hwm_kib": proc_status_kib(self.service_pid, "VmHWM"),
            "broker_cpu": try_cpu(self.broker_pid),
            "self_cpu": try_cpu(os.getpid()),
            "machine_busy": machine_busy_seconds(),
            "delivered": delivered,
        }

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.samples.append(self.sample())
            except OSError:  # the service exited
                return
            self.stop_event.wait(SAMPLE_EVERY)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)


# ---- tools -------------------------------------------------------------------------------------


def loadgen_binary() -> Path:
    """Builds (cargo, release, the workspace's target dir: `$CARGO_TARGET_DIR`, which `./dev env`
    sets, else `target/`) and returns `compare-loadgen`. It builds only the load generator and
    the workload crate, not the services."""
    target = Path(os.environ.get("CARGO_TARGET_DIR") or "target")
    target = target if target.is_absolute() else REPO_DIR / target
    started = time.monotonic()
    out = subprocess.run(
        ["cargo", "build", "--release", "--quiet", "-p", LOADGEN_PACKAGE, "--bin", LOADGEN_PACKAGE],
        cwd=REPO_DIR,
        env={**os.environ, "CARGO_TARGET_DIR": str(target)},
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"building {LOADGEN_PACKAGE} failed (cargo exited {out.returncode}):\n{out.stderr[-4000:]}")
    if time.monotonic() - started > 5:
        note(f"built {LOADGEN_PACKAGE} in {time.monotonic() - started:.0f} s")
    return target / "release" / LOADGEN_PACKAGE


class Topics:
    """KafkaCount.java (compiled once, cached by its hash): create, count and delete topics."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.classpath = f"{kafka_home()}/libs/*:{compiled_counter()}"

    def _run(self, *args: str, timeout: float = 900) -> str:
        out = subprocess.run(
            ["java", "-Xmx512m", "-cp", self.classpath, "KafkaCount", args[0], self.broker.bootstrap, *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"KafkaCount {' '.join(args)} failed ({out.returncode}): {out.stderr[-3000:]}")
        return out.stdout

    def create(self, topics: list[str], partitions: int) -> None:
        self._run("create", ",".join(topics), str(partitions))

    def count(self, topic: str, *, delete: bool = False) -> dict[str, Any]:
        """The topic's messages and log records; deleted afterwards with `delete`."""
        out = self._run("count", topic, *(["delete"] if delete else []))
        return dict(json.loads(out.strip().splitlines()[-1]))

    def delete(self, topic: str) -> None:
        self._run("delete", topic)


def compiled_counter() -> Path:
    """The directory of KafkaCount.class, compiled on first use into the cache (temp dir, then
    one rename, so an interrupted compile leaves nothing half-made)."""
    digest = hashlib.sha256(COUNTER_SOURCE.read_bytes()).hexdigest()[:12]
    classes = CACHE / f"compare-kafkacount-{digest}"
    if (classes / "KafkaCount.class").is_file():
        return classes
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="compare-kafkacount-", dir=CACHE))
    out = subprocess.run(
        ["javac", "-nowarn", "-cp", f"{kafka_home()}/libs/*", "-d", str(tmp), str(COUNTER_SOURCE)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if out.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"javac {COUNTER_SOURCE} failed (is a JDK 17 installed?): {out.stderr[-3000:]}")
    try:
        tmp.rename(classes)
    except OSError:  # another run compiled it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return classes


def note(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- the systems under test --------------------------------------------------------------------


class Service(Protocol):
    name: str

    @property
    def pid(self) -> int: ...

    @property
    def otlp_target(self) -> str: ...

    def delivered(self) -> int: ...

    def drained(self) -> bool: ...

    def service_errors(self) -> dict[str, float]: ...

    def stop(self) -> int: ...

    def close(self) -> None: ...

    def log_problems(self) -> list[str]: ...


class IngesterService:
    """Our ingester on `topic`: answers an export once Kafka has every record (acks=all)."""

    name = "ingester"

    def __init__(self, workdir: Path, setup: Setup, broker: Broker, topic: str) -> None:
        key = SIGNALS[setup.signal][0]
        if key == "topic":
            self.ingester = Ingester(workdir, broker, topic, ingester_config(setup))
        else:
            # `topic` is the signal's; the logs topic (unused) gets a name of its own.
            config = deep_merge(ingester_config(setup), {"kafka": {key: topic}})
            self.ingester = Ingester(workdir, broker, f"{topic}-logs", config)
        self.ingester.binary = setup.bin_dir / "ingester"
        self.ingester.start_and_wait()

    @property
    def pid(self) -> int:
        return self.ingester.pid

    @property
    def otlp_target(self) -> str:
        return self.ingester.ports.otlp_grpc_target

    def totals(self) -> dict[str, Any]:
        """The ingester's own section of `Stats`."""
        return dict(self.ingester.stats()["ingester"])

    def delivered(self) -> int:
        return int(self.totals()["records_delivered"])

    def drained(self) -> bool:
        # It answers only after Kafka has the records; nothing may be left in flight either.
        return int(self.ingester.stats()["buffer_records"]) == 0

    def service_errors(self) -> dict[str, float]:
        totals = self.totals()
        return {"delivery_failures": float(totals.get("delivery_errors", 0))}

    def stop(self) -> int:
        return self.ingester.stop()

    def close(self) -> None:
        self.ingester.close()

    def log_problems(self) -> list[str]:
        return [line for line in self.ingester.log_text().splitlines() if " WARN " in line or " ERROR " in line]


def ingester_config(setup: Setup) -> dict[str, Any]:
    """The ingester's settings: defaults but for the topic's partitions and quieter logs, plus
    `--ingester-config`."""
    base = {"kafka": {"partitions": setup.partitions}, "log": {"level": "warn"}}
    return deep_merge(base, setup.ingester_overrides)


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def collector_config(bootstrap: str, topic: str, batch: int, synchronous: bool, signal: str = "logs") -> dict[str, Any]:
    """The Collector: otlp receiver -> [batch] -> kafka exporter (otlp_proto, all-replica acks),
    one pipeline of `signal`.

    `synchronous`: no batch processor and no sending queue, so an export is answered only after
    Kafka acknowledged it, the ingester's guarantee. Otherwise the answer comes as soon as the
    batch processor has the records."""
    exporter: dict[str, Any] = {
        "brokers": [bootstrap],
        signal: {"topic": topic, "encoding": "otlp_proto"},
        SIGNALS[signal][1]: True,
        "producer": {"required_acks": -1, "compression": "zstd", "max_message_bytes": 1_000_000},
    }
    if synchronous:
        exporter["sending_queue"] = {"enabled": False}
    return {
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": "127.0.0.1:4317"}}}},
        "processors": {"batch": {"send_batch_size": batch, "timeout": "200ms"}},
        "exporters": {"kafka": exporter},
        "service": {
            "pipelines": {
                signal: {"receivers": ["otlp"], "processors": [] if synchronous else ["batch"], "exporters": ["kafka"]}
            }
        },
    }


class CollectorService:
    """The OpenTelemetry Collector writing to `topic`, counting with its own metrics."""

    def __init__(
        self,
        workdir: Path,
        broker: Broker,
        topic: str,
        batch: int,
        synchronous: bool,
        partitions: int,
        signal: str = "logs",
    ) -> None:
        del partitions  # the topic is created beforehand; the exporter does not create topics
        self.name = "collector-sync" if synchronous else "collector"
        self.noun = SIGNALS[signal][2]
        self.config = collector_config(broker.bootstrap, topic, batch, synchronous, signal)
        self.collector = Collector(workdir, self.config)
        self.collector.start_and_wait(timeout=60)

    @property
    def pid(self) -> int:
        process = self.collector.process
        assert process is not None
        return process.pid

    @property
    def otlp_target(self) -> str:
        return f"127.0.0.1:{self.collector.ports.otlp_grpc}"

    def counters(self, *names: str) -> list[float]:
        """Each counter summed over its series; the Prometheus name may or may not end in _total."""
        metrics = self.collector.metrics()

        def total(name: str) -> float:
            return sum(value for key, value in metrics.items() if key.split("{")[0] in (name, name + "_total"))

        return [total(name) for name in names]

    def delivered(self) -> int:
        return int(self.counters(f"otelcol_exporter_sent_{self.noun}")[0])

    def drained(self) -> bool:
        accepted, sent, failed, enqueue_failed = self.counters(
            f"otelcol_receiver_accepted_{self.noun}",
            f"otelcol_exporter_sent_{self.noun}",
            f"otelcol_exporter_send_failed_{self.noun}",
            f"otelcol_exporter_enqueue_failed_{self.noun}",
        )
        return accepted > 0 and sent + failed + enqueue_failed >= accepted

    def service_errors(self) -> dict[str, float]:
        names = (
            f"otelcol_receiver_refused_{self.noun}",
            f"otelcol_receiver_failed_{self.noun}",
            f"otelcol_exporter_send_failed_{self.noun}",
            f"otelcol_exporter_enqueue_failed_{self.noun}",
        )
        return {name.removeprefix("otelcol_"): value for name, value in zip(names, self.counters(*names), strict=True)}

    def stop(self) -> int:
        return self.collector.stop()

    def close(self) -> None:
        self.collector.close()

    def log_problems(self) -> list[str]:
        return [
            line
            for line in self.collector.log_text().splitlines()
            if "\twarn\t" in line or "\terror\t" in line or " WARN " in line
        ]


# ---- one A/B run -------------------------------------------------------------------------------


@dataclass
class Setup:
    bin_dir: Path
    loadgen: Path
    loghub: Path
    batch: int
    concurrency: int
    saturation_concurrency: int
    partitions: int
    workdir: Path
    ingester_overrides: dict[str, Any] = field(default_factory=dict)
    # What the load carries: "logs", "traces" (a span per Loghub line) or "metrics" (a data
    # point per line); records are then those items (`signals.py`).
    signal: str = "logs"


# Per signal: the ingester's topic key, the Collector's exporter section, partitioning option
# and the noun of its own counters (otelcol_exporter_sent_<noun>, ...).
SIGNALS: dict[str, tuple[str, str, str]] = {
    "logs": ("topic", "partition_logs_by_resource_attributes", "log_records"),
    "traces": ("traces_topic", "partition_traces_by_id", "spans"),
    "metrics": ("metrics_topic", "partition_metrics_by_resource_attributes", "metric_points"),
}


@dataclass
class Run:
    system: str
    scenario: str
    rate: float | None
    repeat: int
    topic: str
    figures: dict[str, Any] = field(default_factory=dict)
    loadgen: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)


def start_service(system: str, setup: Setup, broker: Broker, topic: str, workdir: Path) -> Service:
    if system == "ingester":
        return IngesterService(workdir, setup, broker, topic)
    if system in ("collector", "collector-sync"):
        return CollectorService(
            workdir, broker, topic, setup.batch, system == "collector-sync", setup.partitions, setup.signal
        )
    raise ValueError(f"unknown system {system!r}; one of {sorted(SYSTEM_LABELS)}")


def run_loadgen(
    setup: Setup,
    target: str,
    duration: float,
    rate: float | None,
    out: Path,
    *,
    freshness: bool = False,
    batch: int | None = None,
) -> dict[str, Any]:
    args = [
        str(setup.loadgen),
        "--target",
        target,
        "--loghub",
        str(setup.loghub),
        "--batch",
        str(batch or setup.batch),
        "--concurrency",
        str(setup.saturation_concurrency if rate is None else setup.concurrency),
        "--duration",
        f"{duration}s",
        "--out",
        str(out),
    ]
    if rate is not None:
        args += ["--rate", str(rate)]
    if freshness:
        args.append("--freshness")
    if setup.signal != "logs":
        args += ["--signal", setup.signal]
    log = out.with_suffix(".log")
    with log.open("w") as stderr:
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=stderr, stderr=subprocess.STDOUT)
        code, cpu = wait_with_rusage(process, duration + 300)
    if code != 0:
        raise RuntimeError(f"compare-loadgen exited {code}: {log.read_text()[-3000:]}")
    return dict(json.loads(out.read_text())) | {"cpu_seconds": cpu}


def wait_with_rusage(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, float]:
    """Waits for a child; returns its exit code and CPU-seconds (from wait4's rusage: /proc of
    an exited process is gone)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid == process.pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise RuntimeError(f"{process.args[0]} did not finish within {timeout:.0f} s")
        time.sleep(0.05)


@contextmanager
def perf_profile(pid: int | None, out: Path | None, what: str) -> Iterator[None]:
    """`perf record` of the whole machine (499 Hz, flat: the release builds keep no frame
    pointers) while the block runs, then `perf report` of `pid`'s samples by shared object and
    symbol into `out` (a text file). System-wide, because attaching to a process (`-p`) missed
    and spun on the appender's short-lived threads."""
    if pid is None or out is None:
        yield
        return
    if shutil.which("perf") is None:
        raise SystemExit("--profile needs perf: apt-get install linux-perf")
    data = out.with_suffix(".data")
    log = out.with_suffix(".perf.log")
    with log.open("w") as stderr:
        process = subprocess.Popen(
            ["perf", "record", "-a", "-F", "499", "-o", str(data)], stdout=stderr, stderr=subprocess.STDOUT
        )
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        report = subprocess.run(
            ["perf", "report", "-i", str(data), "--pid", str(pid), "--stdio", "--sort", "dso,symbol"]
            + ["--percentage", "relative", "--percent-limit", "0.4"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        lines = [
            re.sub(r"(\s+-)*\s*$", "", line)
            for line in report.stdout.splitlines()
            if line.strip() and not line.startswith("#")
        ]
        failure = f"\nperf failed: {report.stderr[-1500:]}\n{log.read_text()[-1500:]}\n" if not lines else ""
        out.write_text(
            f"perf record -a -F 499 while {what} ran, then perf report --pid PID --sort dso,symbol "
            "(self time of its threads, >= 0.4% of its samples)\n\n" + "\n".join(lines[:120]) + "\n" + failure
        )
        data.unlink(missing_ok=True)
        log.unlink(missing_ok=True)
        note(f"profile of {what} in {out}")


def ab_run(
    setup: Setup,
    broker: Broker,
    topics: Topics,
    run: Run,
    duration: float,
    keep_topic: bool,
    profile: Path | None = None,
) -> Run:
    """One system, one scenario: fresh topic, fresh service process, the load, the drain, the count.
    With `profile`, perf samples the service during the load (a run kept out of the figures)."""
    workdir = setup.workdir / run.topic
    service = start_service(run.system, setup, broker, run.topic, workdir)
    broker_pid = int((broker.workdir / "broker.pid").read_text())
    sampler = Sampler(service.pid, broker_pid, service.delivered)
    try:
        sampler.start()
        time.sleep(SAMPLE_EVERY)
        before = sampler.sample()
        with perf_profile(service.pid if profile else None, profile, f"{run.system}, {run.scenario}"):
            summary = run_loadgen(setup, service.otlp_target, duration, run.rate, workdir / "loadgen.json")
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while not service.drained():
            if time.monotonic() > deadline:
                note(f"{run.system} did not hand everything to Kafka within {DRAIN_TIMEOUT:.0f} s")
                break
            time.sleep(0.1)
        after = sampler.sample()
        service_errors = service.service_errors()
        sampler.stop()
        exit_code = service.stop()
    finally:
        sampler.stop()
        service.close()
    # What the topic takes on the broker's disk (compressed record batches): the other side of
    # the compression setting's CPU.
    kafka_log_bytes = sum(f.stat().st_size for f in (broker.workdir / "data").glob(f"{run.topic}-*/*.log"))
    counted = topics.count(run.topic, delete=not keep_topic)
    run.loadgen = {k: v for k, v in summary.items() if k != "sent_requests"}
    run.samples = [s for s in sampler.samples if s["t"] >= before["t"] - SAMPLE_EVERY]
    run.figures = run_figures(summary, before, after, counted, service_errors, exit_code)
    run.figures["log_problems"] = service.log_problems()[:5]
    run.figures["kafka_log_bytes"] = kafka_log_bytes
    run.figures["kafka_bytes_per_log"] = kafka_log_bytes / max(run.figures["delivered"], 1)
    run.figures["broker_cpu_s_per_million"] = run.figures["broker_cpu_seconds"] / max(run.figures["delivered"], 1) * 1e6
    f = run.figures
    note(
        f"{run.system:>14} {run.scenario:>10}: {f['accepted_logs_per_s']:>9,.0f} logs/s accepted, "
        f"{f['delivered_logs_per_s']:>9,.0f} delivered, {f['cpu_s_per_million']:.2f} CPU-s/M, "
        f"RSS {f['peak_rss_mib']:.0f} MiB, p50 {f['latency_p50_ms']:.1f} ms, p99 {f['latency_p99_ms']:.1f} ms, "
        f"failed calls {f['failed_calls']}, lost {f['lost_records']}, "
        f"{f['kafka_bytes_per_log']:.1f} Kafka bytes/log, broker {f['broker_cpu_s_per_million']:.2f} CPU-s/M"
    )
    return run


def run_figures(
    summary: Mapping[str, Any],
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    counted: Mapping[str, Any],
    service_errors: Mapping[str, float],
    exit_code: int,
) -> dict[str, Any]:
    delivered = int(counted["logs"]) - int(summary["warmup_records"])
    # From the start of the load (the sample just before the load generator started) until the
    # service had handed everything it accepted to Kafka.
    window = after["t"] - summary["start_unix_seconds"]
    cpu = after["cpu"] - before["cpu"]
    machine = after["machine_busy"] - before["machine_busy"]
    loadgen_cpu = float(summary["cpu_seconds"])
    broker_cpu = (after["broker_cpu"] or 0.0) - (before["broker_cpu"] or 0.0)
    self_cpu = (after["self_cpu"] or 0.0) - (before["self_cpu"] or 0.0)
    acknowledged = int(summary["acknowledged"])
    return {
        "load_seconds": summary["elapsed_seconds"],
        "drain_seconds": max(0.0, window - summary["elapsed_seconds"]),
        "sent": int(summary["sent"]),
        "acknowledged": acknowledged,
        "accepted_logs_per_s": acknowledged / max(summary["elapsed_seconds"], 1e-9),
        "delivered": delivered,
        "delivered_logs_per_s": delivered / max(window, 1e-9),
        "kafka_messages": int(counted["messages"]),
        "kafka_value_bytes": int(counted["value_bytes"]),
        "undecodable_messages": int(counted["undecodable"]),
        "cpu_seconds": cpu,
        "cpu_s_per_million": cpu / max(delivered, 1) * 1e6,
        "cpu_s_per_million_accepted": cpu / max(acknowledged, 1) * 1e6,
        "logs_per_cpu_s": delivered / max(cpu, 1e-9),
        "peak_rss_mib": after["hwm_kib"] / 1024,
        "latency_p50_ms": summary["latency_ms"]["p50"],
        "latency_p90_ms": summary["latency_ms"]["p90"],
        "latency_p99_ms": summary["latency_ms"]["p99"],
        "latency_max_ms": summary["latency_ms"]["max"],
        # Where the tail sits: the first second holds the connections' first calls, and in a
        # 30-second run at 20k logs/s (600 calls) the p99 is only the sixth slowest.
        "slowest_first_second_ms": summary["timeline"][0]["slowest_ms"] if summary["timeline"] else 0.0,
        "slowest_after_first_second_ms": max((w["slowest_ms"] for w in summary["timeline"][1:]), default=0.0),
        "failed_calls": sum(summary["errors"].values()),
        "errors_by_code": summary["errors"],
        "refused_records": int(summary["refused"]),
        # Acknowledged to the client but not in the topic (dropped after the answer).
        "lost_records": max(0, acknowledged - delivered),
        # In the topic more often than acknowledged (retries of records Kafka already had).
        "extra_records": max(0, delivered - acknowledged),
        "service_errors": dict(service_errors),
        "exit_code": exit_code,
        "loadgen_cpu_seconds": loadgen_cpu,
        "broker_cpu_seconds": broker_cpu,
        "machine_cpu_seconds": machine,
        "other_cpu_seconds": max(0.0, machine - cpu - loadgen_cpu - broker_cpu - self_cpu),
        "window_seconds": window,
    }


# ---- the appender ------------------------------------------------------------------------------


def appender_config(bootstrap: str, topic: str, group: str, **flush: Any) -> dict[str, Any]:
    return merge_config(
        {"flush": {"interval": "1h", "max_records": 500_000, "max_bytes": "1GiB"}},
        {
            "kafka": {"brokers": bootstrap, "topic": topic, "group_id": group},
            "flush": flush,
            "log": {"level": "warn"},
        },
    )


def bench_appender(
    setup: Setup, broker: Broker, topic: str, backlog: int, profile: Path | None = None
) -> dict[str, Any]:
    """Kafka -> Iceberg on a backlog of `backlog` records: a Kafka-mode appender starts on the
    topic, commits every 500,000 records, and is asked for a last flush once all the rest is
    staged (the logic of kafka/bench_ingester.py --appender); timed from its start-up. With
    `profile`, perf samples it throughout (a separate run, with its own table and group)."""
    name = "appender-profile" if profile else "appender-saturation"
    appender = Appender(setup.workdir / name, appender_config(broker.bootstrap, topic, name))
    appender.binary = setup.bin_dir / "appender"
    samples: list[dict[str, Any]] = []
    try:
        started = time.time()
        appender.start()
        pid = appender.pid
        with perf_profile(pid if profile else None, profile, "the appender on a Kafka backlog"):
            appender.wait_ready()
            committed, first_consumed, finished = drive_appender(appender, backlog, started, samples)
        cpu = proc_cpu_seconds(pid)
        hwm = proc_status_kib(pid, "VmHWM") / 1024
        appender.stop()
    finally:
        problems = [line for line in appender.log_text().splitlines() if " WARN " in line or " ERROR " in line]
        appender.close()
    elapsed = finished - started
    figures = {
        "topic": topic,
        "rows": committed,
        "seconds_from_start": elapsed,
        "rows_per_s": committed / elapsed,
        "rows_per_s_from_first_record": committed / max(finished - first_consumed, 1e-9),
        "cpu_seconds": cpu,
        "cpu_s_per_million": cpu / max(committed, 1) * 1e6,
        "peak_rss_mib": hwm,
        "log_problems": problems[:5],
    }
    note(
        f"appender Kafka -> Iceberg{' (profiled)' if profile else ''}: {committed:,} rows in {elapsed:.1f} s = "
        f"{figures['rows_per_s']:,.0f} rows/s, {figures['cpu_s_per_million']:.2f} CPU-s/M, peak RSS {hwm:.0f} MiB"
    )
    return {"figures": figures, "samples": samples}


def drive_appender(
    appender: Appender, backlog: int, started: float, samples: list[dict[str, Any]]
) -> tuple[int, float, float]:
    """Polls `Stats` until `backlog` rows are committed, asking for the last flush; returns the
    rows committed, when the first record was consumed and when the last was committed."""
    pid = appender.pid
    committed = last_committed = 0
    first_consumed: float | None = None
    now = last_progress = started
    while committed < backlog:
        time.sleep(0.5)
        stats = appender.stats()
        totals = stats["appender"]
        committed = int(totals["records_committed"])
        now = time.time()
        if first_consumed is None and int(totals.get("kafka_messages", 0)) > 0:
            first_consumed = now
        samples.append(
            {
                "t": now,
                "committed": committed,
                "staged": int(stats["buffer_records"]),
                "rss_kib": proc_status_kib(pid, "VmRSS"),
                "cpu": proc_cpu_seconds(pid),
            }
        )
        if committed > last_committed:
            last_committed, last_progress = committed, now
        if committed < backlog and int(stats["buffer_records"]) + committed >= backlog:
            # The last flush commits whatever is staged: millions of rows on a large backlog.
            response = appender.http("POST", "/flush", timeout=STALL_TIMEOUT)
            assert response.status_code == 200, f"POST /flush: {response.status_code} {response.text}"
        if now - last_progress > STALL_TIMEOUT:
            problems = [line for line in appender.log_text().splitlines() if " ERROR " in line]
            raise RuntimeError(
                f"the appender committed nothing for {STALL_TIMEOUT:.0f} s ({committed:,} of {backlog:,} rows, "
                f"{totals.get('flush_failures', 0)} failed flushes); first error: "
                f"{problems[0][:600] if problems else 'none logged'}"
            )
    return committed, first_consumed or started, now


class TablePoller(threading.Thread):
    """Polls the appender's table; when a new snapshot appears, reads the `bench.sequence` of the
    rows in data files it has not seen and records (request number, rows, time seen)."""

    def __init__(self, appender: Appender, batch: int, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.catalog = SqlCatalog(
            "telemetry_lake", uri=f"sqlite:///{appender.catalog_db}", warehouse=f"file://{appender.warehouse_dir}"
        )
        self.batch = batch
        self.interval = interval
        self.seen_files: set[str] = set()
        self.last_snapshot: int | None = None
        self.visible: list[tuple[int, int, float, float]] = []  # (request k, rows, seen at, committed at)
        self.rows = 0
        self.errors: list[str] = []
        self.stop_event = threading.Event()
        self.duck = duckdb.connect()

    def poll(self) -> None:
        try:
            table = self.catalog.load_table("default.logs")
        except NoSuchTableError:
            return
        snapshot = table.current_snapshot()
        if snapshot is None or snapshot.snapshot_id == self.last_snapshot:
            return
        seen_at = time.time()
        files = [task.file.file_path for task in table.scan().plan_files()]
        new = [f for f in files if f not in self.seen_files]
        self.last_snapshot = snapshot.snapshot_id
        if not new:
            return
        paths = [f.removeprefix("file://") for f in new]
        rows = self.duck.execute(
            "SELECT CAST(log_attributes['bench.sequence'] AS BIGINT) // ? AS k, count(*) "
            "FROM read_parquet(?) GROUP BY k",
            [self.batch, paths],
        ).fetchall()
        for k, count in rows:
            self.visible.append((int(k), int(count), seen_at, snapshot.timestamp_ms / 1000))
            self.rows += int(count)
        self.seen_files.update(new)

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.poll()
            except Exception as error:  # noqa: BLE001 - a file may be read mid-commit; the next poll retries
                self.errors.append(repr(error)[:300])
            self.stop_event.wait(self.interval)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)


def weighted_percentile(pairs: list[tuple[float, int]], p: float) -> float:
    """The p-quantile of values given as (value, weight) pairs (nearest rank)."""
    pairs = sorted(pairs)
    total = sum(w for _, w in pairs)
    if total == 0:
        return float("nan")
    rank = max(1, int(-(-p * total // 1)))
    running = 0
    for value, weight in pairs:
        running += weight
        if running >= rank:
            return value
    return pairs[-1][0]


def bench_freshness(
    setup: Setup,
    broker: Broker,
    topics: Topics,
    rate: float,
    duration: float,
    flush_interval: float,
    batch: int,
) -> dict[str, Any]:
    """Ingester + appender (flush.interval) at `rate`: when does each acknowledged record become
    visible in the table? Freshness = time seen by the poller - time the export was sent."""
    topic = "freshness"
    topics.create([topic], setup.partitions)
    ingester = IngesterService(setup.workdir / "freshness-ingester", setup, broker, topic)
    appender = Appender(
        setup.workdir / "freshness-appender",
        appender_config(broker.bootstrap, topic, "freshness", interval=f"{flush_interval:g}s"),
    )
    appender.binary = setup.bin_dir / "appender"
    poller: TablePoller | None = None
    try:
        appender.start_and_wait()
        poller = TablePoller(appender, batch)
        poller.start()
        out = setup.workdir / "freshness-loadgen.json"
        summary = run_loadgen(setup, ingester.otlp_target, duration, rate, out, freshness=True, batch=batch)
        # The warm-up request's records carry the template's sequence numbers; they are not ours.
        requests = {k: (records, sent, answered, ok) for k, records, sent, answered, ok in summary["sent_requests"]}
        acknowledged = sum(records for records, _, _, ok in requests.values() if ok)
        deadline = time.monotonic() + 3 * flush_interval + 60
        while poller.rows < acknowledged + summary["warmup_records"] and time.monotonic() < deadline:
            time.sleep(0.25)
        poller.stop()
        appender_hwm = proc_status_kib(appender.pid, "VmHWM") / 1024
    finally:
        if poller is not None:
            poller.stop()
        problems = [line for line in appender.log_text().splitlines() if " WARN " in line or " ERROR " in line]
        appender.close()
        ingester.close()
    from_send: list[tuple[float, int]] = []
    from_answer: list[tuple[float, int]] = []
    commit_from_send: list[tuple[float, int]] = []
    seen_records = 0
    for k, count, seen_at, committed_at in poller.visible:
        if k not in requests or not requests[k][3]:
            continue  # the warm-up request (sequence numbers of the template, k < 1 batch apart)
        _, sent_ns, answered_ns, _ = requests[k]
        from_send.append((seen_at - sent_ns / 1e9, count))
        from_answer.append((seen_at - answered_ns / 1e9, count))
        commit_from_send.append((committed_at - sent_ns / 1e9, count))
        seen_records += count
    figures = {
        "rate": rate,
        "duration_seconds": duration,
        "flush_interval_seconds": flush_interval,
        "batch": batch,
        "acknowledged": acknowledged,
        "visible": seen_records,
        "not_visible": max(0, acknowledged - seen_records),
        "achieved_logs_per_s": summary["acknowledged"] / max(summary["elapsed_seconds"], 1e-9),
        "export_latency_p99_ms": summary["latency_ms"]["p99"],
        "freshness_p50_s": weighted_percentile(from_send, 0.5),
        "freshness_p99_s": weighted_percentile(from_send, 0.99),
        "freshness_max_s": max((v for v, _ in from_send), default=float("nan")),
        "answer_to_visible_p50_s": weighted_percentile(from_answer, 0.5),
        "answer_to_visible_p99_s": weighted_percentile(from_answer, 0.99),
        "send_to_commit_p50_s": weighted_percentile(commit_from_send, 0.5),
        "send_to_commit_p99_s": weighted_percentile(commit_from_send, 0.99),
        "snapshots_seen": len({seen for _, _, seen, _ in poller.visible}),
        "poll_interval_seconds": poller.interval,
        "poll_errors": poller.errors[:5],
        "appender_peak_rss_mib": appender_hwm,
        "log_problems": problems[:5],
    }
    note(
        f"freshness at {rate:,.0f} logs/s, flush.interval {flush_interval:g}s: {seen_records:,} of "
        f"{acknowledged:,} visible, p50 {figures['freshness_p50_s']:.2f} s, p99 {figures['freshness_p99_s']:.2f} s"
    )
    return figures


# ---- the whole run -----------------------------------------------------------------------------


@dataclass
class Plan:
    systems: list[str]
    saturation_seconds: float
    repeats: int
    rates: list[float]
    rate_seconds: float
    rate_repeats: int
    appender: bool
    appender_scenario: str
    freshness: bool
    freshness_rate: float
    freshness_seconds: float
    freshness_batch: int
    flush_interval: float


def schedule(plan: Plan) -> Iterator[tuple[str, float | None, int, list[str], float]]:
    """(scenario, rate, repeat, systems in order, seconds): the order flips every time, so no
    system always runs first (or right after the same other one)."""
    flip = False
    for repeat in range(plan.repeats):
        yield "saturation", None, repeat, plan.systems[::-1] if flip else plan.systems, plan.saturation_seconds
        flip = not flip
    for rate in plan.rates:
        for repeat in range(plan.rate_repeats):
            systems = plan.systems[::-1] if flip else plan.systems
            yield f"{rate / 1000:g}k/s", rate, repeat, systems, plan.rate_seconds
            flip = not flip


def topic_name(scenario: str, system: str, repeat: int) -> str:
    return f"{scenario.replace('/', '').replace('.', '_')}-{system}-{repeat}"


@contextmanager
def started_broker(workdir: Path, prepare: Callable[[Broker], None]) -> Iterator[Broker]:
    """A broker in `workdir`, killed at the end; `prepare` runs while it boots."""
    broker = Broker(workdir / "kafka").start()
    try:
        prepare(broker)
        yield broker.wait_ready()
    finally:
        broker.close()


def profile_runs(
    setup: Setup, broker: Broker, topics: Topics, plan: Plan, backlog: tuple[str, int] | None, out: Path
) -> dict[str, Any]:
    """Runs kept out of the figures, with perf attached: the ingester at saturation, and the
    appender on the same backlog again; the reports go to `out`/profile-*.txt."""
    profiles: dict[str, Any] = {}
    run = Run("ingester", "saturation (profiled)", None, 0, "profile-ingester")
    topics.create([run.topic], setup.partitions)
    duration = max(10.0, plan.saturation_seconds / 2)
    ab_run(setup, broker, topics, run, duration, False, profile=out / "profile-ingester.txt")
    profiles["ingester"] = {k: run.figures[k] for k in ("accepted_logs_per_s", "cpu_s_per_million", "peak_rss_mib")}
    if backlog is not None:
        profiles["appender"] = bench_appender(setup, broker, *backlog, profile=out / "profile-appender.txt")["figures"]
    return profiles


def check_loghub() -> Path:
    directory = loghub_dir()
    if not any(directory.glob("*.log")):
        raise SystemExit(f"no Loghub *.log files in {directory}: set LAKE_SHARED_DIR to the shared/ directory")
    return directory


def prepare_only() -> None:
    """Builds or fetches everything a run needs (the slow part on a cold machine) and returns."""
    started = time.monotonic()
    loadgen_binary()
    tool("otelcol")
    compiled_counter()
    check_loghub()
    note(f"prepared in {time.monotonic() - started:.0f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.prepare_only:
        prepare_only()
        return 0
    wall_started = time.time()
    plan = make_plan(args)
    out, summary = output_dirs(args)
    for directory in (out, summary):
        directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        bin_dir = Path(args.bin_dir)
        for binary in ("ingester", "appender"):
            if not (bin_dir / binary).is_file():
                raise SystemExit(
                    f"no {binary} in {bin_dir}: build it (cargo build --release -p telemetry-lake-{binary}) "
                    "or pass --bin-dir"
                )
        note("preparing: Kafka, the load generator, the Collector")
        tools: dict[str, Any] = {}

        def prepare(broker: Broker) -> None:
            tools["loadgen"] = loadgen_binary()
            tools["otelcol"] = tool("otelcol")
            tools["topics"] = Topics(broker)

        with started_broker(Path(tmp), prepare) as broker:
            note(f"Kafka on {broker.bootstrap}; load generator {tools['loadgen']}; Collector {tools['otelcol']}")
            topics: Topics = tools["topics"]
            setup = Setup(
                bin_dir=bin_dir,
                loadgen=tools["loadgen"],
                loghub=check_loghub(),
                batch=args.batch,
                concurrency=args.concurrency,
                saturation_concurrency=args.saturation_concurrency,
                partitions=args.partitions,
                workdir=Path(tmp),
                ingester_overrides=json.loads(args.ingester_config),
            )
            machine = machine_description(bin_dir, tools["otelcol"])
            machine["load_average_before"] = load_average()
            results: dict[str, Any] = {
                "quick": args.quick,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(wall_started)),
                "machine": machine,
                "setup": {
                    "batch": args.batch,
                    "concurrency": args.concurrency,
                    "saturation_concurrency": args.saturation_concurrency,
                    "partitions": args.partitions,
                    "loghub": str(setup.loghub),
                    "plan": plan.__dict__,
                    "collector_config": collector_config("BROKER", "TOPIC", args.batch, False),
                    "collector_sync_config": collector_config("BROKER", "TOPIC", args.batch, True),
                    "ingester_config": ingester_config(setup),
                },
                "runs": [],
            }
            planned = [
                (Run(system, scenario, rate, repeat, topic_name(scenario, system, repeat)), duration)
                for scenario, rate, repeat, systems, duration in schedule(plan)
                for system in systems
            ]
            topics.create([run.topic for run, _ in planned], setup.partitions)
            runs: list[Run] = []
            appender_topic: tuple[str, int] | None = None
            for run, duration in planned:
                keep = run.system == "ingester" and plan.appender and run.scenario == plan.appender_scenario
                runs.append(ab_run(setup, broker, topics, run, duration, keep))
                if keep:
                    if appender_topic is not None:
                        topics.delete(appender_topic[0])
                    appender_topic = (run.topic, run.figures["delivered"] + run.loadgen["warmup_records"])
                results["runs"] = [r.__dict__ for r in runs]
                save(results, out, summary, wall_started, final=False)
            if appender_topic is not None:
                note(f"appender on the {appender_topic[1]:,} records of topic {appender_topic[0]}")
                results["appender"] = attempt(
                    "the appender run", lambda: bench_appender(setup, broker, *appender_topic)
                )
                save(results, out, summary, wall_started, final=False)
            if plan.freshness:
                results["freshness"] = attempt(
                    "the freshness run",
                    lambda: bench_freshness(
                        setup,
                        broker,
                        topics,
                        plan.freshness_rate,
                        plan.freshness_seconds,
                        plan.flush_interval,
                        plan.freshness_batch,
                    ),
                )
                save(results, out, summary, wall_started, final=False)
            if args.profile:
                results["profiles"] = attempt(
                    "the profile runs", lambda: profile_runs(setup, broker, topics, plan, appender_topic, out)
                )
            if appender_topic is not None:
                topics.delete(appender_topic[0])
        save(results, out, summary, wall_started, final=True)
        note(f"done in {results['wall_seconds']:.0f} s; summary in {summary}, raw results in {out}")
        print(report.markdown(results))
    return 0


def attempt(what: str, step: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Runs one step after the A/B runs; a failure is recorded in the results, not fatal."""
    try:
        return step()
    except Exception as error:  # noqa: BLE001 - the runs done so far must still be written
        note(f"{what} failed: {error}")
        return {"error": f"{what} failed: {error}"}


def output_dirs(args: argparse.Namespace) -> tuple[Path, Path]:
    """(raw, summary): where results.json and the profiles go, and where results.md and
    timeline.png go. Only a full run without --out writes the summary git keeps (results/)."""
    if args.out:
        out = Path(args.out)
    elif args.quick:
        out = RAW_DIR / "quick"
    else:
        out = RAW_DIR
    if args.summary:
        return out, Path(args.summary)
    return out, out if args.out or args.quick else SUMMARY_DIR


def save(results: dict[str, Any], out: Path, summary: Path, wall_started: float, *, final: bool) -> None:
    """results.json (in `out`), results.md and timeline.png (in `summary`) from what has been
    measured so far (after every step, so a crash or an interrupted run keeps the runs already
    done)."""
    results["machine"]["load_average_after"] = load_average()
    results["wall_seconds"] = time.time() - wall_started
    results["complete"] = final
    results["summary"] = report.summarise(results)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (summary / "results.md").write_text(report.markdown(results))
    report.chart(results, summary / "timeline.png")


def make_plan(args: argparse.Namespace) -> Plan:
    default_systems = "ingester,collector" if args.quick else "ingester,collector,collector-sync"
    systems = [s.strip() for s in (args.systems or default_systems).split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEM_LABELS]
    if unknown or "ingester" not in systems or len(systems) < 2:
        raise SystemExit(f"--systems: 'ingester' and at least one of {sorted(SYSTEM_LABELS)}; got {args.systems!r}")
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    if args.quick:
        return Plan(
            systems=systems,
            saturation_seconds=5,
            repeats=1,
            rates=[min(rates[0], 10_000)] if rates else [],
            rate_seconds=4,
            rate_repeats=1,
            appender=not args.no_appender,
            # The appender on the smaller backlog of the fixed-rate run: a debug build is slow.
            appender_scenario=f"{min(rates[0], 10_000) / 1000:g}k/s" if rates else "saturation",
            freshness=not args.no_freshness,
            freshness_rate=min(args.freshness_rate, 3000),
            freshness_seconds=6,
            freshness_batch=500,
            flush_interval=2,
        )
    return Plan(
        systems=systems,
        saturation_seconds=args.duration,
        repeats=args.repeats,
        rates=rates,
        rate_seconds=args.rate_duration,
        rate_repeats=args.rate_repeats,
        appender=not args.no_appender,
        appender_scenario="saturation",
        freshness=not args.no_freshness,
        freshness_rate=args.freshness_rate,
        freshness_seconds=args.freshness_duration,
        freshness_batch=args.batch,
        flush_interval=args.flush_interval,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    default_bin = os.environ.get("LAKE_BIN_DIR") or str(REPO_DIR / "target" / "release")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run under 2 minutes (CI)")
    parser.add_argument("--prepare-only", action="store_true", help="build and fetch the tools (cached), then exit")
    parser.add_argument(
        "--out", help="raw results: results.json, profile-*.txt [default: out/ here; --quick: out/quick/ here]"
    )
    parser.add_argument(
        "--summary",
        help="results.md and timeline.png [default: results/ here (kept in git); the --out dir with --out or --quick]",
    )
    parser.add_argument("--bin-dir", default=default_bin, help="where ingester and appender are [$LAKE_BIN_DIR]")
    parser.add_argument(
        "--systems", help="comma-separated, of " + ", ".join(SYSTEM_LABELS) + " [all; --quick: the first two]"
    )
    parser.add_argument("--batch", type=int, default=1000, help="records per export request")
    parser.add_argument(
        "--concurrency", type=int, default=8, help="connections at fixed rates, one export in flight each"
    )
    parser.add_argument(
        "--saturation-concurrency",
        type=int,
        default=64,
        help="connections at saturation (at 8 the ingester waits on Kafka round trips with idle CPU)",
    )
    parser.add_argument("--partitions", type=int, default=12, help="partitions of every topic")
    parser.add_argument("--duration", type=float, default=60, help="seconds of each saturation run")
    parser.add_argument("--repeats", type=int, default=2, help="saturation runs per system")
    parser.add_argument("--rates", default="20000,50000", help="fixed rates, logs/s, comma-separated")
    parser.add_argument("--rate-duration", type=float, default=45, help="seconds of each fixed-rate run")
    parser.add_argument("--rate-repeats", type=int, default=1, help="runs per system and rate")
    parser.add_argument("--freshness-rate", type=float, default=20000, help="logs/s of the freshness run")
    parser.add_argument("--freshness-duration", type=float, default=60)
    parser.add_argument("--flush-interval", type=float, default=5, help="the appender's flush.interval, seconds")
    parser.add_argument(
        "--ingester-config",
        default="{}",
        help='more ingester settings as JSON, e.g. \'{"kafka": {"producer": {"linger.ms": "0"}}}\'',
    )
    parser.add_argument("--no-appender", action="store_true", help="skip Kafka -> Iceberg")
    parser.add_argument("--no-freshness", action="store_true", help="skip the freshness run")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="then profile (perf) the ingester at saturation and the appender on the backlog: profile-*.txt",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: no stray process
    sys.exit(main())
