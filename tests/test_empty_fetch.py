"""The wait after an empty fetch (stream/empty_fetch.py), on the real local broker, which answers an
empty fetch at once."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.consumer.fetcher import Fetcher

from streamrec.local.broker import LocalBroker
from streamrec.settings import TopicNames
from streamrec.stream import empty_fetch
from streamrec.stream.empty_fetch import empty_fetch_wait_ms, wait_after_empty_fetches
from streamrec.stream.topics import ensure_topics


@pytest.fixture
def counted_fetches() -> Iterator[list[float]]:
    """Times of every fetch aiokafka sends while the test runs (the wait, when on, comes after)."""
    times: list[float] = []
    inner = empty_fetch._original

    async def counting(self: Fetcher, assignment: object, node_id: int, request: object) -> bool:
        times.append(time.monotonic())
        return await inner(self, assignment, node_id, request)

    saved = Fetcher._proc_fetch_request
    empty_fetch._original = counting
    Fetcher._proc_fetch_request = counting  # type: ignore[method-assign]
    try:
        yield times
    finally:
        empty_fetch._original = inner
        Fetcher._proc_fetch_request = saved  # type: ignore[method-assign]


async def _idle_then_one_record(bootstrap: str, topic: str, idle_s: float) -> bytes | None:
    """A consumer left `idle_s` on an empty topic, then the value of one record produced after it."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await consumer.start()
    await producer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.seek_to_beginning()
        await asyncio.sleep(idle_s)
        await producer.send_and_wait(topic, b"hello", partition=0)
        record = await asyncio.wait_for(consumer.getone(), 10)
        return record.value
    finally:
        await producer.stop()
        await consumer.stop()


def _run(broker: LocalBroker, idle_s: float) -> bytes | None:
    topics = TopicNames(f"empty-fetch-{uuid.uuid4().hex[:8]}-")
    ensure_topics(broker.bootstrap, topics, 1)
    return asyncio.run(_idle_then_one_record(broker.bootstrap, topics.clicks, idle_s))


def test_an_idle_consumer_fetches_at_most_once_per_wait_and_still_gets_records(
    broker: LocalBroker, counted_fetches: list[float]
) -> None:
    wait_after_empty_fetches(50.0)
    try:
        assert empty_fetch_wait_ms() == 50.0
        value = _run(broker, idle_s=1.0)
    finally:
        wait_after_empty_fetches(0.0)
    assert value == b"hello", "a record produced while the consumer waits still arrives"
    # Over a second of an empty topic, fetches are at least 50 ms apart (a slow machine only makes
    # them fewer); the count includes the record's own fetch and the first, before any wait.
    gaps = [b - a for a, b in zip(counted_fetches, counted_fetches[1:], strict=False)]
    assert len(counted_fetches) <= 1.0 / 0.05 + 3
    assert all(g >= 0.045 for g in gaps[:-1]), "an empty fetch is followed by the wait"


def test_without_the_wait_the_local_broker_answers_empty_fetches_at_once(
    broker: LocalBroker, counted_fetches: list[float]
) -> None:
    """The broker quirk the wait is for: with it off, an idle consumer fetches far more often."""
    wait_after_empty_fetches(0.0)
    assert empty_fetch_wait_ms() == 0.0
    value = _run(broker, idle_s=0.5)
    assert value == b"hello"
    assert len(counted_fetches) > 0.5 / 0.05 * 5, "noida-db held empty fetches: the wait may not be needed"
