"""`streamrec demo` (what `make demo` runs), as a user runs it: on a broker address where nothing
listens it starts the local broker there; against a running broker it uses it; it shows only the
records of its own run; model store, title cache and worker logs survive from run to run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from streamrec.local.broker import LocalBroker, free_port

pytestmark = pytest.mark.integration
SUMMARY = re.compile(r"(\d+) clicks -> (\d+) recommendations .* p99 (\d+) ms")


def demo(env: dict[str, str], events: int = 300) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "streamrec.cli", "demo", "--events", str(events), "--rate", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def demo_env(tmp_path: Path, bootstrap: str, data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        KAFKA_BOOTSTRAP=bootstrap,
        STREAMREC_DATA_DIR=str(data_dir),
        STREAMREC_STATE_DIR=str(tmp_path / "state"),
        STREAMREC_METRICS_PORT=str(free_port()),
        STREAMREC_DASHBOARD_PORT="0",
    )
    return env


def summary(out: str) -> tuple[int, int, int]:
    found = SUMMARY.search(out)
    assert found, out[-2000:]
    sent, answered, p99 = (int(x) for x in found.groups())
    return sent, answered, p99


def test_demo_starts_a_broker_on_the_chosen_port_and_keeps_what_it_should(tmp_path: Path, data_dir: Path) -> None:
    port = free_port()
    env = demo_env(tmp_path, f"127.0.0.1:{port}", data_dir)
    kept = tmp_path / "state" / "model-store" / "kept.txt"
    kept.parent.mkdir(parents=True)
    kept.write_text("an operator's file")
    out = demo(env)
    assert f"local Kafka-protocol broker (noida-db) on 127.0.0.1:{port}" in out
    assert summary(out)[:2] == (300, 300)
    demo(env)
    assert kept.read_text() == "an operator's file", "the model store survives demo runs"
    assert len(list((tmp_path / "state" / "demo" / "logs").glob("worker-*.log"))) == 2, "every run's log is kept"


def test_demo_against_a_running_broker_shows_only_its_own_records(
    tmp_path: Path, data_dir: Path, broker: LocalBroker
) -> None:
    env = demo_env(tmp_path, broker.bootstrap, data_dir)
    env["STREAMREC_TOPIC_PREFIX"] = f"demo{free_port()}-"
    first = demo(env)
    assert f"using the broker at {broker.bootstrap}" in first
    second = demo(env, events=200)
    sent, answered, p99 = summary(second)
    assert (sent, answered) == (200, 200), "records of the first run are not shown again"
    # Records of an earlier run would read as minutes old; a functional bound, not a speed target.
    assert p99 < 60_000
