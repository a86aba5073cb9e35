"""The click agent: micro-batches of clicks in, recommendations and dead letters out.

`answer_stream` is the agent's body (stream/app.py registers it on the clicks topic);
`answer_clicks` handles one micro-batch: it makes one call into Kafka-free code
(stream/handling.py), sends what comes back, waits for the broker to acknowledge those sends,
records the batch in the journal and the metrics. Only then does Faust acknowledge the input, so a
crash replays at most the unacknowledged batch, whose clicks the sequence store recognises by
event id and the journal keeps from being answered twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from faust.types import EventT

from streamrec.stream.handling import Message, handle_click_messages
from streamrec.stream.schemas import RecordError, decode_click
from streamrec.stream.worker_context import WorkerContext

log = logging.getLogger(__name__)


async def answer_stream(ctx: WorkerContext, stream: Any) -> None:
    """The agent: once the catalogue is read, answer micro-batches of the Faust stream for ever."""
    await ctx.catalogue_ready.wait()
    log.info("streamrec worker: answering clicks")
    async for events in stream.take_events(ctx.settings.batch_size, within=ctx.batch_wait_s):
        await answer_clicks(ctx, [message_of(e) for e in events])


def message_of(event: EventT) -> Message:
    m = event.message
    return Message(m.topic, m.partition, m.offset, event.value, int(m.timestamp * 1000))


async def answer_clicks(ctx: WorkerContext, messages: list[Message], repair: bool = False) -> None:
    """Answer one micro-batch; `repair` marks clicks the log watch answers again after the broker
    lost records (no rewind check, answered even if the journal says they were)."""
    async with ctx.answering:
        await _answer_locked(ctx, messages, repair)


async def _answer_locked(ctx: WorkerContext, messages: list[Message], repair: bool) -> None:
    metrics, topics, watch = ctx.metrics, ctx.settings.topics, ctx.watch
    assert watch is not None, "the context builds its log watch"
    started = time.monotonic()
    metrics.events_in.labels(topics.clicks).inc(len(messages))
    metrics.batch_size.observe(len(messages))
    if not repair:
        oldest = min(m.timestamp_ms for m in messages)
        metrics.batch_wait.observe(max(0.0, time.time() - oldest / 1000.0))
        watch.note_rewinds(messages)
        await catch_up_partitions(ctx, messages)
    watch.note_handled(messages, repair)
    outcome = handle_click_messages(ctx.recommender, messages, ctx.journal, answer_again=repair)
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
    t_send = time.perf_counter()
    metrics.duplicates.inc(outcome.duplicates)
    metrics.already_answered.inc(outcome.already_answered)
    futures = await ctx.send_dead(outcome.dead)
    sent = [await ctx.send(topics.recommendations, key, value) for key, value in outcome.encoded]
    if futures:
        await asyncio.gather(*futures)
    results = await asyncio.gather(*sent)
    values = [value for _, value in outcome.encoded]
    watch.note_written(zip(results, values, outcome.sources, strict=True))
    if ctx.journal is not None:
        ctx.journal.done(topics.clicks, outcome.last, outcome.offsets)
    metrics.stage_latency.labels("send").observe(time.perf_counter() - t_send)
    if ctx.hooks.on_recommendations is not None:
        ctx.hooks.on_recommendations(outcome.recommendations)
    for rec in outcome.recommendations:
        metrics.freshness.observe(max(0, rec.emitted_at - rec.event_time) / 1000.0)
    metrics.recommendations.inc(len(outcome.recommendations))
    metrics.users.set(ctx.recommender.sequences.n_users())
    metrics.processing_latency.observe(time.monotonic() - started)


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
        loop = asyncio.get_running_loop()
        raw = await loop.run_in_executor(None, ctx.watch.click_log.read, part, applied + 1, offset)
        missed = []
        for _, value in raw:
            try:
                missed.append(decode_click(value))
            except RecordError:
                continue  # the worker that read it first sent it to dead letters
        ctx.metrics.caught_up.inc(ctx.recommender.catch_up(missed, {part: offset - 1}))
