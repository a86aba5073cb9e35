"""The click agent: micro-batches of clicks in, recommendations and dead letters out.

`answer_stream` is the agent's body (stream/app.py registers it on the clicks topic). It keeps
three things apart so that they overlap instead of queueing behind each other:

- **batching, on the event loop** (`next_batch`): the agent waits for one click, then takes every
  click already delivered, up to `STREAMREC_BATCH_SIZE`. Under light load a click is answered
  alone at once; under heavy load the batch is whatever arrived while the previous batch was being
  computed, so batches grow to what keeps up. No fixed wait is added (`STREAMREC_BATCH_WAIT_MS`
  can add one, for deployments that prefer larger batches to freshness).
- **compute, in the worker's one compute thread** (`WorkerContext.compute`): decoding, state
  writes, encoding and search of a batch are one call into Kafka-free code
  (`stream/handling.py`). Torch, FAISS and RocksDB release the GIL, so the event loop keeps
  fetching and sending meanwhile. Every call that changes the recommender (clicks, catalogue,
  model swaps) goes through that one thread, in order, so none of them needs a lock.
- **finishing, on the event loop** (`ClickPipeline._finish`): a batch's answers are handed to the
  producer at once; a task waits for the broker's acknowledgements, records the batch in the
  journal and metrics, and only then acknowledges the input events to Faust. Batches finish in
  order, and at most `PIPELINE_DEPTH` are between compute and acknowledgement. A crash replays at
  most the unacknowledged batches, whose clicks the sequence store recognises by event id and the
  journal keeps from being answered twice.

The agent reads the events Faust delivers to its channel directly instead of iterating the Faust
stream: the stream's per-event processors, sensors and take-buffer measured as most of Faust's
cost per click (docs/operations.md, "Hot path"). Faust still owns the consumer, the group, the
delivery into the channel and the offset commits; the agent acknowledges each event itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from faust.types import EventT

from streamrec.ops.metrics import Metrics
from streamrec.stream.handling import ClickOutcome, Message, handle_click_messages
from streamrec.stream.schemas import RecommendationRecord, RecordError, decode_click
from streamrec.stream.worker_context import WorkerContext

log = logging.getLogger(__name__)

# Batches computed but not yet acknowledged by the broker: one finishing while the next computes.
PIPELINE_DEPTH = 2


async def answer_stream(ctx: WorkerContext, stream: Any) -> None:
    """The agent: once the catalogue is read, answer adaptive micro-batches for ever."""
    await ctx.catalogue_ready.wait()
    log.info("streamrec worker: answering clicks")
    channel = aiter(stream.channel)  # the agent's own clone, the queue Faust delivers into
    pipeline = pipeline_of(ctx)
    while True:
        try:
            events = await next_batch(channel.queue, ctx.settings.batch_size, ctx.batch_wait_s)
        except StopAsyncIteration:
            break  # Faust ends the channel when the worker stops
        await pipeline.submit([message_of(e) for e in events], events)
    await pipeline.drain()


async def next_batch(queue: asyncio.Queue, most: int, wait_s: float = 0.0) -> list[Any]:
    """Wait for one item, then take what is already queued, up to `most`; with `wait_s` > 0, wait
    up to that long (from the first item) for the batch to fill."""
    assert most >= 1, "a batch holds at least one item"
    batch = [await queue.get()]
    deadline = time.monotonic() + wait_s
    while len(batch) < most:
        if not queue.empty():
            batch.append(queue.get_nowait())
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            batch.append(await asyncio.wait_for(queue.get(), left))
        except TimeoutError:
            break
    return batch


def message_of(event: EventT) -> Message:
    m = event.message
    return Message(m.topic, m.partition, m.offset, event.value, int(m.timestamp * 1000))


class ClickPipeline:
    """Compute of one batch overlapping the sends and acknowledgements of the one before."""

    def __init__(self, ctx: WorkerContext, depth: int = PIPELINE_DEPTH) -> None:
        assert depth >= 1, "at least one batch in flight"
        self.ctx = ctx
        self.depth = depth
        self.finishing: deque[asyncio.Task[None]] = deque()

    async def submit(self, messages: list[Message], events: Sequence[EventT] = (), repair: bool = False) -> None:
        """Compute a batch and start sending its answers; returns before the broker acknowledged
        them (`drain` waits). `events` are acknowledged to Faust once the batch is finished;
        `repair` marks clicks the log watch answers again after the broker lost records (no rewind
        check, answered even if the journal says they were)."""
        ctx = self.ctx
        while len(self.finishing) >= self.depth:
            await self.finishing.popleft()
        async with ctx.answering:
            started = time.monotonic()
            _observe_arrival(ctx, messages, repair)
            if not repair:
                await catch_up_partitions(ctx, messages)
            assert ctx.watch is not None, "the context builds its log watch"
            rewritten = ctx.watch.note_handled(messages, repair)
            outcome = await ctx.run_compute(
                handle_click_messages, ctx.recommender, messages, ctx.journal, repair, rewritten
            )
            note_outcome(ctx, outcome)
            t_send = time.perf_counter()
            dead = await ctx.send_dead(outcome.dead)
            topic = ctx.settings.topics.recommendations
            sent = [await ctx.send(topic, key, value) for key, value in outcome.encoded]
        previous = self.finishing[-1] if self.finishing else None
        task = asyncio.create_task(self._finish(previous, outcome, dead, sent, events, started, t_send))
        self.finishing.append(task)

    async def drain(self) -> None:
        """Wait until every submitted batch is finished."""
        while self.finishing:
            await self.finishing.popleft()

    async def _finish(
        self,
        previous: asyncio.Task[None] | None,
        outcome: ClickOutcome,
        dead: list[Any],
        sent: list[Any],
        events: Sequence[EventT],
        started: float,
        t_send: float,
    ) -> None:
        ctx = self.ctx
        metrics = ctx.metrics
        assert ctx.watch is not None, "the context builds its log watch"
        if previous is not None:
            await previous  # batches finish in order: the journal's answered offsets only grow
        if dead:
            await asyncio.gather(*dead)
        results = await asyncio.gather(*sent)
        values = [value for _, value in outcome.encoded]
        ctx.watch.note_written(zip(results, values, outcome.sources, strict=True))
        if ctx.journal is not None:
            ctx.journal.done(ctx.settings.topics.clicks, outcome.last, outcome.offsets)
        for event in events:
            event.ack()
        metrics.stage_latency.labels("send").observe(time.perf_counter() - t_send)
        if ctx.hooks.on_recommendations is not None:
            ctx.hooks.on_recommendations(outcome.recommendations)
        for rec in outcome.recommendations:
            metrics.freshness.observe(max(0, rec.emitted_at - rec.event_time) / 1000.0)
        metrics.recommendations.inc(len(outcome.recommendations))
        count_slots(metrics, outcome.recommendations)
        metrics.new_items_held.set(len(ctx.recommender.new_items))
        metrics.users.set(ctx.recommender.sequences.n_users())
        metrics.processing_latency.observe(time.monotonic() - started)


def count_slots(metrics: Metrics, recommendations: list[RecommendationRecord]) -> None:
    """Recommended items by kind: explore (quota slot), new (calibrated content-placed) or warm."""
    explore = new = total = 0
    for rec in recommendations:
        total += len(rec.items)
        for item in rec.items:
            explore += item.explore
            new += item.new and not item.explore
    for kind, n in (("explore", explore), ("new", new), ("warm", total - explore - new)):
        if n:
            metrics.recommended_slots.labels(kind).inc(n)


async def answer_clicks(ctx: WorkerContext, messages: list[Message], repair: bool = False) -> None:
    """Answer one micro-batch and wait until it is finished (the log watch's repairs, tests)."""
    pipeline = pipeline_of(ctx)
    await pipeline.submit(messages, repair=repair)
    await pipeline.drain()


def pipeline_of(ctx: WorkerContext) -> ClickPipeline:
    """The context's one click pipeline (the agent and the log watch's repairs share it)."""
    if ctx.pipeline is None:
        ctx.pipeline = ClickPipeline(ctx)
    return ctx.pipeline


def _observe_arrival(ctx: WorkerContext, messages: list[Message], repair: bool) -> None:
    metrics, topics = ctx.metrics, ctx.settings.topics
    metrics.events_in.labels(topics.clicks).inc(len(messages))
    metrics.batch_size.observe(len(messages))
    if not repair:
        oldest = min(m.timestamp_ms for m in messages)
        metrics.batch_wait.observe(max(0.0, time.time() - oldest / 1000.0))
        assert ctx.watch is not None, "the context builds its log watch"
        ctx.watch.note_rewinds(messages)


def note_outcome(ctx: WorkerContext, outcome: ClickOutcome) -> None:
    """Stage timings, duplicates and reused offsets of a computed batch, into metrics and the log."""
    metrics, topics = ctx.metrics, ctx.settings.topics
    for stage, seconds in outcome.stage_seconds.items():
        metrics.stage_latency.labels(stage).observe(seconds)
    for part, n in outcome.reused_offsets.items():
        metrics.discontinuities.labels(topics.clicks, str(part), "reused_offset").inc()
        log.warning(
            "streamrec worker: %d clicks at already-answered offsets of %s[%d] carry new event ids: "
            "the broker reused offsets after losing data; answering them",
            n,
            topics.clicks,
            part,
        )
    metrics.duplicates.inc(outcome.duplicates)
    metrics.already_answered.inc(outcome.already_answered)


async def catch_up_partitions(ctx: WorkerContext, messages: list[Message]) -> None:
    """Apply clicks of this batch's partitions that another worker answered since this worker's
    state last saw them."""
    assert ctx.watch is not None, "the context builds its log watch"
    first: dict[int, int] = {}
    for m in messages:
        first[m.partition] = min(first.get(m.partition, m.offset), m.offset)
    for part, offset in first.items():
        applied = ctx.recommender.sequences.applied_offset(part)
        if offset <= applied + 1:
            continue
        raw = await ctx.watch.click_log.read(part, applied + 1, offset)
        missed = []
        for _, value in raw:
            try:
                missed.append(decode_click(value))
            except RecordError:
                continue  # the worker that read it first sent it to dead letters
        caught = await ctx.run_compute(ctx.recommender.catch_up, missed, {part: offset - 1})
        ctx.metrics.caught_up.inc(caught)
