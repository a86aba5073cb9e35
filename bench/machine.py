"""How busy the machine is, recorded beside every benchmark figure.

This machine has two shared cores: a figure taken while another job ran is not comparable with
one taken on a quiet machine. `machine_load()` samples the load average and the CPU used by
processes outside this benchmark's own process tree; `busy` marks a run that should not be read
as the code's speed. `code_version()` is the commit recorded with the figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from streamrec.settings import PROJECT_ROOT

# Other processes using more than this share of one core make a run "busy".
BUSY_OTHER_CPU_PERCENT = 25.0


def _ours() -> set[int]:
    me = psutil.Process()
    pids = {me.pid}
    try:
        pids |= {c.pid for c in me.children(recursive=True)}
    except psutil.Error:
        pass
    return pids


def machine_load(sample_s: float = 1.0) -> dict[str, object]:
    """Load averages, cores, and the CPU (percent of one core) that other processes used over
    `sample_s`, with the busiest of them by name."""
    procs = {}
    for p in psutil.process_iter(["pid", "name"]):
        try:
            p.cpu_percent(None)
            procs[p.pid] = p
        except psutil.Error:
            continue
    time.sleep(sample_s)
    ours = _ours()
    others: list[tuple[float, str]] = []
    for pid, p in procs.items():
        if pid in ours:
            continue
        try:
            others.append((p.cpu_percent(None), p.info["name"] or str(pid)))
        except psutil.Error:
            continue
    others.sort(reverse=True)
    other_cpu = sum(c for c, _ in others)
    load1, load5, load15 = os.getloadavg()
    return {
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cores": os.cpu_count(),
        "loadavg_1_5_15": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "other_processes_cpu_percent": round(other_cpu, 1),
        "busiest_others": [f"{name} {cpu:.0f}%" for cpu, name in others[:3] if cpu > 1.0],
        "busy": other_cpu > BUSY_OTHER_CPU_PERCENT,
    }


class LoadSampler:
    """The machine's load averages sampled every `every_s` seconds while a run lasts (a thread),
    so a record says whether its wall time was taken on a busy machine."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.every_s = every_s
        self.samples: list[float] = []  # 1-minute load averages
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-sampler", daemon=True)
        self.started = ""

    def _run(self) -> None:
        while True:
            self.samples.append(round(os.getloadavg()[0], 2))
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> LoadSampler:
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, object]:
        s = self.samples or [0.0]
        cores = os.cpu_count() or 1
        return {
            "started": self.started,
            "cores": cores,
            "loadavg_1min_mean": round(sum(s) / len(s), 2),
            "loadavg_1min_max": max(s),
            "samples": len(self.samples),
            # Above one runnable process per core on average: the run shared the machine.
            "busy": sum(s) / len(s) > cores,
        }


def _read_code_version() -> str:
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=PROJECT_ROOT, check=False
    )
    # Records the benches and training write are outputs, not code: a bench that rewrote a tracked
    # record earlier in a session must not make the next run's code look modified.
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results", ":!results"],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
    )
    return head.stdout.strip() + ("+dirty" if changed.stdout.strip() else "")


# Read when the process starts: a run that lasts an hour must name the code it ran, not whatever
# the checkout holds when it writes its record.
_CODE_AT_START = _read_code_version()


def code_version() -> str:
    """The commit the process started from (the code that made the figures), with "+dirty" when
    tracked files differed from it."""
    return _CODE_AT_START


def save_record(out: str | Path, payload: dict[str, Any], bench: str) -> Path:
    """Write a benchmark's record as JSON, with the commit and the exact command that made it."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(["streamrec", "bench", bench, *sys.argv[3:]])
    path.write_text(json.dumps({**payload, "commit": code_version(), "command": command}, indent=2))
    return path
