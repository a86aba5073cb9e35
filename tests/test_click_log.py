"""The worker's range reader (stream/click_log.py) and topic admin (stream/topics.py), both
aiokafka, against the real local broker: exact ranges, edges, and a broker that does not answer."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka.errors import KafkaError
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from streamrec.local.broker import LocalBroker, free_port
from streamrec.settings import TopicNames
from streamrec.stream.click_log import ClickLogReader
from streamrec.stream.topics import ensure_topics, topic_partitions


@pytest.fixture
def filled(broker: LocalBroker) -> tuple[str, int]:
    """A fresh 2-partition topic with 50 records in partition 1 (values name their index)."""
    topics = TopicNames(prefix=f"cl{uuid.uuid4().hex[:8]}-")
    ensure_topics(broker.bootstrap, topics, 2)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks=1)
    for i in range(50):
        producer.send(topics.clicks, value=f"v{i}".encode(), partition=1).get(timeout=30)
    producer.close()
    return topics.clicks, 50


def test_reads_exactly_the_range_asked(broker: LocalBroker, filled: tuple[str, int]) -> None:
    topic, n = filled
    reader = ClickLogReader(broker.bootstrap, topic)
    got = asyncio.run(reader.read(1, 10, 20))
    assert got == [(i, f"v{i}".encode()) for i in range(10, 20)], "offsets 10..19 in order, nothing else"
    assert asyncio.run(reader.read(1, 0, 1)) == [(0, b"v0")], "a one-record range at the log's start"


@pytest.mark.parametrize(("start", "end"), [(5, 5), (7, 3), (50, 60), (200, 300)])
def test_empty_and_future_ranges_return_at_once(
    broker: LocalBroker, filled: tuple[str, int], start: int, end: int
) -> None:
    topic, _ = filled
    assert asyncio.run(ClickLogReader(broker.bootstrap, topic).read(1, start, end, timeout_s=10)) == []


def test_a_range_past_the_end_stops_at_the_end(broker: LocalBroker, filled: tuple[str, int]) -> None:
    topic, n = filled
    got = asyncio.run(ClickLogReader(broker.bootstrap, topic).read(1, 45, 10_000, timeout_s=10))
    assert [o for o, _ in got] == list(range(45, n)), "records that do not exist yet are not waited for"
    assert asyncio.run(ClickLogReader(broker.bootstrap, topic).read(0, 0, 10, timeout_s=10)) == [], "empty partition"


def test_a_broker_that_does_not_answer_is_a_kafka_error() -> None:
    """The log watch defers its check on KafkaError or TimeoutError; nothing else may escape."""
    reader = ClickLogReader(f"127.0.0.1:{free_port()}", "clicks")
    with pytest.raises((KafkaError, TimeoutError)):
        asyncio.run(reader.read(0, 0, 10, timeout_s=10))


def test_a_compacted_range_is_read_with_its_gaps_and_the_logs_start(broker: LocalBroker) -> None:
    # noida-db compacts a `compact,delete` topic as its segments roll (measured: 40 keyed records
    # over 4 keys kept only each key's last), as Kafka does: the reader must not wait for offsets
    # that hold nothing, and reports where the log starts.
    topics = TopicNames(prefix=f"cp{uuid.uuid4().hex[:8]}-")
    ensure_topics(broker.bootstrap, topics, 1, retention_minutes=0.5)  # segments roll every 7.5 s
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks=1)
    n = 40
    for i in range(n):
        producer.send(topics.recommendations, key=f"user{i % 4}".encode(), value=f"v{i}".encode()).get(timeout=30)
        time.sleep(0.05)
    reader = ClickLogReader(broker.bootstrap, topics.recommendations)
    deadline = time.monotonic() + 30
    while len(asyncio.run(reader.read_held(0, 0, n, timeout_s=10)).records) == n:
        assert time.monotonic() < deadline, "the broker did not compact anything within 30 s"
        time.sleep(0.5)
        # noida-db rolls (and cleans) a segment only when a record arrives after its time is up.
        producer.send(topics.recommendations, key=b"later", value=b"later").get(timeout=30)
    producer.close()
    got = asyncio.run(reader.read_held(0, 0, n, timeout_s=10))
    offsets = [o for o, _ in got.records]
    assert offsets == sorted(offsets) and all(got.log_start <= o < n for o in offsets)
    assert all(v == f"v{o}".encode() for o, v in got.records), "what is held is what was written there"
    gaps = set(range(got.log_start, offsets[-1])) - set(offsets)
    assert gaps, f"compaction left no gap before a held record: start {got.log_start}, {offsets}"
    assert offsets[-4:] == list(range(n - 4, n)), "each key's latest record is kept"


def test_ensure_topics_creates_counts_and_configs_and_is_idempotent(broker: LocalBroker) -> None:
    topics = TopicNames(prefix=f"et{uuid.uuid4().hex[:8]}-")
    wanted = topic_partitions(topics, 3)
    assert ensure_topics(broker.bootstrap, topics, 3) == wanted
    assert ensure_topics(broker.bootstrap, topics, 3) == wanted, "a second call changes nothing"
    # Checked with the other client family, so the admin code does not check itself.
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topics.recommendations)])
    finally:
        admin.close()
    policy = described["topic"][topics.recommendations]["cleanup.policy"]["value"]
    assert policy == "compact", described


def test_retention_bounds_the_high_volume_topics_and_keeps_the_catalogue(broker: LocalBroker) -> None:
    topics = TopicNames(prefix=f"rt{uuid.uuid4().hex[:8]}-")
    ensure_topics(broker.bootstrap, topics, 1, retention_minutes=0.02)  # 1.2 s
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        names = [topics.clicks, topics.recommendations, topics.dead_letters, topics.catalogue]
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])["topic"]
    finally:
        admin.close()
    for name in names[:3]:
        assert described[name]["retention.ms"]["value"] == "1200", (name, described[name])
        assert described[name]["segment.ms"]["value"] == "300", (name, described[name])
    assert described[topics.recommendations]["cleanup.policy"]["value"] == "compact,delete"
    assert described[topics.catalogue].get("retention.ms", {}).get("value") != "1200", "the catalogue is kept"
    # The broker really drops what is older than that: the log's start moves past the old records.
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks=1)
    for i in range(20):
        producer.send(topics.clicks, value=f"old{i}".encode()).get(timeout=30)
    deadline = time.monotonic() + 20
    reader = ClickLogReader(broker.bootstrap, topics.clicks)
    while asyncio.run(reader.read(0, 0, 1)) and time.monotonic() < deadline:
        time.sleep(0.5)
        producer.send(topics.clicks, value=b"new").get(timeout=30)
    producer.close()
    assert not asyncio.run(reader.read(0, 0, 1)), "offset 0 is still readable 20 s after a 1.2 s retention"
