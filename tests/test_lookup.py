"""`GET /users/{id}/recommendations` (ops/lookup.py) and the compacted recommendations topic.

Pure logic against generated records, the partition function against a real producer on the real
broker, and a live worker answering from what it emitted."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import urlopen

from hypothesis import given, settings
from hypothesis import strategies as st
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

from streamrec.datasets import load_dataset
from streamrec.local.broker import LocalBroker
from streamrec.ops.lookup import LatestRecommendations, partition_of
from streamrec.settings import Settings, TopicNames
from streamrec.stream.rec_consumer import RecommendationReader
from streamrec.stream.schemas import RecommendationRecord, ScoredItem, encode_recommendation
from streamrec.stream.topics import ensure_topics


def rec(user: str, event: str) -> RecommendationRecord:
    return RecommendationRecord(user, [ScoredItem("i1", 0.5)], "v1", event, 1_800_000_000_000, 1_800_000_000_010)


def test_latest_record_per_user_and_eviction_of_the_least_recent() -> None:
    latest = LatestRecommendations(encode_recommendation, keep_users=2, partitions=4)
    latest.add([rec("a", "e1"), rec("b", "e2")])
    latest.add([rec("a", "e3")])
    code, body = latest.answer("a")
    assert code == 200 and json.loads(body)["event_id"] == "e3"
    latest.add([rec("c", "e4")])  # b is the least recently active: evicted
    code, body = latest.answer("b")
    assert code == 404 and json.loads(body)["error"] == "no_recommendations"
    assert latest.answer("c")[0] == 200


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=30), st.integers(1, 16))
def test_users_of_partitions_held_elsewhere_are_told_so(user: str, partitions: int) -> None:
    p = partition_of(user, partitions)
    assert 0 <= p < partitions
    elsewhere = LatestRecommendations(encode_recommendation, 10, partitions)
    elsewhere.hold(set(range(partitions)) - {p})
    code, body = elsewhere.answer(user)
    assert code == 404 and json.loads(body) == {**json.loads(body), "error": "not_held_here", "partition": p}
    here = LatestRecommendations(encode_recommendation, 10, partitions)
    here.hold({p})
    assert json.loads(here.answer(user)[1])["error"] == "no_recommendations"


def test_partition_of_is_the_producers_partition(broker: LocalBroker) -> None:
    topic = f"p{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic(topic, 5, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    try:
        for user in ["1", "42", "user-é", "x" * 50, "259"]:
            meta = producer.send(topic, key=user.encode(), value=b"{}").get(timeout=30)
            assert meta.partition == partition_of(user, 5), user
    finally:
        producer.close()


def test_recommendations_topic_is_compacted_also_after_an_upgrade(broker: LocalBroker) -> None:
    topics = TopicNames(prefix=f"c{uuid.uuid4().hex[:8]}-")
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic(topics.recommendations, 2, 1)])  # as an older version created it
    ensure_topics(broker.bootstrap, topics, 2)
    described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topics.recommendations)])
    admin.close()
    assert described["topic"][topics.recommendations]["cleanup.policy"]["value"] == "compact"


def test_a_live_worker_answers_with_the_latest_record_it_emitted(stream_settings: Settings, tmp_path: Path) -> None:
    from tests.helpers import boot, publish_now

    ds = load_dataset("ml-100k", stream_settings.data_dir)
    clicks = ds.events[:300]
    worker = boot(stream_settings, tmp_path, ds.items)
    try:
        reader = RecommendationReader(stream_settings.kafka_bootstrap, stream_settings.topics.recommendations)
        publish_now(stream_settings, clicks)
        last: dict[str, RecommendationRecord] = {}
        deadline = time.monotonic() + 90
        seen: set[str] = set()
        while len(seen) < len(clicks) and time.monotonic() < deadline:
            for r, _ in reader.poll(300):
                seen.add(r.event_id)
                last[r.user_id] = r
        reader.close()
        assert len(seen) == len(clicks)
        base = f"http://127.0.0.1:{stream_settings.dashboard_port}/users"
        for user, expected in list(last.items())[:20]:
            with urlopen(f"{base}/{user}/recommendations", timeout=5) as resp:
                got = json.loads(resp.read())
            assert got["event_id"] == expected.event_id and got["items"][0]["item_id"] == expected.items[0].item_id
        try:
            urlopen(f"{base}/nobody-{uuid.uuid4().hex}/recommendations", timeout=5)
            raise AssertionError("an unknown user must be a 404")
        except HTTPError as err:
            assert err.code == 404 and json.loads(err.read())["error"] == "no_recommendations"
    finally:
        assert worker.stop() == 0, f"worker did not stop cleanly; log {worker.log_path}"
