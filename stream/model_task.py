"""The model task: switch models without a restart when the trainer (or `streamrec model
rollback`) announces a version on the models topic.

The announced version is loaded and the catalogue encoded into a second index in a thread while
batches keep being answered; the switch runs in the compute thread, so it falls between two
batches. An announcement naming a version the store lacks, or one that
does not load, is a dead letter and the worker keeps serving its model.
"""

from __future__ import annotations

import asyncio
import time

from streamrec.stream.handling import Message, handle_model_messages
from streamrec.stream.kafka_readers import assigned_consumer, poll
from streamrec.stream.worker_context import WorkerContext


async def watch_models(ctx: WorkerContext) -> None:
    load_version = ctx.hooks.load_version
    assert load_version is not None, "watching models needs hooks.load_version"
    rec, metrics = ctx.recommender, ctx.metrics
    consumer, tps = await assigned_consumer(ctx.settings.kafka_bootstrap, ctx.settings.topics.models)
    try:
        # Only announcements made from now on: at start the worker loaded the store's current version.
        await consumer.seek_to_end(*tps)
        loop = asyncio.get_running_loop()
        while True:
            batches = await poll(consumer, tps, ctx.idle_s)
            if not batches:
                continue
            messages = [
                Message(m.topic, m.partition, m.offset, m.value, m.timestamp) for msgs in batches.values() for m in msgs
            ]
            started = time.perf_counter()
            old = rec.model_version
            announced = await loop.run_in_executor(
                None, handle_model_messages, messages, old, load_version, ctx.hooks.has_version
            )
            if announced.dead:
                await asyncio.gather(*await ctx.send_dead(announced.dead))
            if announced.model is None:
                continue
            prepared = await loop.run_in_executor(None, rec.prepare_model, announced.model)
            await ctx.run_compute(rec.swap_model, prepared)
            metrics.model_info.labels(old).set(0)
            metrics.model_info.labels(rec.model_version).set(1)
            metrics.model_loaded.set(time.time())
            metrics.model_swap.observe(time.perf_counter() - started)
            metrics.index_size.set(len(rec.index))
            metrics.index_updated.set(time.time())
    finally:
        await consumer.stop()
