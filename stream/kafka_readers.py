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


# How long a resumed reader's fetches may run before an empty poll pauses it again. noida-db
# answers a fetch at once when there is nothing (it ignores fetch.max.wait.ms), so aiokafka's
# fetcher asks again and again for as long as the partitions are resumed: keeping that window
# short, not the poll timeout, is what bounds the broker's and this process's idle cost.
FETCH_WINDOW_MS = 10


async def poll(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], idle_s: float, max_records: int | None = None
) -> dict[TopicPartition, list]:
    """One poll of a whole-topic reader: what arrives within FETCH_WINDOW_MS; when nothing did,
    fetching stops for `idle_s` (which bounds how late the reader sees a new record)."""
    batches = await consumer.getmany(timeout_ms=FETCH_WINDOW_MS, max_records=max_records)
    if not batches:
        consumer.pause(*tps)
        await asyncio.sleep(idle_s)
        consumer.resume(*tps)
    return batches
