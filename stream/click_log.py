"""Reading a range of the clicks topic: how a worker catches up users whose partition moved to it.

The clicks topic is the source of truth for sequences (the changelog, in Kafka Streams' terms: a
source topic that already holds every change). Each worker records, with its state, the last
offset of every clicks partition it applied (`SequenceStore.applied_offset`). When a worker is
handed a batch of partition p starting at offset o while its state holds p only up to a < o - 1,
the clicks in [a + 1, o) were answered by another worker meanwhile: this reader fetches them so
the state can apply them (without answering them again) before the batch is processed.
"""

from __future__ import annotations

from kafka import KafkaConsumer, TopicPartition


class ClickLogReader:
    """Synchronous reads of offset ranges of one topic (kafka-python, no consumer group)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic

    def read(self, partition: int, start: int, end: int, timeout_s: float = 30.0) -> list[tuple[int, bytes]]:
        """(offset, value) of every record with start <= offset < end; records before the log's
        start (deleted by retention) or past its current end are simply absent."""
        if end <= start:
            return []
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap.split(","),
            enable_auto_commit=False,
            group_id=None,
            consumer_timeout_ms=int(timeout_s * 1000),
            max_poll_records=2000,
        )
        try:
            tp = TopicPartition(self.topic, partition)
            consumer.assign([tp])
            first = consumer.beginning_offsets([tp])[tp]
            # Records past the log's current end do not exist yet: do not wait for them.
            end = min(end, consumer.end_offsets([tp])[tp])
            consumer.seek(tp, max(start, first))
            out: list[tuple[int, bytes]] = []
            if max(start, first) >= end:
                return out
            for msg in consumer:
                if msg.offset >= end:
                    break
                out.append((msg.offset, msg.value))
                if msg.offset >= end - 1:
                    break
            return out
        finally:
            consumer.close()
