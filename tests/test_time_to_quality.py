"""The time-to-quality plot reads training records' per-epoch history."""

from __future__ import annotations

import json
from pathlib import Path

from streamrec.bench.time_to_quality import curve, first_reaching, main


def test_first_reaching_is_the_first_epoch_at_or_above_the_target() -> None:
    points = [(1.0, 0.01), (2.0, 0.03), (3.0, 0.02), (4.0, 0.04)]
    assert first_reaching(points, 0.03) == 2.0
    assert first_reaching(points, 0.035) == 4.0
    assert first_reaching(points, 0.05) is None


def test_records_become_curves_and_a_png(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    record = {
        "model": "sasrec",
        "seed": 0,
        "history": [
            {"epoch": 1, "minutes": 1.5, "valid_ndcg10_excl": 0.01},
            {"epoch": 2, "minutes": 3.0, "valid_ndcg10_excl": 0.03},
        ],
        "machine_load": {"loadavg_1min_mean": 1.2, "busy": False},
    }
    path = tmp_path / "amazon-beauty" / "sasrec-s0.json"
    path.parent.mkdir()
    path.write_text(json.dumps(record))
    assert curve(record) == [(1.5, 0.01), (3.0, 0.03)]
    out = tmp_path / "ttq.png"
    assert main([str(path), "--out", str(out), "--target", "0.02"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "a PNG is written"
    printed = capsys.readouterr().out
    assert "3.0 min" in printed and "load 1.2" in printed, printed
