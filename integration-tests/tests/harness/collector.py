"""The real OpenTelemetry Collector and the other Go tools users point at us.

`tool(name)` builds (once, cached by version) and returns a binary of `integration-tests/tools/
build.sh`: `otelcol` (the Collector from `tools/otelcol-builder.yaml`), `telemetrygen`,
`grpcurl`, `grpc-health-probe`. `run_tool` runs one and returns what it printed.

`Collector` runs the Collector with a YAML config (a file, e.g. the copy-paste configs in
`tools/collector/`, or a mapping written as JSON, which is YAML too) plus `--set` overrides, in
a temp dir, on free 127.0.0.1 ports:
- its `otlp` receiver (when the config has one, `otlp_receiver=True`) gets fresh gRPC and HTTP
  ports, exposed as `ports` (an `otlp_client`-compatible `Ports`) so the SDK senders feed it;
- its own metrics are served on a free port and read with `metrics()`
  (`otelcol_exporter_sent_log_records` and friends), so no two Collectors fight over :8888;
- `start_and_wait` waits for "Everything is ready" in its log and for the receiver's ports;
  `stop` sends SIGTERM and returns the exit code; `log_text`/`log_tail` read its log.
"""

from __future__ import annotations

import functools
import json
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.clients import http_session, prometheus_samples
from harness.config import no_proxy_env
from harness.paths import REPO_DIR
from harness.ports import Ports, free_ports, wait_port
from harness.process import Process

TOOLS_DIR = REPO_DIR / "integration-tests" / "tools"
BUILD_SCRIPT = TOOLS_DIR / "build.sh"
# The configurations the README tells users to copy; the tests run them as they are.
COLLECTOR_CONFIGS = TOOLS_DIR / "collector"
TOOL_NAMES = ("otelcol", "telemetrygen", "grpcurl", "grpc-health-probe")
# A cold build (module downloads and compiling the Collector) takes minutes on 2 cores.
BUILD_TIMEOUT = 3600


@functools.cache
def tool(name: str) -> Path:
    """The binary of `name` (see TOOL_NAMES), built by tools/build.sh on first use."""
    if name not in TOOL_NAMES:
        raise ValueError(f"unknown tool {name!r}; one of {TOOL_NAMES}")
    return build_tools(name)[0]


def build_tools(*names: str) -> list[Path]:
    """Builds what is missing of `names` (all when none) and returns their paths in order."""
    args = list(names) or ["all"]
    started = time.monotonic()
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), *args], capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(
            f"{BUILD_SCRIPT} {' '.join(args)} failed ({out.returncode}) after {time.monotonic() - started:.0f}s; "
            f"it needs Go 1.26 and the Go module proxy. Its last output:\n{out.stderr[-3000:]}"
        )
    return [Path(line) for line in out.stdout.split()]


def run_tool(name: str, *args: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Runs a built tool with `args`, no proxy from the environment; stdout and stderr as text."""
    env = no_proxy_env()
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    out = subprocess.run(
        [str(tool(name)), *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if check and out.returncode != 0:
        raise AssertionError(f"{name} {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


class Collector(Process):
    """One `otelcol` process in `workdir` running `config` (a YAML file or a mapping).

    `overrides` become `--set key=value` flags (keys as in the YAML, dotted:
    `exporters.otlp_grpc.endpoint`), applied after the file, so a copy-paste config runs
    unchanged but for its addresses. `env` is added to the process's environment (for
    `${env:NAME}` in a config).
    """

    name = "collector"
    ready_timeout = 30.0

    def __init__(
        self,
        workdir: Path,
        config: Path | Mapping[str, Any],
        overrides: Mapping[str, str] | None = None,
        *,
        otlp_receiver: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(workdir)
        grpc_port, http_port, metrics_port = free_ports(3)
        self.ports = Ports(otlp_grpc=grpc_port, otlp_http=http_port, admin_grpc=0, admin_http=0)
        self.metrics_port = metrics_port
        self.otlp_receiver = otlp_receiver
        if isinstance(config, Path):
            self.config_path = config
        else:
            self.config_path = workdir / "collector.yaml"
            self.config_path.write_text(json.dumps(config, indent=2))
        self.overrides: dict[str, str] = {}
        if otlp_receiver:
            self.overrides["receivers.otlp.protocols.grpc.endpoint"] = f"127.0.0.1:{grpc_port}"
            self.overrides["receivers.otlp.protocols.http.endpoint"] = f"127.0.0.1:{http_port}"
        reader = {"pull": {"exporter": {"prometheus": {"host": "127.0.0.1", "port": metrics_port}}}}
        self.overrides["service.telemetry.metrics.level"] = "detailed"
        self.overrides["service.telemetry.metrics.readers"] = json.dumps([reader])
        self.overrides.update(overrides or {})
        self.extra_env = dict(env or {})

    def command(self) -> list[str]:
        sets = [f"--set={key}={value}" for key, value in self.overrides.items()]
        return [str(tool("otelcol")), f"--config={self.config_path}", *sets]

    def child_env(self) -> dict[str, str]:
        return {**no_proxy_env(), **self.extra_env}

    def banner(self) -> str:
        return f"start at {time.strftime('%H:%M:%S')}: {' '.join(self.command())}"

    def ready(self) -> bool:
        return "Everything is ready" in self.log_text()

    def wait_ready(self, timeout: float | None = None) -> Collector:
        """ "Everything is ready" in its log, then the receiver's ports accept connections."""
        super().wait_ready(timeout)
        if self.otlp_receiver:
            timeout = self.ready_timeout if timeout is None else timeout
            wait_port(self.ports.otlp_grpc, timeout, "the collector's OTLP/gRPC receiver")
            wait_port(self.ports.otlp_http, timeout, "the collector's OTLP/HTTP receiver")
        return self

    def metrics(self) -> dict[str, float]:
        """The Collector's own metrics (`name{labels}` -> value) from its Prometheus endpoint."""
        with http_session() as session:
            response = session.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10)
        response.raise_for_status()
        return prometheus_samples(response.text)

    def metric_sum(self, name: str) -> float:
        """The sum of every series of metric `name` (all exporters/receivers together)."""
        return sum(v for k, v in self.metrics().items() if k == name or k.startswith(name + "{"))


def telemetrygen_logs(
    target: str, count: int, *, http: bool = False, extra: Sequence[str] = (), timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`telemetrygen logs` sending `count` records from one worker to `target` (host:port),
    over OTLP/gRPC or, with `http`, OTLP/HTTP; fails unless it exits 0."""
    args = ["logs", "--otlp-insecure", "--otlp-endpoint", target, "--workers", "1", "--rate", "0", "--logs", str(count)]
    if http:
        args.append("--otlp-http")
    return run_tool("telemetrygen", *args, *extra, timeout=timeout, check=True)
