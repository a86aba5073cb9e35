"""`streamrec bench attention` end to end on tiny lengths: every (allocator, length, kind) row is
measured in its own child process under the allocator settings it names, and the step table is
consistent. Timings are not asserted (benchmarks hold the targets, not tests)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from streamrec.bench.attention import ALLOCATORS, KINDS, measure_served_step, run


def test_bench_attention_writes_rows_for_every_allocator_and_kind(tmp_path: Path) -> None:
    out = tmp_path / "attention.json"
    # 100 is mid-block for the bench's block of 32: the step starts from a cached selection.
    args = argparse.Namespace(
        lengths="64,100",
        repeats=1,
        step_max=100,
        allocator="both",
        out=str(out),
        served_lengths="40",
        served_users=2,
        served_only=False,
    )
    assert run(args) == 0
    payload = json.loads(out.read_text())
    rows = payload["attention"]
    keys = {(r["allocator"], r["T"], r["kind"]) for r in rows}
    assert keys == {(a, t, k) for a in ALLOCATORS for t in (64, 100) for k in KINDS}
    for r in rows:
        assert r["forward_s"] > 0 and r["forward_backward_s"] >= 0
        # The child saw exactly its allocator's settings (none leak from the parent for "default").
        assert r["malloc_env"] == ALLOCATORS[r["allocator"]], r
    steps = payload["incremental_step"]
    assert [s["T"] for s in steps] == [64, 100]
    for s in steps:
        assert abs(s["speedup"] - s["full_recompute_s"] / s["step_s"]) < 1e-9
    assert out.with_suffix(".png").stat().st_size > 0


def test_the_served_step_measurement_runs_both_encoders_past_a_block_boundary() -> None:
    row = measure_served_step(t=40, users=3, repeats=9)  # positions 40..48 cross the block at 48
    assert row["T"] == 40 and row["users"] == 3
    for kind in ("sparse", "dense"):
        assert 0 < row[f"{kind}_batch_ms"] < 10_000
        assert row[f"{kind}_per_click_us"] * 3 / 1000 == pytest.approx(row[f"{kind}_batch_ms"])
    assert row["sparse_over_dense"] == pytest.approx(row["sparse_batch_ms"] / row["dense_batch_ms"])
