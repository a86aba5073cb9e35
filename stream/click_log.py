"""Reading a range of the clicks topic: how a worker catches up users whose partition moved to it.

The clicks topic is the source of truth for sequences (the changelog, in Kafka Streams' terms: a
source topic that already holds every change). Each worker records, with its state, the last
offset of every clicks partition it applied (`SequenceStore.applied_offset`). When a worker is
handed a batch of partition p starting at offset o while its state holds p only up to a < o - 1,
the clicks in [a + 1, o) were answered by another worker meanwhile: this reader fetches them so
the state can apply them (without answering them again) before the batch is processed. The log
watch (stream/log_watch.py) reads ranges of the clicks and recommendations topics the same way.

It is aiokafka, like Faust's own consumer and producer, so the worker speaks to the broker through
one client family. Each read has its own short-lived consumer outside any group: reads are rare
(a log check every few seconds, a catch-up after a rebalance), and a fresh consumer needs no care
after the broker restarts.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

# Records per fetch round of a range read.
MAX_RECORDS = 2_000


@dataclass(frozen=True)
class HeldRange:
    """What the broker held of a range of one partition when it was read."""

    log_start: int  # the partition's first offset: everything before it was deleted by retention
    # The partition's end when read: no record at or past it existed yet, so a range read up to
    # `min(end, log_end)` is complete and the rest of it is still to come (an empty range: `end`).
    log_end: int
    records: list[tuple[int, bytes]]  # (offset, value), in offset order


class ClickLogReader:
    """Reads of offset ranges of one topic (aiokafka, no consumer group)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic

    async def read(self, partition: int, start: int, end: int, timeout_s: float = 30.0) -> list[tuple[int, bytes]]:
        """(offset, value) of every record with start <= offset < end that the broker holds."""
        return (await self.read_held(partition, start, end, timeout_s)).records

    async def read_held(self, partition: int, start: int, end: int, timeout_s: float = 30.0) -> HeldRange:
        """What the broker holds of [start, end): records before the log's start (deleted by
        retention), removed by compaction, or past its current end are simply absent. Raises
        TimeoutError when the range is not read within `timeout_s` (a partial read would look
        like records the broker lost), and aiokafka's KafkaError when the broker cannot answer."""
        if end <= start:
            return HeldRange(0, end, [])
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        try:
            async with asyncio.timeout(timeout_s):
                await consumer.start()
                return await self._read(consumer, partition, start, end)
        finally:
            await consumer.stop()

    async def _read(self, consumer: AIOKafkaConsumer, partition: int, start: int, end: int) -> HeldRange:
        tp = TopicPartition(self.topic, partition)
        consumer.assign([tp])
        first = (await consumer.beginning_offsets([tp]))[tp]
        # Records past the log's current end do not exist yet: do not wait for them.
        log_end = (await consumer.end_offsets([tp]))[tp]
        end = min(end, log_end)
        position = max(start, first)
        held = HeldRange(first, log_end, [])
        if position >= end:
            return held
        consumer.seek(tp, position)
        while True:
            batches = await consumer.getmany(tp, timeout_ms=1_000, max_records=MAX_RECORDS)
            for msg in batches.get(tp, []):
                if msg.offset >= end:
                    return held
                held.records.append((msg.offset, msg.value))
            # Compaction leaves gaps, so the range may end on an offset that holds no record.
            if await consumer.position(tp) >= end:
                return held
