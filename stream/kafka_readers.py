"""aiokafka consumers outside any consumer group, for the worker's tasks that read whole topics
(the catalogue, model announcements) beside Faust's group consumer of the clicks."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition


async def wait_for_partitions(consumer: AIOKafkaConsumer, topic: str, timeout_s: float = 60.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return sorted(parts)
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {topic} has no partitions: run `streamrec topics` first")
        await consumer.topics()  # refreshes metadata
        await asyncio.sleep(0.5)


async def assigned_consumer(bootstrap: str, topic: str) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    """A started consumer outside any group, assigned every partition of `topic` (the caller seeks
    and stops it)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = await wait_for_partitions(consumer, topic)
    except BaseException:
        await consumer.stop()
        raise
    tps = [TopicPartition(topic, p) for p in parts]
    consumer.assign(tps)
    return consumer, tps
