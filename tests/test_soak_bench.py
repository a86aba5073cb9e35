"""The soak benchmark's per-minute summary, and a short ceiling run on a real broker (the figures
of a soak are a benchmark's, not asserted here)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from streamrec.bench.soak import Answer, Sample, per_minute, repeats, run_soak_bench
from streamrec.settings import Settings


def test_per_minute_groups_by_arrival_minute_and_takes_that_minutes_last_memory_sample() -> None:
    start = 1_000.0
    # minute 1 has answers 10 ms and 30 ms late, minute 3 one 500 ms late
    got = [
        Answer(1_000_000 + 5_000 - 10, start + 5.0, "a", 0, 0),
        Answer(1_000_000 + 50_000 - 30, start + 50.0, "b", 0, 1),
        Answer(1_000_000 + 130_000 - 500, start + 130.0, "c", 0, 2),
    ]
    # CPU seconds so far: worker +4 s and broker +2 s between 10 s and 50 s, then +15 s / +30 s by 125 s.
    samples = [
        Sample(10.0, 300.0, 50.0, 1.0, 1.0, 0.5),
        Sample(50.0, 310.0, 60.0, 5.0, 3.0, 0.5),
        Sample(125.0, 320.0, 70.0, 20.0, 33.0, 8.0),
    ]
    rows = per_minute(got, start, samples)
    assert [r["minute"] for r in rows] == [1, 3], "a minute without answers has no row"
    assert [r["answers"] for r in rows] == [2, 1]
    assert rows[0]["freshness_p99_ms"] == pytest.approx(30, abs=0.5)
    assert rows[0]["freshness_p50_ms"] in (
        pytest.approx(10, abs=0.5),
        pytest.approx(20, abs=0.5),
        pytest.approx(30, abs=0.5),
    )
    assert rows[1]["freshness_p50_ms"] == pytest.approx(500, abs=0.5)
    assert (rows[0]["worker_rss_mb"], rows[0]["broker_rss_mb"]) == (310.0, 60.0)
    assert (rows[1]["worker_rss_mb"], rows[1]["broker_rss_mb"]) == (320.0, 70.0)
    # CPU over a minute: from the last sample before it (or its first) to its last, as % of a core.
    assert (rows[0]["worker_cpu_percent"], rows[0]["broker_cpu_percent"], rows[0]["bench_cpu_percent"]) == (10, 5, 0)
    assert (rows[1]["worker_cpu_percent"], rows[1]["broker_cpu_percent"], rows[1]["bench_cpu_percent"]) == (20, 40, 10)


def test_a_minute_with_one_sample_and_none_before_has_no_cpu_figure() -> None:
    rows = per_minute([Answer(1_000, 1.0 + 5.0, "a", 0, 0)], 1.0, [Sample(20.0, 1.0, 1.0, 3.0, 3.0, 3.0)])
    assert rows[0]["worker_cpu_percent"] is None and rows[0]["worker_rss_mb"] == 1.0


def test_repeats_drops_records_read_twice_and_counts_clicks_answered_twice() -> None:
    got = [
        Answer(1, 10.0, "a", 0, 0),
        Answer(2, 10.0, "b", 1, 0),
        Answer(1, 50.0, "a", 0, 0),  # the reader fetched offset 0 of partition 0 again
        Answer(1, 60.0, "a", 0, 7),  # the worker answered click a again, later in the log
        Answer(2, 70.0, "b", 0, 0),  # partition 0 offset 0 again: a re-read, not a third "a"
    ]
    seen = repeats(got)
    assert (seen.reread, seen.reanswered) == (2, 1)
    assert [(a.event_id, a.partition, a.offset) for a in seen.answers] == [("a", 0, 0), ("b", 1, 0), ("a", 0, 7)]


def test_a_minutes_profile_is_the_worker_metrics_delta_over_that_minute() -> None:
    from streamrec.bench.soak import minute_profile

    def at(batches: float, clicks: float, encode_s: float, compute_cpu_s: float, lag_fast: float) -> dict[str, float]:
        lag = "streamrec_worker_event_loop_lag_seconds_bucket"
        return {
            "streamrec_stream_batch_size_events_count": batches,
            "streamrec_stream_batch_size_events_sum": clicks,
            'streamrec_stream_stage_latency_seconds_sum{stage="encode"}': encode_s,
            'streamrec_worker_thread_cpu_seconds_total{thread="compute"}': compute_cpu_s,
            f'{lag}{{le="0.01"}}': lag_fast,
            f'{lag}{{le="+Inf"}}': batches,  # one lag observation per batch here, for simplicity
        }

    # Samples at 50 s (before minute 2), 70 s and 110 s (inside it), 130 s (after it).
    profile = [
        (50.0, at(10, 200, 1.0, 2.0, 10)),
        (70.0, at(30, 700, 3.0, 4.0, 30)),
        (110.0, at(60, 1400, 9.0, 16.0, 60)),
        (130.0, at(99, 9999, 99.0, 99.0, 99)),
    ]
    row = minute_profile(profile, 1)
    assert row["mean_batch"] == (1400 - 200) / (60 - 10)
    assert row["stage_seconds_per_s"] == {"encode": round(8.0 / 60, 3)}, "seconds of encode per second of the minute"
    assert row["thread_cores"] == {"compute": round(14.0 / 60, 3)}
    assert row["loop_lag_p99_ms"] <= 10.0, "every lag observation of the minute was under 10 ms"
    assert minute_profile(profile, 5) == {}, "no sample in that minute"


def test_a_ceiling_soak_runs_the_raw_loop_in_the_workers_place_and_counts_only_the_run(
    stream_settings: Settings, tmp_path: Path
) -> None:
    """`bench soak --ceiling raw` on its own real broker: every click offered in the run is
    answered once by the raw loop, the warm-up clicks are not counted, and the record names it."""
    args = argparse.Namespace(
        dataset="ml-100k",
        checkpoint="",
        rate=300.0,
        minutes=0.25,
        drain_s=30.0,
        retention_minutes=5.0,
        ceiling="raw",
        out=str(tmp_path / "soak.json"),
    )
    assert run_soak_bench(stream_settings, args) == 0
    record = json.loads((tmp_path / "soak.json").read_text())
    assert record["model"] == "ceiling: aiokafka-raw-loop" and record["ceiling"] == "raw"
    assert record["offered"] > 0 and record["answered"] == record["offered"], "every offered click answered"
    assert record["answered_again"] == 0
    assert sum(r["answers"] for r in record["per_minute"]) == record["offered"], "warm-up answers are not counted"
    assert record["worker_log_checks"] == {}, "a ceiling has no metrics"
    assert all(0 <= r["freshness_p50_ms"] <= r["freshness_p99_ms"] for r in record["per_minute"])
