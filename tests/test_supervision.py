"""Supervision of agents and tasks, and the rule for re-reading a partition whose log went back."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from streamrec.ops.metrics import create_metrics
from streamrec.settings import TopicNames
from streamrec.stream import app as app_module
from streamrec.stream.app import supervised
from streamrec.stream.click_log import HeldRange
from streamrec.stream.handling import Message
from streamrec.stream.log_check import DueChecks, PartitionLog, Repair
from streamrec.stream.log_watch import VERIFY_EVERY_S, VERIFY_MARGIN_S, Answer, LogWatch
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
    # A range read before the log's end (records read back once due): a gap at the range's end with
    # records after it in the log was compacted; the same gap where the log ends is a loss.
    read_early = [(o, v) for o, v in held.items() if o < 57]  # 57..59 superseded by answers past 60
    assert handled.diverged_range(read_early, 50, 60, log_end=75) is None, "records follow in the log"
    assert handled.diverged_range(read_early, 50, 60, log_end=57) == (57, 60), "the log ends there: lost"


def test_the_handled_log_keeps_a_bounded_window() -> None:
    handled = PartitionLog(keep=10)
    for offset in range(1000):
        handled.note(offset, b"x")
    assert (handled.first(), handled.last()) == (990, 999)


def test_records_come_due_a_margin_after_they_were_handled() -> None:
    checks = DueChecks(margin_s=30)
    assert checks.due(now=0) is None, "nothing handled yet"
    checks.mark(at=100, last=10)
    checks.mark(at=110, last=20)
    checks.mark(at=111, last=20)  # nothing new handled: no new mark
    assert checks.due(now=129) is None, "nothing handled 30 s ago yet"
    assert checks.due(now=130) == 10
    assert checks.due(now=135) == 10, "what came due stays due until read"
    checks.read_to(11)
    checks.mark(at=200, last=90)
    assert checks.due(now=240) == 90, "past the margin of every mark: the newest is due"
    checks.read_to(91)
    checks.reset(50)  # 50.. answered again after a loss: due a margin after their new handling
    assert checks.verified_to == 50 and checks.due(now=241) is None
    checks.mark(at=241, last=95)
    assert checks.due(now=271) == 95


def test_a_full_window_reads_its_oldest_quarter_before_it_is_due() -> None:
    checks = DueChecks(margin_s=30)
    checks.mark(at=0, last=999)
    assert checks.to_read(10, first=0, last=999, keep=2000) is None, "not full, nothing due"
    assert checks.to_read(10, first=0, last=1999, keep=2000) == (0, 500), "full: the oldest quarter"
    checks.read_to(500)
    assert checks.to_read(11, first=300, last=2299, keep=2000) == (500, 800), "then the next quarter's part"
    assert checks.to_read(31, first=300, last=1200, keep=2000) == (500, 1000), "what came due"


def test_a_repair_is_done_at_its_end() -> None:
    repair = Repair(5, 8)
    assert not repair.done and repair.next_range() == (5, 8)
    repair.read(5, 8, log_end=20)
    assert repair.done, "a log past the range's end reads all of it"


def test_a_repair_waits_for_offsets_the_log_does_not_hold_yet() -> None:
    repair = Repair(100, 200)
    repair.read(100, 200, log_end=150)
    assert repair.remaining() == [(150, 200)], "offsets 150..199 do not exist yet"
    repair.read(150, 200, log_end=150)
    assert repair.remaining() == [(150, 200)], "a log that has not grown changes nothing"
    repair.read(150, 200, log_end=200)
    assert repair.done


def test_ranges_added_during_a_read_stay_to_do() -> None:
    repair = Repair(3526, 3529)
    start, end = repair.next_range()
    repair.add(3529, 3532)  # while [3526, 3529) is being read: the case measured
    repair.add(3400, 3410)  # before the cursor
    repair.add(3600, 3610)  # apart
    repair.read(start, end, log_end=5000)
    assert repair.remaining() == [(3400, 3410), (3529, 3532), (3600, 3610)]
    assert repair.end == 3610, "the log names the highest offset asked for"
    repair.add(3405, 3530)
    assert repair.remaining() == [(3400, 3532), (3600, 3610)], "overlapping ranges merge"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 60), st.integers(0, 20)), min_size=1, max_size=8),
    st.lists(st.tuples(st.integers(0, 80), st.integers(0, 30), st.integers(0, 90)), max_size=8),
)
def test_a_repair_reads_exactly_the_offsets_added(
    adds: list[tuple[int, int]], reads: list[tuple[int, int, int]]
) -> None:
    """Whatever the order of adds and reads: offsets still to do = added minus read below the log's end."""
    repair = Repair(adds[0][0], adds[0][0] + adds[0][1])
    todo = set(range(adds[0][0], adds[0][0] + adds[0][1]))
    for (a_start, a_len), (r_start, r_len, log_end) in zip(adds[1:], reads, strict=False):
        repair.add(a_start, a_start + a_len)
        todo |= set(range(a_start, a_start + a_len))
        repair.read(r_start, r_start + r_len, log_end)
        todo -= set(range(r_start, min(r_start + r_len, log_end)))
        left = repair.remaining()
        assert {o for lo, hi in left for o in range(lo, hi)} == todo
        assert all(lo < hi for lo, hi in left) and all(a[1] < b[0] for a, b in itertools.pairwise(left)), left
    assert repair.done == (not todo)


class ShortLog:
    """A twin of the range reader over a log that ends at `end` (the offsets' values name them);
    `during_read` runs while a read is in flight."""

    def __init__(self, end: int) -> None:
        self.end = end
        self.during_read: Callable[[], None] = lambda: None
        self.reads: list[tuple[int, int]] = []

    async def read_held(self, partition: int, start: int, end: int) -> HeldRange:
        self.reads.append((start, end))
        self.during_read()
        await asyncio.sleep(0)
        stop = min(end, self.end)
        return HeldRange(0, self.end, [(o, f"v{o}".encode()) for o in range(start, stop)])


def watch_over(clicks: ShortLog, clock: Callable[[], float] = time.monotonic) -> tuple[LogWatch, Answer, list[int]]:
    """A log watch over the twin, and the click offsets its repairs answer."""
    metrics = create_metrics(CollectorRegistry())
    watch = LogWatch(TopicNames(), metrics, clicks, ShortLog(0), clock=clock)  # type: ignore[arg-type]
    answered: list[int] = []

    async def answer(messages: list[Message]) -> None:
        answered.extend(m.offset for m in messages)

    return watch, answer, answered


def test_a_repair_answers_offsets_the_broker_writes_again_after_it_read_the_logs_end() -> None:
    # Faust's high watermark after the broker lost records is from the old, longer log; a repair
    # that took the range up to it as read would never answer the clicks written there later.
    clicks = ShortLog(end=150)
    watch, answer, answered = watch_over(clicks)
    watch.repair(0, 100, 200)
    asyncio.run(watch.continue_repair(0, answer))
    assert answered == list(range(100, 150)) and 0 in watch.repairs, "the repair waits for 150..199"
    asyncio.run(watch.continue_repair(0, answer))
    assert answered == list(range(100, 150)), "nothing is answered twice while the log has not grown"
    clicks.end = 230
    asyncio.run(watch.continue_repair(0, answer))
    assert answered == list(range(100, 200)), "once written, the rest of the range is answered, and no more"
    assert 0 not in watch.repairs, "the repair is done at its end"


def test_routine_checks_read_each_record_once_a_margin_after_it_was_handled_and_suspicion_reads_all() -> None:
    now = [0.0]
    clicks = ShortLog(end=10_000)
    watch, _, _ = watch_over(clicks, clock=lambda: now[0])

    def handle(start: int, end: int) -> None:
        watch.note_handled([Message("clicks", 0, o, f"v{o}".encode()) for o in range(start, end)], repair=False)

    def check_at(t: float, highwater: int = 10_000) -> None:
        now[0] = t
        asyncio.run(watch.verify_log(0, highwater))

    every, margin = VERIFY_EVERY_S, VERIFY_MARGIN_S
    handle(0, 100)
    check_at(0.0)
    handle(100, 200)
    check_at(every / 2)
    assert clicks.reads == [], "nothing was handled a margin ago yet"
    check_at(margin)
    assert clicks.reads == [(0, 100)], "what was handled by 0 s is due a margin later"
    check_at(margin + every / 2)
    assert clicks.reads == [(0, 100)], "due, but one routine check per VERIFY_EVERY_S"
    check_at(margin + every)
    assert clicks.reads == [(0, 100), (100, 200)], "then the rest, and nothing twice"
    handle(200, 300)
    check_at(margin + every + 0.1)
    check_at(2 * margin + every)
    assert clicks.reads[-1] == (100, 200), "not due yet"
    check_at(2 * margin + every + 0.1)
    assert clicks.reads == [(0, 100), (100, 200), (200, 300)], "each record once"
    watch.suspect[0] = ("rewind", 150)
    check_at(4 * margin + 0.1)
    assert clicks.reads[-1] == (0, 300), "a suspect partition is read whole, at once"
    check_at(4 * margin + 0.2, highwater=150)
    assert clicks.reads[-2:] == [(0, 300), (0, 300)], "so is a log that ends before what was handled"


def test_the_watch_names_the_offsets_that_now_hold_another_record() -> None:
    watch, _, _ = watch_over(ShortLog(0))
    first = [Message("clicks", 0, o, f"a{o}".encode()) for o in range(5)]
    assert watch.note_handled(first, repair=False) == set()
    again = [Message("clicks", 0, o, (f"b{o}" if o >= 3 else f"a{o}").encode()) for o in range(2, 6)]
    assert watch.note_handled(again, repair=False) == {(0, 3), (0, 4)}, "offset 5 is new, 2 unchanged"
    assert watch.suspect[0] == ("rewritten", 3), "the next tick checks the partition's log"


def test_answers_found_lost_during_a_repairs_read_are_answered_too() -> None:
    # Measured (`streamrec bench reliability --phases broker`, busy machine): the answers of clicks
    # 3526-3528 were found lost, then those of 3529-3531 while 3526-3528 were being read; the
    # repair ended after its read and took the added range with it. Those 3 clicks were never
    # answered.
    clicks = ShortLog(end=5000)
    watch, answer, answered = watch_over(clicks)
    watch.answer_again([(0, 3526), (0, 3528)], "answers_lost")
    clicks.during_read = lambda: watch.answer_again([(0, 3529), (0, 3531)], "answers_lost")
    asyncio.run(watch.continue_repair(0, answer))
    clicks.during_read = lambda: None
    assert 0 in watch.repairs, "the range added during the read is still to do"
    asyncio.run(watch.continue_repair(0, answer))
    assert answered == list(range(3526, 3532)) and 0 not in watch.repairs


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
