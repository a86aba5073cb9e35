"""`streamrec train --resume`: a run cut by its caps goes on from the training state it saved
beside its checkpoint (models/trainer.py), its record listing each piece; a state saved under
other settings is refused in one line. The loop's exactness (continued = never stopped) is
tests/test_models.py's; this checks the command a user types, on a generated dataset.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.test_cli_errors import assert_one_line
from tests.test_own_data import write_recbole


def _train(data: Path, results: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    args = ["train", "--dataset", str(data), "--preset", "sasrec-content", "--text", "hashed", "--threads", "1"]
    args += ["--quiet", "--results-dir", str(results), *extra]
    return subprocess.run([sys.executable, "-m", "streamrec.cli", *args], env=env, capture_output=True, text=True)


def test_a_run_cut_by_its_epoch_cap_is_continued_by_resume(tmp_path: Path) -> None:
    data = write_recbole(tmp_path / "mine")
    env = {**os.environ, "STREAMREC_STATE_DIR": str(tmp_path / "state")}
    results = tmp_path / "results"

    first = _train(data, results, env, "--epochs", "1")
    assert first.returncode == 0, first.stderr[-2000:]
    (record_path,) = results.glob("shop-*/sasrec-content-s0.json")
    (state,) = (tmp_path / "state" / "models").glob("shop-*/sasrec-content-s0.train-state.pt")
    cut = json.loads(record_path.read_text())
    assert (cut["epochs_run"], cut["stopped_by"], len(cut["pieces"])) == (1, "epochs", 1)

    again = _train(data, results, env, "--epochs", "3", "--resume")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "continuing sasrec-content-s0.train-state.pt after epoch 1" in again.stdout
    record = json.loads(record_path.read_text())
    assert record["epochs_run"] == 3 and [h["epoch"] for h in record["history"]] == [1, 2, 3]
    assert record["history"][0] == cut["history"][0], "the first piece's epoch is kept, not retrained"
    pieces = [(p["first_epoch"], p["last_epoch"]) for p in record["pieces"]]
    assert pieces == [(1, 1), (2, 3)]
    assert [p["command"].endswith("--resume") for p in record["pieces"]] == [False, True]
    assert all({"commit", "machine_load", "seconds"} <= set(p) for p in record["pieces"])
    assert record["train_seconds"] >= sum(p["seconds"] for p in record["pieces"]) - 1.0

    refused = _train(data, results, env, "--epochs", "3", "--resume", "--lr", "0.5")
    line = assert_one_line(refused, str(state), "lr 0.002 -> 0.5", "--resume")
    assert "other settings" in line
