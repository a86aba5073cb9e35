"""The worker's watch over its input and output logs: lag, offsets going backwards, records the
broker lost, and answering the affected clicks (again).

The bookkeeping without Kafka is in stream/log_check.py (checksums per partition, confirmation
marks, repair ranges); this module holds that state for one worker, reads the logs back with its
own readers (stream/click_log.py) and decides what to answer again. The click agent reports what
it handled and wrote (`note_rewinds`, `note_handled`, `note_written`); the app's one-second timer
calls `tick`, which answers repaired ranges through the `answer` callable it is given.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from aiokafka.errors import KafkaError

from streamrec.ops.metrics import Metrics
from streamrec.settings import TopicNames
from streamrec.state.batch_journal import BatchJournal
from streamrec.stream.click_log import ClickLogReader
from streamrec.stream.handling import Message
from streamrec.stream.log_check import DueChecks, PartitionLog, Repair

log = logging.getLogger(__name__)

# After the log went backwards, this many clicks of the partition before the divergence are
# answered again: the broker loses the last seconds of every topic, answers included (noida-db
# lost about 5 s, up to 1,200 clicks per partition, in `streamrec bench reliability`).
ANSWER_AGAIN_MESSAGES = 3_000
# How often each partition's records that came due are read back (log_check.DueChecks); a
# divergence is found however late, within the last log_check.DEFAULT_KEEP records of the partition.
# Each read opens a consumer of its own: reads every 2 s (four consumers a second) left freshness
# rising over a 12-minute soak (p50 36 -> 92 ms), every 10 s it levelled off at about 60 ms.
VERIFY_EVERY_S = 10.0
# A record is read back once this many seconds after it was handled, because a broker may
# acknowledge records it loses at an unclean stop a few seconds later.
VERIFY_MARGIN_S = 30.0

Answer = Callable[[list[Message]], Awaitable[None]]


class LogWatch:
    def __init__(
        self, topics: TopicNames, metrics: Metrics, clicks: ClickLogReader, answers: ClickLogReader,
        journal: BatchJournal | None = None, clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.clock = clock  # seconds, for when records become due to be read back (tests pass their own)
        self.topics = topics
        self.metrics = metrics
        self.click_log = clicks
        self.answer_log = answers
        self.journal = journal
        # Next offset to process per clicks partition, from what was handled (the fetch position
        # runs ahead of it by whatever Faust has buffered): the base of the lag metric and of the
        # check that the log did not go backwards.
        self.next_offset: dict[int, int] = {}
        # Checksums of the records handled per clicks partition, and ranges being answered again.
        self.handled: dict[int, PartitionLog] = {}
        self.repairs: dict[int, Repair] = {}
        # Partitions where the log went backwards, with the offset Faust resumed at: the check
        # finds where it diverged and answers up to there (Faust answers from there on).
        self.suspect: dict[int, tuple[str, int]] = {}  # {partition: (kind, offset where it was seen)}
        self.verified: dict[int, DueChecks] = {}  # {partition: how far the log was handled, when}
        # The same for the answers: {recommendations partition: answers written, tagged with their click}.
        self.written: dict[int, PartitionLog] = {}
        self.answers_verified: dict[int, DueChecks] = {}

    # --- what the click agent reports ------------------------------------------------------------

    def note_rewinds(self, messages: Sequence[Message]) -> None:
        """Offsets going backwards inside one process: the consumer was moved back (a rebalance
        after the broker came back, an out-of-range reset). The next tick looks at the partition."""
        for m in messages:
            expected = self.next_offset.get(m.partition)
            if expected is not None and m.offset < expected - 1:
                self.metrics.discontinuities.labels(m.topic, str(m.partition), "rewind").inc()
                self.suspect.setdefault(m.partition, ("rewind", m.offset))
                log.warning(
                    "streamrec worker: %s[%d] went back from offset %d to %d; checking the log",
                    m.topic,
                    m.partition,
                    expected,
                    m.offset,
                )
            self.next_offset[m.partition] = m.offset + 1

    def note_handled(self, messages: Sequence[Message], repair: bool) -> set[tuple[int, int]]:
        """Remember the records about to be handled; returns (partition, offset) of those that are
        not the record handled at that offset before (the log was rewritten there)."""
        rewritten = set()
        for m in messages:
            if not self.handled.setdefault(m.partition, PartitionLog()).note(m.offset, m.value):
                rewritten.add((m.partition, m.offset))
                if repair:
                    continue
                self.metrics.discontinuities.labels(m.topic, str(m.partition), "rewritten").inc()
                self.suspect.setdefault(m.partition, ("rewritten", m.offset))
        return rewritten

    def note_written(self, written: Iterable[tuple[Any, bytes, tuple[int, int]]]) -> None:
        """(RecordMetadata, value, (click partition, click offset)) of each answer the broker
        acknowledged; an offset that held another acknowledged answer means the broker lost it."""
        overwritten: list[tuple[int, int]] = []
        for meta, value, source in written:
            out_log = self.written.setdefault(meta.partition, PartitionLog())
            before = out_log.tag_at(meta.offset)
            if not out_log.note(meta.offset, value, tag=source) and before is not None:
                overwritten.append(before)
        if overwritten:
            self.answer_again(overwritten, "answers_lost")

    # --- the timer ---------------------------------------------------------------------------------

    async def tick(self, consumer: Any, answer: Answer, on_assignment: Callable[[set[int]], None] | None) -> None:
        """Lag from what was processed, and a check that no partition's log went backwards.
        `consumer` is Faust's (assignment, highwater, position)."""
        assigned = consumer.assignment()
        # The clicks' checks clear the suspicion they act on; the answers are checked whole too
        # when a clicks partition was suspect at this tick (a broker that lost clicks lost answers).
        suspected = bool(self.suspect)
        if on_assignment is not None:
            on_assignment({tp.partition for tp in assigned if tp.topic == self.topics.clicks})
        for tp in assigned:
            if tp.topic != self.topics.clicks:
                continue
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            processed = self.next_offset.get(tp.partition)
            if processed is None:
                try:
                    position = await consumer.position(tp)
                except KafkaError:
                    continue  # being reassigned; the next tick reads it
                processed = position if position is not None else highwater
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, highwater - processed))
            try:
                await self.verify_log(tp.partition, highwater)
                await self.continue_repair(tp.partition, answer)
            except (KafkaError, TimeoutError) as exc:
                # The broker is unreachable or the partition moving: the next tick tries again.
                log.info("streamrec worker: log check of %s deferred: %s", tp, exc)
        for part in list(self.written):
            try:
                await self.verify_answers(part, whole=suspected)
            except (KafkaError, TimeoutError) as exc:
                log.info("streamrec worker: answer check of partition %d deferred: %s", part, exc)

    async def verify_log(self, part: int, highwater: int) -> None:
        """Does the broker still hold the records handled? Read back, every VERIFY_EVERY_S, those
        handled VERIFY_MARGIN_S ago or more and not read back yet; after a rewind, a rewritten
        offset or a log that ends at or before what was handled, the whole window at once. If not,
        answer (again) the range that differs, with ANSWER_AGAIN_MESSAGES before it."""
        log_of = self.handled.get(part)
        last = log_of.last() if log_of is not None else None
        first = log_of.first() if log_of is not None else None
        if log_of is None or last is None or first is None or part in self.repairs:
            return
        checks = self.verified.setdefault(part, DueChecks(VERIFY_MARGIN_S))
        kind, seen_at = self.suspect.get(part, (None, last + 1))
        routine = kind is None and highwater > last
        scan = checks.plan(self.clock(), first, last, log_of.keep, not routine, VERIFY_EVERY_S)
        if scan is None:
            return
        scan_from, scan_to = scan
        held = await self.click_log.read_held(part, scan_from, scan_to)
        self.metrics.log_check_reads.labels(self.topics.clicks).inc(len(held.records))
        self.suspect.pop(part, None)
        diverged = log_of.diverged_range(held.records, scan_from, scan_to, held.log_start, held.log_end)
        if diverged is None and kind == "rewritten":
            # Faust delivered the rewritten offsets itself (their records were noted as handled);
            # the answers before them may still have been lost.
            diverged = (seen_at, seen_at)
        if diverged is None:
            if routine:
                checks.read_to(scan_to)
            return
        lo, hi = diverged
        kind = kind or ("beyond_end" if highwater <= last else "rewritten")
        self.metrics.discontinuities.labels(self.topics.clicks, str(part), kind).inc()
        start = max(first, lo - ANSWER_AGAIN_MESSAGES)
        log.warning(
            "streamrec worker: %s[%d] (%s) no longer holds the records handled at offsets %d to %d (the log "
            "ends at %d): the broker lost messages; answering offsets %d to %d (again) "
            "(docs/operations.md, 'Failures, what they look like, what to do')",
            self.topics.clicks,
            part,
            kind,
            lo,
            hi - 1,
            highwater,
            start,
            hi - 1,
        )
        if self.journal is not None:
            self.journal.unanswer_from(self.topics.clicks, part, start)
        log_of.forget(start, hi)
        checks.reset(start)
        self.repair(part, start, hi)

    async def verify_answers(self, part: int, whole: bool = False) -> None:
        """Does the recommendations topic still hold the answers this worker wrote to partition
        `part`? Read back as `verify_log` reads clicks: those written a margin ago or more, and the
        whole window with `whole` (a clicks partition was suspect). Clicks whose answers it lost
        are answered again."""
        log_of = self.written.get(part)
        last = log_of.last() if log_of is not None else None
        first = log_of.first() if log_of is not None else None
        if log_of is None or last is None or first is None:
            return
        checks = self.answers_verified.setdefault(part, DueChecks(VERIFY_MARGIN_S))
        scan = checks.plan(self.clock(), first, last, log_of.keep, whole, VERIFY_EVERY_S)
        if scan is None:
            return
        scan_from, scan_to = scan
        held = await self.answer_log.read_held(part, scan_from, scan_to)
        self.metrics.log_check_reads.labels(self.topics.recommendations).inc(len(held.records))
        diverged = log_of.diverged_range(held.records, scan_from, scan_to, held.log_start, held.log_end)
        if diverged is None:
            if not whole:
                checks.read_to(scan_to)
            return
        lo, hi = diverged
        lost = log_of.tags(lo, hi)
        log_of.forget(lo, hi)
        checks.reset(lo)
        self.answer_again(lost, "answers_lost")

    def answer_again(self, clicks: list[tuple[int, int]], kind: str) -> None:
        """Schedule the clicks (partition, offset) whose answers the broker lost to be answered again."""
        by_click_partition: dict[int, list[int]] = {}
        for click_part, offset in clicks:
            by_click_partition.setdefault(click_part, []).append(offset)
        for click_part, offsets in by_click_partition.items():
            self.metrics.discontinuities.labels(self.topics.recommendations, str(click_part), kind).inc()
            start, end = min(offsets), max(offsets) + 1
            log.warning(
                "streamrec worker: the broker lost %d answers it had acknowledged; answering %s[%d] offsets %d to %d "
                "again",
                len(offsets),
                self.topics.clicks,
                click_part,
                start,
                end - 1,
            )
            self.repair(click_part, start, end)

    def repair(self, part: int, start: int, end: int) -> None:
        """Answer offsets [start, end) of clicks partition `part` (again), with any repair already
        under way there (which may be in the middle of a read: it keeps what is added)."""
        current = self.repairs.get(part)
        if current is None:
            self.repairs[part] = Repair(start, end)
        else:
            current.add(start, end)

    async def continue_repair(self, part: int, answer: Answer) -> None:
        """Answer what the broker holds of a repaired range, as far as its log has grown back.

        How far it has grown is the end the read itself saw: Faust's high watermark is from its
        last fetch, and after the broker lost records it is often still the old, longer log's."""
        repair = self.repairs.get(part)
        if repair is None:
            return
        start, end = repair.next_range()
        held = await self.click_log.read_held(part, start, end)
        if held.records:
            await answer([Message(self.topics.clicks, part, o, v) for o, v in held.records])
        repair.read(start, end, held.log_end)
        if repair.done:
            del self.repairs[part]
            log.warning(
                "streamrec worker: %s[%d] answered again up to offset %d", self.topics.clicks, part, repair.end - 1
            )
