"""Starting and stopping worker processes, for the demo, the integration tests and benchmarks.

A worker runs as `python -m streamrec.cli worker` with its settings in the environment, exactly as
a user would start one; callers wait for its metrics endpoint and read readiness from it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

from streamrec.ops.metrics import scrape
from streamrec.settings import Settings


def stop_on_signals() -> None:
    """Make SIGTERM and SIGINT raise KeyboardInterrupt, so that the `finally` blocks which stop the
    workers and brokers a command started run (Python's default SIGTERM exits without them, and a
    non-interactive shell starts background jobs with SIGINT ignored). Measured: a reliability
    bench ended with SIGTERM left its worker running at half a core for an hour."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes `Settings.from_env()` return `settings` in a child process."""
    env = dict(os.environ)
    env.update(settings.to_env())
    return env


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    metrics_port: int
    log_path: Path
    dashboard_port: int = 0

    @property
    def dashboard_url(self) -> str:
        assert self.dashboard_port, "this worker runs without a dashboard page"
        return f"http://127.0.0.1:{self.dashboard_port}/"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def metrics(self) -> dict[str, float]:
        return scrape(self.metrics_url)

    def metric(self, name: str, default: float = 0.0) -> float:
        try:
            return self.metrics().get(name, default)
        except (URLError, ConnectionError, OSError):
            return default

    def wait_until(self, name: str, predicate: Callable[[float], bool], timeout_s: float = 60.0) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}; log: {self.log_path}")
            value = self.metric(name, float("nan"))
            if value == value and predicate(value):
                return value
            time.sleep(0.2)
        raise TimeoutError(f"{name} did not reach the expected value in {timeout_s}s; log: {self.log_path}")

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to flush or commit anything."""
        self.proc.kill()
        self.proc.wait()


def _start(
    command: str,
    settings: Settings,
    port: int,
    log_path: Path,
    extra_args: tuple[str, ...],
    ready: str,
    timeout_s: float,
) -> WorkerProcess:
    """`streamrec <command>` as a child process, returned once its metric `ready` is exported."""
    assert port != 0, f"give the {command} a concrete metrics port so callers can find it"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed with it
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamrec.cli", command, *extra_args],
        env=settings_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    child = WorkerProcess(proc, port, log_path, settings.dashboard_port if command == "worker" else 0)
    child.wait_until(ready, lambda v: v >= 0, timeout_s=timeout_s)
    return child


def start_worker(settings: Settings, log_path: Path, extra_args: tuple[str, ...] = ()) -> WorkerProcess:
    return _start("worker", settings, settings.metrics_port, log_path, extra_args, "streamrec_index_size_items", 60)


def start_trainer(settings: Settings, log_path: Path, extra_args: tuple[str, ...] = ()) -> WorkerProcess:
    """`streamrec trainer` (its metrics on settings.trainer_metrics_port)."""
    return _start(
        "trainer",
        settings,
        settings.trainer_metrics_port,
        log_path,
        extra_args,
        "streamrec_trainer_window_users",
        120,
    )
