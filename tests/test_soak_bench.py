"""The soak benchmark's per-minute summary (the run itself is a benchmark, not a test)."""

from __future__ import annotations

import pytest

from streamrec.bench.soak import per_minute


def test_per_minute_groups_by_arrival_minute_and_takes_that_minutes_last_memory_sample() -> None:
    start = 1_000.0
    # (event time ms, arrival s): minute 1 has answers 10 ms and 30 ms late, minute 3 one 500 ms late
    got = [
        (1_000_000 + 5_000 - 10, start + 5.0),
        (1_000_000 + 50_000 - 30, start + 50.0),
        (1_000_000 + 130_000 - 500, start + 130.0),
    ]
    samples = [(10.0, 300.0, 50.0), (50.0, 310.0, 60.0), (125.0, 320.0, 70.0)]
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
