"""Paired per-user comparison of two models (bench/paired.py): the figures it averages are the
training records' own, its signed-rank test agrees with SciPy's, and it refuses unpaired records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.bench.paired import _average_ranks, bootstrap_relative, compare, main, per_user, wilcoxon
from streamrec.errors import EXIT_USER_ERROR, UserError
from streamrec.models.ranking_metrics import metrics_from_ranks


def record(ranks: list[int], fingerprint: str = "fp", model: str = "m") -> dict:
    return {"model": model, "seed": 0, "dataset_fingerprint": fingerprint, "test_ranks": {"excl_history": ranks}}


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 5000), min_size=1, max_size=200))
def test_per_user_figures_average_to_the_records_metrics(ranks: list[int]) -> None:
    expected = metrics_from_ranks(torch.tensor(ranks))
    for metric in ("HR@10", "NDCG@10", "NDCG@20", "MRR"):
        assert per_user(np.array(ranks), metric).mean() == pytest.approx(expected[metric], rel=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=60))
def test_average_ranks_share_ties(values: list[int]) -> None:
    x = np.array(values, dtype=float)
    ranks, groups = _average_ranks(x)
    assert ranks.sum() == pytest.approx(len(x) * (len(x) + 1) / 2)
    for v in set(values):
        assert len(set(ranks[x == v])) == 1, "tied values must share one rank"
    assert groups.sum() == len(x)


def test_signed_rank_test_agrees_with_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    a = rng.integers(0, 5, 400) / 4.0  # coarse values: many ties and zero differences, as NDCG has
    b = np.clip(a + rng.integers(-1, 3, 400) / 4.0, 0, 1)
    z, p = wilcoxon(a, b)
    ref = stats.wilcoxon(b - a, zero_method="wilcox", correction=False, method="approx")
    assert p == pytest.approx(ref.pvalue, rel=1e-9)
    assert z > 0, "b is mostly above a"


def test_identical_models_show_no_change() -> None:
    ranks = list(np.random.default_rng(0).integers(1, 100, 500))
    c = compare([record(ranks)], [record(ranks)])
    assert c.change == 0.0 and c.p_value == 1.0 and c.change_lo == c.change_hi == 0.0


def test_a_clearly_better_model_is_found_better_and_seeds_are_averaged_per_user() -> None:
    rng = np.random.default_rng(1)
    base = [int(r) for r in rng.integers(1, 40, 3000)]
    better = [max(1, r - int(rng.integers(0, 6))) for r in base]
    c = compare([record(base)], [record(better), record(better)])
    assert c.change > 0 and c.change_lo > 0 and c.p_value < 1e-6
    assert c.other_mean == pytest.approx(per_user(np.array(better)).mean())
    worse = compare([record(better)], [record(base)])
    assert worse.change < 0 and worse.change_hi < 0
    assert c.uneven and c.cell().endswith("(seeds differ)"), "one seed against two is marked"
    assert not worse.uneven and "seeds differ" not in worse.cell(), "one seed each is not"


def test_the_bootstrap_interval_holds_the_observed_change() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.random(1000), rng.random(1000)
    change, lo, hi = bootstrap_relative(a, b, rounds=500)
    assert lo <= change <= hi


def test_records_of_different_splits_are_refused() -> None:
    with pytest.raises(UserError, match="different datasets"):
        compare([record([1, 2])], [record([1, 2], fingerprint="other")])
    with pytest.raises(UserError, match="not the same split"):
        compare([record([1, 2])], [record([1, 2, 3])])
    with pytest.raises(UserError, match="streamrec eval --checkpoint"):
        compare([{"dataset_fingerprint": "fp"}], [record([1])])


def test_the_command_refuses_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "a.json"
    good.write_text(json.dumps(record([1, 2, 30])))
    assert main(["--base", str(good), "--other", str(tmp_path / "missing.json")]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("paired: error: cannot read a record") and "\n" not in err
    assert main(["--base", str(good), "--other", str(good)]) == 0
    assert "+0.0%" in capsys.readouterr().out
