"""A plain Kafka consumer of the `recommendations` topic (no consumer group, all partitions).

Used by the demo's live tail, the integration tests and the pipeline benchmark; it stands for any
downstream consumer and uses nothing of the worker.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from kafka import KafkaConsumer, TopicPartition

from streamrec.stream.schemas import RecommendationRecord, decode_recommendation


class RecommendationReader:
    """Reads every partition of a topic from the beginning (or from the end with `from_end`)."""

    def __init__(self, bootstrap: str, topic: str, from_end: bool = False) -> None:
        self.topic = topic
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, consumer_timeout_ms=200
        )
        deadline = time.monotonic() + 20
        parts = self._consumer.partitions_for_topic(topic)
        while not parts:
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {topic} has no partitions")
            time.sleep(0.2)
            parts = self._consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        self._consumer.assign(tps)
        if from_end:
            self._consumer.seek_to_end(*tps)
            # seek_to_end is lazy: resolve the positions now, so records written from here on are read.
            for tp in tps:
                self._consumer.position(tp)
        else:
            self._consumer.seek_to_beginning(*tps)

    def poll(self, timeout_ms: int = 200) -> list[tuple[RecommendationRecord, float]]:
        """New records with their arrival time (s since epoch)."""
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=5000)
        arrived = time.time()
        return [(decode_recommendation(m.value), arrived) for msgs in batches.values() for m in msgs]

    def read_raw(self, timeout_ms: int = 200) -> Iterator[bytes]:
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=5000)
        for msgs in batches.values():
            for m in msgs:
                yield m.value

    def close(self) -> None:
        self._consumer.close()
