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
from streamrec.stream.app import supervised
from streamrec.stream.log_check import Checkpoints, PartitionLog, Repair
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


def test_a_rewritten_log_is_told_from_the_one_handled_and_where_it_diverges() -> None:
    handled = PartitionLog(keep=100)
    for offset in range(50, 60):
        handled.note(offset, f"click {offset}".encode())
    assert (handled.first(), handled.last()) == (50, 59)
    assert handled.matches(59, b"click 59")
    assert not handled.matches(59, b"another click") and not handled.matches(59, None)
    same = [(o, f"click {o}".encode()) for o in range(50, 60)]
    assert handled.diverged_range(same, 50, 60) is None, "nothing differs"
    lost_tail = same[:6]  # the broker came back without offsets 56..59
    assert handled.diverged_range(lost_tail, 50, 60) == (56, 60)
    # Offsets 56 and 57 reused for new clicks; Faust went on from 58 (handled from the new log).
    handled.note(58, b"new 58")
    handled.note(59, b"new 59")
    reused = [*same[:6], (56, b"new click"), (57, b"another new one"), (58, b"new 58"), (59, b"new 59")]
    assert handled.diverged_range(reused, 50, 60) == (56, 58)
    handled.forget(56, 58)
    assert handled.diverged_range(reused, 50, 60) is None
    assert handled.note(59, b"new 59") and not handled.note(59, b"yet another"), "a rewritten offset is told"


def test_records_the_broker_removed_on_purpose_are_not_losses() -> None:
    handled = PartitionLog(keep=100)
    for offset in range(50, 60):
        handled.note(offset, f"answer {offset}".encode())
    held = {o: f"answer {o}".encode() for o in range(50, 60)}
    compacted = [(o, v) for o, v in held.items() if o not in (52, 53, 57)]  # superseded by later answers
    assert handled.diverged_range(compacted, 50, 60) is None, "gaps before a held record: compaction"
    trimmed = [(o, v) for o, v in held.items() if o >= 55]
    assert handled.diverged_range(trimmed, 50, 60, log_start=55) is None, "before the log's start: retention"
    assert handled.diverged_range([], 50, 60, log_start=60) is None, "the whole range aged out"
    # A missing tail after gaps is a loss, and so is another record at a handled offset.
    assert handled.diverged_range([(o, v) for o, v in compacted if o < 56], 50, 60) == (56, 60)
    rewritten = [*compacted[:-1], (59, b"another answer")]
    assert handled.diverged_range(rewritten, 50, 60) == (59, 60)


def test_the_handled_log_keeps_a_bounded_window() -> None:
    handled = PartitionLog(keep=10)
    for offset in range(1000):
        handled.note(offset, b"x")
    assert (handled.first(), handled.last()) == (990, 999)


def test_checks_re_read_what_was_not_yet_confirmed_a_margin_later() -> None:
    marks = Checkpoints(margin_s=30)
    assert marks.settled() is None, "nothing checked yet"
    marks.mark(at=100, last=10)
    marks.mark(at=110, last=20)
    assert marks.settled() is None, "no check 30 s after any mark yet"
    marks.mark(at=135, last=50)
    assert marks.settled() == 10, "the check at 135 confirms what was intact at 100"
    # The broker is away from 140 to 200: no check succeeds, so nothing more is settled by time alone.
    marks.mark(at=205, last=60)
    assert marks.settled() == 50, "confirmed only up to marks made 30 s before the last successful check"
    marks.mark(at=240, last=90)
    assert marks.settled() == 60


def test_a_repair_is_done_at_its_end() -> None:
    repair = Repair(5, 8)
    assert not repair.done
    repair.cursor = 8
    assert repair.done


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
