"""The base classes of everything the tests run.

- `Process`: one child process in its own working directory, stdout and stderr appended to a
  log file (a header line per start): `start`, `wait_ready` (polls `ready()`, fails early when
  the process exits), `stop` (SIGTERM, returns the exit code), `kill9`, `close` (the fixture
  finalizer: kill if still running), `running`, `pid`, `log_text` / `log_tail`. A subclass gives
  `command()` and, as needed, `child_env()`, `ready()`, `banner()` and `stopped()`.
- `ScriptService`: a server run by a script of `integration-tests/` built on `lib/service.sh`
  (`SCRIPT start|wait|stop|kill DIR PORT`, pid in `DIR/NAME.pid`): the same methods, each one
  a run of the script.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Self

from harness.ports import free_ports
from harness.wait import wait_until


def fetched_dir(script: Path, *args: str, timeout: float) -> Path:
    """Runs a fetch script (`bash SCRIPT ARGS`) and returns the directory it prints last."""
    out = subprocess.run(["bash", str(script), *args], check=True, capture_output=True, text=True, timeout=timeout)
    return Path(out.stdout.strip().splitlines()[-1])


class LogFile:
    """Something whose output goes to `log_path`."""

    log_path: Path

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


class Process(LogFile):
    """One child process in `workdir`, its output appended to `workdir`/`log_name`."""

    name = "process"
    ready_timeout = 60.0

    def __init__(self, workdir: Path, log_name: str | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / (log_name or f"{self.name}.log")
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # ---- what a subclass says ----------------------------------------------------------------

    def command(self) -> list[str]:
        raise NotImplementedError

    def child_env(self) -> dict[str, str] | None:
        """The process's environment (None: the runner's)."""
        return None

    def banner(self) -> str | None:
        """The header line written to the log before each start (None: none)."""
        return f"start #{self.starts} at {time.strftime('%H:%M:%S')}"

    def ready(self) -> bool:
        """Whether the running process is ready; `wait_ready` polls it."""
        return True

    def stopped(self) -> None:
        """Called once the process has exited by `stop`, `kill9` or `close`."""

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.starts += 1
        with self.log_path.open("ab") as log:
            banner = self.banner()
            if banner is not None:
                log.write(f"\n===== {banner} =====\n".encode())
                log.flush()
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=self.child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_ready(self, timeout: float | None = None) -> Self:
        """Polls `ready()`; fails early if the process exits."""

        def probe() -> bool:
            self.assert_alive()
            return self.ready()

        wait_until(
            probe,
            timeout=self.ready_timeout if timeout is None else timeout,
            what=f"{self.name} pid {self.pid} to be ready",
        )
        return self

    def start_and_wait(self, timeout: float | None = None) -> Self:
        return self.start().wait_ready(timeout)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then waits for the exit; returns the exit code."""
        process = self._require_process()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(f"{self.name} did not exit within {timeout}s of SIGTERM; killed it") from None
        finally:
            self.stopped()

    def kill9(self) -> None:
        process = self._require_process()
        process.kill()
        process.wait()
        self.stopped()

    def close(self) -> None:
        """Kills the process if it still runs (fixture finalizer)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.stopped()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        return self._require_process().pid

    def assert_alive(self) -> None:
        code = self._require_process().poll()
        if code is not None:
            raise AssertionError(f"{self.name} exited with code {code}; log tail:\n{self.log_tail()}")

    def _require_process(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.process


class ScriptService(LogFile):
    """A server run by `script` (`start|wait|stop|kill DIR PORT`, on lib/service.sh) in `workdir`
    on 127.0.0.1:`port`; its log is `workdir`/`log_name`."""

    script: Path
    name = ""
    log_name = ""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_ports(1)[0]
        self.log_path = workdir / self.log_name

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def prepare(self) -> None:
        """Fetches what the script needs (cached), outside the script's own timeouts."""

    def run_script(self, command: str, *args: str, timeout: float = 120) -> None:
        self.prepare()
        out = subprocess.run(
            ["bash", str(self.script), command, str(self.workdir), str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**self.env(), "WAIT_SECONDS": str(int(timeout))},
        )
        if out.returncode != 0:
            raise AssertionError(
                f"{self.script.name} {command} failed ({out.returncode}): {out.stderr[-3000:]}\n"
                f"log tail:\n{self.log_tail()}"
            )

    def start(self) -> Self:
        self.run_script("start")
        return self

    def wait_ready(self, timeout: float = 60) -> Self:
        self.run_script("wait", timeout=timeout)
        return self

    def start_and_wait(self, timeout: float = 60) -> Self:
        return self.start().wait_ready(timeout)

    def stop(self) -> None:
        self.run_script("stop")

    def kill9(self) -> None:
        self.run_script("kill")

    @property
    def running(self) -> bool:
        try:
            os.kill(int((self.workdir / f"{self.name}.pid").read_text()), 0)
        except (OSError, ValueError):
            return False
        return True

    def close(self) -> None:
        """Kills the server if it still runs (fixture finalizer)."""
        if self.running:
            self.kill9()
