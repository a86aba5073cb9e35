"""The comparison table of training records (bench/results_table.py --compare): seeds pooled per
model, what stopped each run, and a paired test against the base model over the same users."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from streamrec.bench.paired import load_record
from streamrec.bench.results_table import comparison_table, main, run_load, stopped_by
from streamrec.errors import EXIT_USER_ERROR, UserError
from streamrec.models.ranking_metrics import metrics_from_ranks


def write_record(path: Path, model: str, seed: int, ranks: list[int], keep_ranks: bool = True, **extra: object) -> None:
    m = metrics_from_ranks(torch.tensor(ranks))
    rec = {
        "model": model,
        "seed": seed,
        "dataset_fingerprint": "fp",
        "command": f"streamrec train --preset {model} --seed {seed}",
        "commit": "abc1234",
        "version": f"{model}-s{seed}",
        "machine_load": {"loadavg_1min_mean": 1.8, "loadavg_1min_max": 2.1},
        "best_epoch": 5,
        "epochs_run": 15,
        "train_seconds": 600.0,
        "train_config": {"patience": 10, "max_minutes": 40.0},
        "test": {"excl_history": m, "all": m},
        **extra,
    }
    if keep_ranks:
        rec["test_ranks"] = {"excl_history": ranks, "all": ranks}
    path.write_text(json.dumps(rec))


def test_rows_pool_seeds_and_pair_against_the_base(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    base_ranks = [int(r) for r in rng.integers(1, 30, 2000)]
    better = [max(1, r - 3) for r in base_ranks]
    files = []
    for seed in (0, 1):
        files.append(tmp_path / f"base-s{seed}.json")
        write_record(files[-1], "base", seed, base_ranks, stopped_by="patience")
    files.append(tmp_path / "new-s0.json")
    # An older record: no per-user ranks of its own (they sit beside it) and no stopped_by.
    write_record(files[-1], "new", 0, better, keep_ranks=False, epochs_run=9, train_seconds=3000.0)
    (tmp_path / "new-s0.ranks.json").write_text(
        json.dumps({"version": "new-s0", "test_ranks": {"excl_history": better}})
    )
    table = comparison_table(files, "base")
    rows = [line for line in table.splitlines() if line.startswith("| base") or line.startswith("| new")]
    assert rows[0].startswith("| base | 2 |") and " ± 0.0000" in rows[0], "the base first, its two seeds pooled"
    expected = (
        metrics_from_ranks(torch.tensor(better))["NDCG@10"] / metrics_from_ranks(torch.tensor(base_ranks))["NDCG@10"]
        - 1
    )
    assert f"{expected:+.1%} [" in rows[1], rows[1]
    assert "| budget |" in rows[1], "9 epochs, best 5, 50 minutes of a 40-minute budget: the clock stopped it"
    assert "commit abc1234" in table
    assert rows[1].count("(seeds differ)") == 1 and "the Wilcoxon p can disagree" in table, (
        "one seed against two: the row and a note say the test pairs unequal sides"
    )
    even = comparison_table([files[0], tmp_path / "new-s0.json"], "base")
    assert "(seeds differ)" not in even, "one seed each: nothing to warn about"


def test_records_of_one_model_at_other_settings_get_their_own_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ranks = [int(r) for r in rng.integers(1, 30, 500)]
    files = []
    for dropout, seeds in ((0.2, (0, 1)), (0.5, (0, 1, 2))):
        for seed in seeds:
            files.append(tmp_path / f"m-d{dropout}-s{seed}.json")
            config = {"encoder": {"dropout": dropout}}
            train_config = {"patience": 10, "max_minutes": 40.0, "lr": 0.002, "weight_decay": 0.0}
            write_record(files[-1], "m", seed, ranks, config=config, train_config=train_config)
    table = comparison_table(files, "m dropout=0.5")
    rows = [line for line in table.splitlines() if line.startswith("| m ")]
    assert [r.split(" | ")[:2] for r in rows] == [["| m dropout=0.5", "3"], ["| m dropout=0.2", "2"]], (
        "lr and weight decay agree, so only dropout names the rows; the base first"
    )
    one_setting = comparison_table(files[2:], "m")
    assert "| m | 3 |" in one_setting, "settings shared by all of a model's records do not split or rename its row"
    with pytest.raises(UserError, match="'m' among"):
        comparison_table(files, "m")


def test_what_stopped_a_run_is_inferred_for_older_records() -> None:
    rec = {
        "best_epoch": 14,
        "epochs_run": 24,
        "train_seconds": 600,
        "train_config": {"patience": 10, "max_minutes": 40},
    }
    assert stopped_by(rec) == "patience"
    assert (
        stopped_by(
            {**rec, "epochs_run": 21, "train_seconds": 900, "train_config": {**rec["train_config"], "max_minutes": 14}}
        )
        == "budget"
    )
    assert stopped_by({**rec, "stopped_by": "epochs"}) == "epochs"


def test_the_load_of_a_continued_run_covers_every_piece(tmp_path: Path) -> None:
    busy = {"seconds": 1500.0, "machine_load": {"loadavg_1min_mean": 2.4, "loadavg_1min_max": 4.3}}
    quiet = {"seconds": 100.0, "machine_load": {"loadavg_1min_mean": 1.2, "loadavg_1min_max": 1.8}}
    rec = {"machine_load": quiet["machine_load"], "pieces": [busy, quiet]}
    mean, peak = run_load(rec)
    assert peak == 4.3, "the busy first piece's peak, not the quiet last piece's the record carries on top"
    assert mean == pytest.approx((2.4 * 1500 + 1.2 * 100) / 1600), "weighted by each piece's seconds"
    assert run_load({"machine_load": quiet["machine_load"], "pieces": [quiet]}) == (1.2, 1.8)
    ranks = [1, 2, 3, 40]
    write_record(tmp_path / "m-s0.json", "m", 0, ranks, pieces=[busy, quiet])
    assert "| 2.33/4.30 |" in comparison_table([tmp_path / "m-s0.json"], "m")


def test_ranks_of_another_checkpoint_are_refused(tmp_path: Path) -> None:
    write_record(tmp_path / "m-s0.json", "m", 0, [1, 2], keep_ranks=False)
    (tmp_path / "m-s0.ranks.json").write_text(json.dumps({"version": "other", "test_ranks": {"excl_history": [1, 2]}}))
    with pytest.raises(AssertionError, match="another checkpoint"):
        load_record(tmp_path / "m-s0.json")


def test_the_command_refuses_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_record(tmp_path / "base-s0.json", "base", 0, [1, 2, 30])
    for argv, start in (
        ([str(tmp_path / "nowhere")], "results_table: error: "),
        (["--compare", "base"], "results_table: error: --compare needs"),
        (["--compare", "base", str(tmp_path / "missing.json")], "results_table: error: no such record"),
        (["--coldstart", str(tmp_path / "missing.json")], "results_table: error: no such record"),
    ):
        assert main(argv) == EXIT_USER_ERROR, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith(start) and "\n" not in err, err
    assert main(["--compare", "base", str(tmp_path / "base-s0.json")]) == 0
    assert capsys.readouterr().out.startswith("| model | seeds |")


def test_the_coldstart_table_lists_each_warm_floor_fitted_in_every_seed(tmp_path: Path) -> None:
    from streamrec.bench.results_table import coldstart_table

    def fit(cold: float, warm: float) -> dict:
        return {"cold": {"NDCG@10": cold, "HR@10": 2 * cold}, "warm": {"NDCG@10": warm, "HR@10": 2 * warm}}

    for seed, extra in ((0, {"warm_floor=0.8": fit(0.03, 0.05)}), (1, {})):
        rec = {
            "dataset": "d",
            "model": "m",
            "id_dropout": 0.0,
            "seed": seed,
            "calibration": {"fit": "warm_floor", "warm_floor": 0.97},
            "calibrated": fit(0.01, 0.06),
            "uncalibrated": fit(0.0, 0.06),
            "other_fits": {"pooled": fit(0.0, 0.061), "warm_floor=0.85": fit(0.02 + seed * 0.01, 0.055), **extra},
            "cold_ranked_among_held_out_items_only": {"NDCG@10": 0.1},
            "best_epoch": 3,
            "epochs_run": 9,
        }
        (tmp_path / f"cs-{seed}.json").write_text(json.dumps(rec))
    table = coldstart_table(sorted(tmp_path.glob("cs-*.json")))
    rows = [line for line in table.splitlines() if line.startswith("| d, m,") and "| 2 |" in line]
    floors = [line.split(" | ")[1] for line in rows if line.count("|") == 7]
    assert floors == ["0.97", "0.85"], "floors fitted in every seed, highest first; 0.8 was fitted in one only"
    assert rows[-1].endswith("| 0.4545 ± 0.1286 |"), "cold/warm of the 0.85 fits: 0.02/0.055 and 0.03/0.055"
