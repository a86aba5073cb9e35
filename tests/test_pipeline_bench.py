"""The pipeline benchmark's freshness floor: a ceiling offered clicks at a fixed rate, on the real
broker (the benchmark's figures themselves are not asserted: they belong to `streamrec bench`)."""

from __future__ import annotations

import json
from pathlib import Path

from streamrec.bench.pipeline import WARM_UP_CLICKS, Drain, passthrough_run, thread_cores
from streamrec.datasets import load_dataset
from streamrec.settings import Settings


def test_the_raw_loop_floor_answers_every_offered_click_and_measures_only_those(
    stream_settings: Settings, tmp_path: Path
) -> None:
    dataset = load_dataset("ml-100k", stream_settings.data_dir)
    clicks = 150
    result = passthrough_run(stream_settings, dataset, clicks, tmp_path, kind="raw", rate=300.0)
    assert result.name == "aiokafka-raw-loop-fixed"
    # The warm-up clicks were answered too, but are not among the measured ones.
    assert (result.clicks, result.received) == (clicks, clicks)
    assert result.settings is not None and result.settings["offered_rate"] == 300.0
    p50, p95, p99 = result.freshness_p50_ms, result.freshness_p95_ms, result.freshness_p99_ms
    assert p50 is not None and p95 is not None and p99 is not None
    assert 0 <= p50 <= p95 <= p99, "freshness percentiles are ordered and not negative"
    assert result.cpu_cores is not None and set(result.cpu_cores) == {"raw", "bench_harness"}

    # The topic holds the warm-up's answers and then the offered clicks', each once.
    drain = Drain(stream_settings.kafka_bootstrap, "aiokafka-raw-loop-fixed-recommendations", clicks + 1, 3.0)
    drain.start()
    answered = [json.loads(raw) for raw, _ in drain.result()]
    assert len(answered) == WARM_UP_CLICKS + clicks, "each click (warm-up and measured) answered once"
    ids = [r["event_id"] for r in answered]
    assert len(set(ids)) == len(ids)
    assert set(ids) == {e.event_id for e in dataset.events[: clicks + WARM_UP_CLICKS]}


def test_thread_cores_are_each_threads_cpu_seconds_over_the_run_per_wall_second() -> None:
    delta = {
        'streamrec_worker_thread_cpu_seconds_total{thread="MainThread"}': 6.0,
        'streamrec_worker_thread_cpu_seconds_total{thread="streamrec-compute_0"}': 3.0,
        'streamrec_worker_thread_cpu_seconds_total{thread="idle"}': 0.0,
        'streamrec_stream_events_in_total{topic="clicks"}': 10_000.0,
    }
    assert thread_cores(delta, 10.0) == {"MainThread": 0.6, "streamrec-compute_0": 0.3}
