"""Supervision of agents and tasks, and the rule for re-reading a partition whose log went back."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streamrec.ops.metrics import create_metrics
from streamrec.stream import app as app_module
from streamrec.stream.app import REWIND_FACTOR, REWIND_MESSAGES, rewind_target, supervised, unanswer_window
from streamrec.stream.prefork import supervise


def test_an_agent_that_dies_makes_the_worker_exit_for_a_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[tuple[str, str]] = []
    monkeypatch.setattr(app_module, "exit_for_restart", lambda name, exc, fatal: exits.append((name, repr(exc))))
    registry = CollectorRegistry()
    metrics = create_metrics(registry)
    seen_running: list[float | None] = []

    async def dies() -> None:
        seen_running.append(registry.get_sample_value("streamrec_worker_agent_running_info", {"agent": "clicks"}))
        raise KeyError("boom")

    asyncio.run(supervised("clicks", metrics, dies))
    assert seen_running == [1.0], "the agent is reported running while it runs"
    assert exits == [("clicks", "KeyError('boom')")]
    assert registry.get_sample_value("streamrec_worker_agent_running_info", {"agent": "clicks"}) == 0
    assert registry.get_sample_value("streamrec_worker_agent_crashes_total", {"agent": "clicks"}) == 1


def test_cancellation_is_a_stop_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[str] = []
    monkeypatch.setattr(app_module, "exit_for_restart", lambda name, exc, fatal: exits.append(name))
    registry = CollectorRegistry()
    metrics = create_metrics(registry)

    async def run() -> None:
        task = asyncio.ensure_future(supervised("catalogue", metrics, lambda: asyncio.sleep(60)))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert exits == []
    assert registry.get_sample_value("streamrec_worker_agent_running_info", {"agent": "catalogue"}) == 0
    assert registry.get_sample_value("streamrec_worker_agent_crashes_total", {"agent": "catalogue"}) == 0


@pytest.mark.parametrize(
    ("next_offset", "highwater", "expected"),
    [
        (100, 100, None),  # caught up
        (90, 100, None),  # behind
        (105, 100, 0),  # past the end of a short log: from its start
        (5_120, 5_100, 5_100 - REWIND_FACTOR * 20 - REWIND_MESSAGES),
    ],
)
def test_rewind_target(next_offset: int, highwater: int, expected: int | None) -> None:
    assert rewind_target(next_offset, highwater) == expected


def test_the_prefork_supervisor_replaces_a_dead_child_and_stops_on_a_clean_exit(tmp_path: Path) -> None:
    """Children run in forked processes: the first dies (exit 70), the second is killed, the third
    stops cleanly; the supervisor forks each at once and returns the clean exit's code."""
    lives = tmp_path / "lives"

    def child() -> int:
        with lives.open("a") as fh:
            fh.write(f"{os.getpid()}\n")
        n = len(lives.read_text().splitlines())
        if n == 1:
            return 70
        if n == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return 0

    assert supervise(child) == 0
    pids = lives.read_text().split()
    assert len(pids) == 3 and len(set(pids)) == 3 and str(os.getpid()) not in pids


def test_answers_are_sent_again_for_a_bounded_window_after_a_rewind() -> None:
    assert unanswer_window(5_000, 4_900) == 5_000 - REWIND_MESSAGES - REWIND_FACTOR * 100
    # A reset to the start of a long log does not answer the whole partition again.
    assert unanswer_window(10_000_000, 0) == 10_000_000 - REWIND_MESSAGES - REWIND_FACTOR * REWIND_MESSAGES
    assert unanswer_window(300, 250) == 0
