"""End to end against the real local broker: replay, worker process, plain Kafka consumers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamrec.bench import malformed
from streamrec.datasets import load_dataset
from streamrec.local.processes import start_worker
from streamrec.settings import Settings
from streamrec.state.sequence_store import RocksSequenceStore
from streamrec.stream.rec_consumer import RecommendationReader
from streamrec.stream.schemas import RecordError, now_ms
from streamrec.stream.worker import worker_state_dir
from tests.helpers import boot, publish_now, read_until

pytestmark = pytest.mark.integration


def check_replay_pipeline(stream_settings: Settings, tmp_path: Path, n_clicks: int = 1500) -> None:
    """Every click gets a recommendation with no clicked item, carrying the model version."""
    ds = load_dataset("ml-100k", stream_settings.data_dir)
    clicks = ds.events[:n_clicks]
    worker = boot(stream_settings, tmp_path, ds.items)
    try:
        reader = RecommendationReader(stream_settings.kafka_bootstrap, stream_settings.topics.recommendations)
        publish_now(stream_settings, clicks)
        recs = read_until(reader, lambda got: len({r.event_id for r in got}) >= len(clicks))
        reader.close()
    finally:
        assert worker.stop() == 0, f"worker did not stop cleanly; log {worker.log_path}"
    by_event = {r.event_id: r for r in recs}
    assert set(by_event) == {e.event_id for e in clicks}, "every click yields a recommendation"
    assert {r.user_id for r in recs} == {e.user_id for e in clicks}
    history: dict[str, set[str]] = {}
    for event in clicks:
        history.setdefault(event.user_id, set()).add(event.item_id)
        rec = by_event[event.event_id]
        assert rec.user_id == event.user_id
        assert rec.model_version == "content-v1"
        assert len(rec.items) == stream_settings.top_k
        clicked = {i.item_id for i in rec.items} & history[event.user_id]
        assert not clicked, f"recommended already-clicked items {clicked}"
        assert rec.emitted_at >= rec.event_time


def test_replayed_clicks_get_fresh_recommendations(stream_settings: Settings, tmp_path: Path) -> None:
    check_replay_pipeline(stream_settings, tmp_path)


def test_malformed_events_go_to_dead_letters_with_reason(stream_settings: Settings, tmp_path: Path) -> None:
    ds = load_dataset("ml-100k", stream_settings.data_dir)
    worker = boot(stream_settings, tmp_path, ds.items[:50])
    topics = stream_settings.topics
    good = {"v": 1, "event_id": "ok-1", "user_id": "u1", "item_id": ds.items[0].item_id, "event_time": now_ms()}
    bad = [
        (b"\xff\x00garbage", "undecodable"),
        (json.dumps({**good, "event_id": "b1", "user_id": None}).encode(), "missing_field"),
        (json.dumps({**good, "event_id": "b2", "event_time": "soon"}).encode(), "bad_type"),
        (json.dumps({**good, "event_id": "b3", "event_time": 5}).encode(), "bad_timestamp"),
        (json.dumps({**good, "event_id": "b4", "item_id": "no-such-item"}).encode(), "unknown_item"),
    ]
    try:
        producer = KafkaProducer(bootstrap_servers=stream_settings.kafka_bootstrap)
        for raw, _ in bad:
            producer.send(topics.clicks, key=b"u1", value=raw)
        producer.send(topics.clicks, key=b"u1", value=json.dumps(good).encode())
        producer.flush()
        producer.close()
        consumer = KafkaConsumer(bootstrap_servers=stream_settings.kafka_bootstrap, consumer_timeout_ms=300)
        consumer.assign([TopicPartition(topics.dead_letters, 0)])
        consumer.seek_to_beginning()
        letters: list[dict] = []
        deadline = time.monotonic() + 60
        while len(letters) < len(bad) and time.monotonic() < deadline:
            letters += [json.loads(m.value) for m in consumer]
        consumer.close()
        reader = RecommendationReader(stream_settings.kafka_bootstrap, topics.recommendations)
        recs = read_until(reader, lambda got: any(r.event_id == "ok-1" for r in got), timeout_s=60)
        reader.close()
        dead_total = worker.metrics()
    finally:
        worker.stop()
    assert sorted(d["reason"] for d in letters) == sorted(reason for _, reason in bad)
    for d in letters:
        assert d["source_topic"] == topics.clicks and d["detail"] and d["offset"] >= 0
    assert any(d["payload"].startswith("\ufffd") for d in letters), "original bytes are kept (with replacement)"
    assert [r.event_id for r in recs if r.event_id == "ok-1"], "the worker kept going after bad input"
    assert dead_total['streamrec_stream_dead_letters_total{reason="unknown_item"}'] == 1


def test_killed_worker_resumes_without_loss_or_duplicates(stream_settings: Settings, tmp_path: Path) -> None:
    ds = load_dataset("ml-100k", stream_settings.data_dir)
    clicks = ds.events[:4000]
    worker = boot(stream_settings, tmp_path, ds.items)
    reader = RecommendationReader(stream_settings.kafka_bootstrap, stream_settings.topics.recommendations)
    publish_now(stream_settings, clicks)
    seen = read_until(reader, lambda got: len(got) >= 1000)
    worker.kill()  # SIGKILL mid-stream: no flush, no final commit
    assert len({r.event_id for r in seen}) < len(clicks), "the kill must land mid-stream"
    restarted = start_worker(stream_settings, tmp_path / "worker2.log")
    try:
        seen += read_until(reader, lambda got: len({r.event_id for r in seen + got}) >= len(clicks), timeout_s=120)
        # A replay restarted from offset 0 republishes the same event ids: none may append twice.
        publish_now(stream_settings, clicks[:500])
        restarted.wait_until("streamrec_state_duplicate_clicks_total", lambda v: v >= 500, timeout_s=60)
    finally:
        assert restarted.stop() == 0
        reader.close()
    store = RocksSequenceStore(worker_state_dir(stream_settings) / "sequences", max_len=stream_settings.max_seq_len)
    expected: dict[str, list[str]] = {}
    for event in clicks:
        expected.setdefault(event.user_id, []).append(event.item_id)
    try:
        assert store.n_users() == len(expected)
        for user, items in expected.items():
            assert store.sequence(user) == items, f"sequence of user {user} differs after the crash"
    finally:
        store.close()


def test_poison_between_valid_clicks_on_every_partition(stream_settings: Settings, tmp_path: Path) -> None:
    """Every malformed kind that has stopped a worker, on clicks, catalogue and models, between
    valid clicks on every partition: each valid click is answered, each bad message is a dead
    letter with a reason, and the worker is still running."""
    ds = load_dataset("ml-100k", stream_settings.data_dir)
    worker = boot(stream_settings, tmp_path, ds.items[:200])
    topics = stream_settings.topics
    now = now_ms()
    items = [i.item_id for i in ds.items[:200]]
    valid = [
        {"v": 1, "event_id": f"ok-{k}", "user_id": f"user-{k}", "item_id": items[k % 200], "event_time": now}
        for k in range(60)
    ]
    bad: list[tuple[str, bytes, bytes]] = []
    for k, (_, make) in enumerate(malformed.kinds_for("click")):
        bad.append((topics.clicks, f"user-{k}".encode(), make(k, malformed.valid_click(k, items[0], now))))
    for k, (_, make) in enumerate(malformed.kinds_for("catalogue")):
        bad.append((topics.catalogue, b"item", make(k, malformed.valid_catalogue(k, now))))
    for k, (_, make) in enumerate(malformed.kinds_for("models")):
        bad.append((topics.models, b"model", make(k, malformed.valid_announcement(k, now))))
    producer = KafkaProducer(bootstrap_servers=stream_settings.kafka_bootstrap, max_request_size=4 * 1024 * 1024)
    sent_bad = []
    try:
        for k, click in enumerate(valid):
            producer.send(topics.clicks, key=click["user_id"].encode(), value=json.dumps(click).encode())
            for topic, key, value in bad[k * len(bad) // len(valid) : (k + 1) * len(bad) // len(valid)]:
                sent_bad.append(producer.send(topic, key=key, value=value))
        producer.flush()
        where = {(m.topic, m.partition, m.offset) for m in (f.get(timeout=30) for f in sent_bad)}
        producer.close()
        assert {p for t, p, _ in where if t == topics.clicks} == set(range(stream_settings.partitions))
        reader = RecommendationReader(stream_settings.kafka_bootstrap, topics.recommendations)
        recs = read_until(reader, lambda got: {c["event_id"] for c in valid} <= {r.event_id for r in got})
        reader.close()
        letters = read_dead_letters(stream_settings, len(where))
        assert worker.proc.poll() is None, "the worker is still running"
    finally:
        assert worker.stop() == 0, f"worker did not stop cleanly; log {worker.log_path}"
    assert {(d["source_topic"], d["partition"], d["offset"]) for d in letters} >= where
    assert all(d["reason"] in RecordError.REASONS and d["detail"] for d in letters)
    assert {r.event_id for r in recs} >= {c["event_id"] for c in valid}


def read_dead_letters(settings: Settings, at_least: int, timeout_s: float = 60) -> list[dict]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, consumer_timeout_ms=300)
    consumer.assign([TopicPartition(settings.topics.dead_letters, 0)])
    consumer.seek_to_beginning()
    letters: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while len(letters) < at_least and time.monotonic() < deadline:
        letters += [json.loads(m.value) for m in consumer]
    consumer.close()
    return letters
