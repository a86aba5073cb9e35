"""The catalogue task: every worker reads every catalogue partition (no consumer group), so each
holds the whole catalogue and its own index while users are partitioned. New items are searchable
before the next click batch; clicks wait until the catalogue as it stood at start has been read.
"""

from __future__ import annotations

import asyncio
import logging
import time

from streamrec.stream.handling import Message, handle_catalogue_messages
from streamrec.stream.kafka_readers import assigned_consumer
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
                    ctx.catalogue_ready.set()
                    log.info("streamrec worker: catalogue read up to its end (%d items)", len(rec.index))
            batches = await consumer.getmany(timeout_ms=int(1000 * ctx.batch_wait_s), max_records=settings.batch_size)
            for tp, messages in batches.items():
                ctx.metrics.events_in.labels(topic).inc(len(messages))
                await apply_catalogue_messages(
                    ctx, [Message(tp.topic, tp.partition, m.offset, m.value, m.timestamp) for m in messages]
                )
            if not batches:
                # Nothing new: stop fetching for a moment. A broker that answers empty fetches at
                # once (noida-db) would otherwise keep this loop, which the click agent shares,
                # busy; it bounds the added catalogue latency by catalogue_idle_ms.
                consumer.pause(*tps)
                await asyncio.sleep(ctx.idle_s)
                consumer.resume(*tps)
    finally:
        await consumer.stop()


async def apply_catalogue_messages(ctx: WorkerContext, messages: list[Message]) -> None:
    outcome = handle_catalogue_messages(ctx.recommender, messages, ctx.journal)
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
