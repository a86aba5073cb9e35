"""The catalogue task: every worker reads every catalogue partition (no consumer group), so each
holds the whole catalogue and its own index while users are partitioned. Items are encoded and
indexed in the worker's compute thread, in turn with click batches, so a new item is searchable
from the next click batch on; clicks wait until the catalogue as it stood at start has been read.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

from streamrec.stream.handling import Message, handle_catalogue_messages
from streamrec.stream.kafka_readers import assigned_consumer, poll
from streamrec.stream.schemas import now_ms
from streamrec.stream.worker_context import WorkerContext

log = logging.getLogger(__name__)


async def read_catalogue(ctx: WorkerContext) -> None:
    """Resumes from the offsets the catalogue store recorded; re-applying an upsert or a
    withdrawal is harmless."""
    settings, rec = ctx.settings, ctx.recommender
    topic = settings.topics.catalogue
    consumer, tps = await assigned_consumer(settings.kafka_bootstrap, topic)
    try:
        for tp in tps:
            stored = rec.catalogue.offset(tp.partition)
            if stored >= 0:
                consumer.seek(tp, stored + 1)
            else:
                await consumer.seek_to_beginning(tp)
        ends = await consumer.end_offsets(tps)
        while True:
            if not ctx.catalogue_ready.is_set():
                positions = {tp: await consumer.position(tp) for tp in tps}
                if all(positions[tp] >= ends[tp] for tp in tps):
                    # What exists now (the catalogue, the model's tables, the caches' shells) lives
                    # as long as the worker: moved out of the garbage collector's sight, so a full
                    # collection no longer walks it while clicks wait on the event loop.
                    gc.freeze()
                    ctx.catalogue_ready.set()
                    log.info("streamrec worker: catalogue read up to its end (%d items)", len(rec.index))
            batches = await poll(consumer, tps, ctx.idle_s, settings.batch_size)
            for tp, messages in batches.items():
                ctx.metrics.events_in.labels(topic).inc(len(messages))
                await apply_catalogue_messages(
                    ctx, [Message(tp.topic, tp.partition, m.offset, m.value, m.timestamp) for m in messages]
                )
    finally:
        await consumer.stop()


async def apply_catalogue_messages(ctx: WorkerContext, messages: list[Message]) -> None:
    outcome = await ctx.run_compute(handle_catalogue_messages, ctx.recommender, messages, ctx.journal)
    if outcome.applied:
        searchable = now_ms()
        for rec in outcome.applied:
            ctx.metrics.catalogue_latency.observe(max(0, searchable - rec.event_time) / 1000.0)
        ctx.metrics.index_updated.set(time.time())
    futures = await ctx.send_dead(outcome.dead)
    if futures:
        await asyncio.gather(*futures)
    # The offset is saved once every record of the batch is applied or dead-lettered, so a restart
    # never meets the same bad record again.
    ctx.recommender.catalogue.record_offsets(outcome.last)
    if ctx.journal is not None:
        ctx.journal.done(messages[0].topic, outcome.last, outcome.offsets)
    ctx.metrics.index_size.set(len(ctx.recommender.index))
