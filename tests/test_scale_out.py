"""Two workers in one consumer group share the click partitions; when one stops, its users move to
the other with no sequence lost. Both read the whole catalogue. Real broker, real processes."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from streamrec.datasets import load_dataset
from streamrec.local.broker import free_ports
from streamrec.local.processes import start_worker
from streamrec.settings import Settings
from streamrec.state.sequence_store import RocksSequenceStore
from streamrec.stream.rec_consumer import RecommendationReader
from streamrec.stream.worker import worker_state_dir
from tests.helpers import boot, publish_now, read_until

pytestmark = pytest.mark.integration


def publish(settings: Settings, events: list) -> None:
    publish_now(settings, events)


def test_stopping_one_of_two_workers_moves_its_users_without_losing_clicks(
    stream_settings: Settings, tmp_path: Path
) -> None:
    ds = load_dataset("ml-100k", stream_settings.data_dir)
    events = ds.events[:3000]
    phase1, phase2, phase3 = events[:1000], events[1000:2000], events[2000:]
    a_settings = replace(stream_settings, worker_id="worker-a", state_dir=tmp_path / "a")
    answered: set[str] = set()

    def collect(batch: list) -> None:
        want = {e.event_id for e in batch}
        got = read_until(reader, lambda got: want <= answered | {r.event_id for r in got}, timeout_s=120)
        answered.update(r.event_id for r in got)

    worker_a = boot(a_settings, tmp_path, ds.items, name="a")
    reader = RecommendationReader(stream_settings.kafka_bootstrap, stream_settings.topics.recommendations)
    worker_b = None
    try:
        publish(stream_settings, phase1)
        collect(phase1)
        # B's ports are picked just before it starts: picked minutes earlier, one was once taken
        # meanwhile as the local end of a client connection (same ephemeral range) and B exited.
        ports = free_ports(2)
        b_settings = replace(
            stream_settings,
            worker_id="worker-b",
            state_dir=tmp_path / "b",
            metrics_port=ports[0],
            dashboard_port=ports[1],
        )
        worker_b = start_worker(b_settings, tmp_path / "b.log")
        # B holds the whole catalogue although catalogue partitions are not shared out.
        worker_b.wait_until("streamrec_index_size_items", lambda v: v >= len(ds.items), timeout_s=90)
        # Wait for the group to give B a share of the click partitions.
        deadline = time.monotonic() + 90
        while not any(k.startswith("streamrec_stream_consumer_lag_messages{") for k in worker_b.metrics()):
            assert time.monotonic() < deadline, "the group never assigned partitions to the second worker"
            time.sleep(0.5)
        publish(stream_settings, phase2)
        collect(phase2)
        b_answered = worker_b.metric("streamrec_stream_recommendations_total")
        assert b_answered > 0, "the second worker took no partitions"
        assert worker_b.stop() == 0
        worker_b = None
        publish(stream_settings, phase3)
        collect(phase3)
        caught_up = worker_a.metric("streamrec_state_caught_up_clicks_total")
    finally:
        reader.close()
        if worker_b is not None:
            worker_b.stop()
        assert worker_a.stop() == 0, f"worker A did not stop cleanly; log {worker_a.log_path}"
    assert {e.event_id for e in events} <= answered, "every click got a recommendation"
    assert caught_up > 0, "A never read back the clicks B answered"
    # A owns every partition at the end: its state must hold every user's full sequence in order,
    # including the clicks B answered while it owned some partitions.
    expected: dict[str, list[str]] = {}
    for e in events:
        expected.setdefault(e.user_id, []).append(e.event_id)
    store = RocksSequenceStore(worker_state_dir(a_settings) / "sequences", max_len=a_settings.max_seq_len)
    try:
        for user, event_ids in expected.items():
            assert [r.event_id for r in store.records(user)] == event_ids, f"sequence of user {user} differs"
    finally:
        store.close()
