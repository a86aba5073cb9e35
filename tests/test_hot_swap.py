"""Hot swap and rollback on a live worker: real broker, RocksDB, FAISS, model store, checkpoints.

Clicks keep arriving while a new version is announced and then rolled back. No click may go
unanswered, and every recommendation emitted after a switch carries the version switched to.
"""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from streamrec.datasets import load_dataset
from streamrec.settings import Settings
from streamrec.state.model_store import ModelStore
from streamrec.stream.rec_consumer import RecommendationReader
from streamrec.stream.replay import make_producer, publish_clicks
from streamrec.training.online_trainer import import_checkpoint
from streamrec.training.trainer_process import announce, model_command
from tests.helpers import boot, read_until, small_checkpoint

pytestmark = pytest.mark.integration


def test_swap_and_rollback_under_load_lose_no_click_and_switch_every_later_recommendation(
    stream_settings: Settings, tmp_path: Path
) -> None:
    settings = replace(stream_settings, model_store=tmp_path / "store", partitions=2)
    store = ModelStore(settings.model_store_dir)
    import_checkpoint(store, small_checkpoint(tmp_path / "v1.pt", "swap-v1", seed=1))
    v2_file = small_checkpoint(tmp_path / "v2.pt", "swap-v2", seed=2)
    ds = load_dataset("ml-100k", settings.data_dir)
    clicks = ds.events[:3000]
    worker = boot(settings, tmp_path, ds.items)
    try:
        assert worker.metric('streamrec_model_version_info{version="swap-v1"}') == 1
        reader = RecommendationReader(settings.kafka_bootstrap, settings.topics.recommendations)
        producer = make_producer(settings.kafka_bootstrap)
        feeder = threading.Thread(target=publish_clicks, args=(producer, settings.topics, clicks, 200.0, False))
        feeder.start()
        read_until(
            reader_probe := RecommendationReader(settings.kafka_bootstrap, settings.topics.recommendations),
            lambda got: len(got) >= 200,
        )
        reader_probe.close()
        # A malformed announcement first: it must be dead-lettered and change nothing.
        bad = make_producer(settings.kafka_bootstrap)
        bad.send(settings.topics.models, key=b"model", value=b"not an announcement")
        bad.flush()
        bad.close()
        # Promote v2 the way the trainer does: into the store, then announced on the models topic.
        stored = import_checkpoint(store, v2_file, promote=True)
        announce(settings, stored, "promote")
        worker.wait_until('streamrec_model_version_info{version="swap-v2"}', lambda v: v == 1, timeout_s=60)
        swapped_at = worker.metric("streamrec_model_loaded_timestamp_seconds")
        # Roll back with the operator's command while clicks keep coming.
        assert model_command(settings, "rollback") == 0
        worker.wait_until('streamrec_model_version_info{version="swap-v1"}', lambda v: v == 1, timeout_s=60)
        rolled_back_at = worker.metric("streamrec_model_loaded_timestamp_seconds")
        feeder.join()
        producer.close()
        recs = read_until(reader, lambda got: len({r.event_id for r in got}) >= len(clicks), timeout_s=120)
        reader.close()
        swaps = worker.metric("streamrec_model_swap_seconds_count")
        dead_reader = RecommendationReader(settings.kafka_bootstrap, settings.topics.dead_letters)
        dead = [json.loads(raw) for raw in dead_reader.read_raw(2000)]
        dead_reader.close()
    finally:
        assert worker.stop() == 0, f"worker did not stop cleanly; log {worker.log_path}"
    assert store.current().version == "swap-v1" and store.history() == ["swap-v1"]
    assert swaps == 2
    assert [(d["source_topic"], d["reason"]) for d in dead] == [(settings.topics.models, "undecodable")]
    assert {r.event_id for r in recs} == {e.event_id for e in clicks}, "every click answered"
    assert swapped_at < rolled_back_at
    by_time = sorted(recs, key=lambda r: r.emitted_at)
    during = [r for r in by_time if swapped_at * 1000 < r.emitted_at < rolled_back_at * 1000]
    after = [r for r in by_time if r.emitted_at > rolled_back_at * 1000]
    before = [r for r in by_time if r.emitted_at < swapped_at * 1000 - 1]
    assert during and after and before, "clicks were answered before, between and after the switches"
    assert {r.model_version for r in during} == {"swap-v2"}
    assert {r.model_version for r in after} == {"swap-v1"}
    assert {r.model_version for r in before} == {"swap-v1"}
    # Per user (one partition each) the versions change at most twice: v1 ... v2 ... v1.
    for user in {r.user_id for r in recs}:
        seq = [r.model_version for r in by_time if r.user_id == user]
        changes = sum(a != b for a, b in zip(seq, seq[1:], strict=False))
        assert changes <= 2, (user, seq)
