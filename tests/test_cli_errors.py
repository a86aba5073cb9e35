"""Every known user mistake ends in one line on stderr naming the setting or command that fixes
it, with exit status 2 and no traceback (streamrec/errors.py, the handler in streamrec/cli.py).

Each case runs the real `streamrec` command in a child process, as a user would.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamrec.local.broker import free_port
from streamrec.local.processes import settings_env
from streamrec.settings import Settings


def run_cli(args: list[str], env: dict[str, str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamrec.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line(proc: subprocess.CompletedProcess[str], *names: str) -> str:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {proc.stderr!r}"
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    for name in names:
        assert name in lines[0], f"{name!r} not named in {lines[0]!r}"
    return lines[0]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A fresh state directory and a broker address where nothing listens."""
    e = dict(os.environ)
    e.update(
        STREAMREC_STATE_DIR=str(tmp_path / "state"),
        KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}",
        STREAMREC_METRICS_PORT="0",
        STREAMREC_DASHBOARD_PORT="0",
    )
    return e


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KAFKA_BOOTSTRAP", "127.0.0.1"),
        ("KAFKA_BOOTSTRAP", "127.0.0.1:port"),
        ("STREAMREC_TOP_K", "ten"),
        ("STREAMREC_TOP_K", "0"),
        ("STREAMREC_BATCH_WAIT_MS", "fast"),
        ("STREAMREC_EXPLAIN", "maybe"),
        ("STREAMREC_METRICS_PORT", "70000"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(env: dict[str, str], variable: str, value: str) -> None:
    env[variable] = value
    assert_one_line(run_cli(["topics"], env), variable)


@pytest.mark.parametrize(
    "args",
    [["topics"], ["worker"], ["trainer"], ["replay", "--dataset", "ml-100k", "--limit", "1"]],
)
def test_broker_down_fails_fast_and_names_broker_up(env: dict[str, str], args: list[str]) -> None:
    started = time.monotonic()
    proc = run_cli(args, env)
    assert_one_line(proc, "streamrec broker up", "KAFKA_BOOTSTRAP")
    # Functional bound, not a speed target: a Kafka client would retry for 30 s and more.
    assert time.monotonic() - started < 25


def test_unknown_dataset_is_reported_before_the_broker_is_asked(env: dict[str, str]) -> None:
    line = assert_one_line(run_cli(["replay", "--dataset", "no-such-set"], env), "no-such-set", "CSV")
    assert "broker" not in line


def test_missing_dataset_names_the_data_dir_setting(env: dict[str, str], tmp_path: Path) -> None:
    env["STREAMREC_DATA_DIR"] = str(tmp_path / "empty")
    assert_one_line(run_cli(["replay", "--dataset", "ml-100k"], env), "STREAMREC_DATA_DIR", "streamrec data fetch")


def test_missing_files(env: dict[str, str], tmp_path: Path) -> None:
    assert_one_line(run_cli(["model", "import", str(tmp_path / "none.pt")], env), "none.pt", "streamrec train")
    assert_one_line(run_cli(["model", "import"], env), "streamrec model import PATH")
    assert_one_line(run_cli(["eval", "--checkpoint", str(tmp_path / "none.pt")], env), "none.pt")
    assert_one_line(run_cli(["train", "--dataset", str(tmp_path / "mine.csv")], env), "mine.csv", "--dataset")


def test_corrupt_checkpoint_is_named_without_torch_advice(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    line = assert_one_line(run_cli(["eval", "--checkpoint", str(bad)], env), "bad.pt", "streamrec train")
    assert "weights_only" not in line
    text = tmp_path / "text.pt"
    text.write_text("hello")
    assert_one_line(run_cli(["model", "import", str(text)], env), "text.pt", "not a streamrec checkpoint")


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from streamrec.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cli_model_choices_are_the_presets() -> None:
    from streamrec.cli import MODEL_PRESETS
    from streamrec.models.presets import preset_names

    assert list(MODEL_PRESETS) == preset_names()


def test_cli_epoch_cap_is_the_trainers() -> None:
    from streamrec.cli import build_parser
    from streamrec.models.trainer import TrainConfig

    args = build_parser().parse_args(["train"])
    assert args.epochs == TrainConfig().epochs


def _worker_env(stream_settings: Settings, **overrides: str) -> dict[str, str]:
    env = settings_env(stream_settings)
    env.update(overrides)
    return env


@pytest.mark.parametrize("prefork", ["0", "1"])
def test_worker_with_a_missing_or_corrupt_model_is_one_line(
    stream_settings: Settings, tmp_path: Path, prefork: str
) -> None:
    env = _worker_env(stream_settings, STREAMREC_WORKER_PREFORK=prefork, STREAMREC_MODEL=str(tmp_path / "gone.pt"))
    assert_one_line(run_cli(["worker"], env), "STREAMREC_MODEL", "streamrec train")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(os.urandom(256))
    env["STREAMREC_MODEL"] = str(bad)
    assert_one_line(run_cli(["worker"], env), "bad.pt", "STREAMREC_MODEL")


@pytest.mark.parametrize(
    ("setting", "zero"),
    [("STREAMREC_METRICS_PORT", "0 to pick one"), ("STREAMREC_DASHBOARD_PORT", "0 to turn the page off")],
)
def test_busy_port_names_port_and_setting(stream_settings: Settings, setting: str, zero: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = _worker_env(stream_settings, **{setting: str(port)})
        assert_one_line(run_cli(["worker"], env), setting, str(port), zero)


def test_rollback_with_nothing_to_roll_back_to(stream_settings: Settings) -> None:
    assert_one_line(run_cli(["model", "rollback"], settings_env(stream_settings)), "streamrec model list")


def test_tune_grid_is_every_combination_typed_like_its_flag() -> None:
    from streamrec.cli import build_parser
    from streamrec.training_cli import parse_grid

    args = build_parser().parse_args(["tune", "--dataset", "ml-100k"])
    combos = parse_grid(["lr=0.001,0.002", "patience=5,10", "dropout=0.2"], args)
    assert combos == [
        {"lr": 0.001, "patience": 5, "dropout": 0.2},
        {"lr": 0.001, "patience": 10, "dropout": 0.2},
        {"lr": 0.002, "patience": 5, "dropout": 0.2},
        {"lr": 0.002, "patience": 10, "dropout": 0.2},
    ]
    assert all(isinstance(c["patience"], int) for c in combos)


def _point_record(out: Path, command: str, valid: float, stopped_by: str = "patience", seed: int = 0) -> None:
    figures = {"excl_history": {"NDCG@10": valid}}
    record = {"dataset": "ml-100k", "seed": seed, "command": command, "valid": figures, "test": figures}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**record, "best_epoch": 3, "stopped_by": stopped_by, "train_seconds": 1.0}))


def test_tune_resume_reads_points_trained_apart_and_refuses_ones_trained_otherwise(tmp_path: Path) -> None:
    from streamrec.cli import build_parser
    from streamrec.errors import UserError
    from streamrec.training_cli import differing_settings, run_tune

    base = f"tune --dataset ml-100k --preset sasrec --seed 0 --results-dir {tmp_path}"
    args = build_parser().parse_args([*base.split(), "--threads", "2", "--resume", "--grid", "lr=0.001,0.002"])
    # Each point trained by its own one-point grid, as parallel lanes would.
    for lr, valid in ((0.001, 0.11), (0.002, 0.12)):
        command = f"streamrec {base} --threads 1 --grid lr={lr}"
        rec = tmp_path / "tune" / f"lr{lr}" / "ml-100k" / "sasrec-s0.json"
        _point_record(rec, command, valid)
        assert differing_settings(json.loads(rec.read_text()), args, {"lr": lr}) == []
    before = {p: p.read_text() for p in (tmp_path / "tune").rglob("sasrec-s0.json")}
    assert run_tune(args, Settings.from_env()) == 0
    grid = json.loads((tmp_path / "tune" / "ml-100k-sasrec-s0-grid.json").read_text())
    assert grid["choice"] == {"lr": 0.002}
    assert [p["valid_ndcg10_mean"] for p in grid["points"]] == [0.11, 0.12]
    assert {p: p.read_text() for p in before} == before, "no point was trained again"
    # Another grid over the same points, its record where --out says.
    out = str(tmp_path / "lr.json")
    one = build_parser().parse_args([*base.split(), "--resume", "--out", out, "--grid", "lr=0.001"])
    assert run_tune(one, Settings.from_env()) == 0
    assert json.loads((tmp_path / "lr.json").read_text())["choice"] == {"lr": 0.001}
    assert json.loads((tmp_path / "tune" / "ml-100k-sasrec-s0-grid.json").read_text())["choice"] == {"lr": 0.002}

    # A point trained with another patience cannot stand for this grid's point.
    other = tmp_path / "tune" / "lr0.001" / "ml-100k" / "sasrec-s0.json"
    _point_record(other, f"streamrec {base} --patience 30 --grid lr=0.001", 0.2)
    assert differing_settings(json.loads(other.read_text()), args, {"lr": 0.001}) == ["patience"]
    with pytest.raises(UserError, match=r"other settings \(patience\).*--results-dir"):
        run_tune(args, Settings.from_env())
    _point_record(other, "", 0.2)
    assert differing_settings(json.loads(other.read_text()), args, {"lr": 0.001}) == ["command (missing or unreadable)"]


def test_tune_resume_reads_a_train_record_by_its_own_flags(tmp_path: Path) -> None:
    """A `streamrec train` record put in a point's directory stands for the point only if its own
    flags give the point: the preset's dropout counts as written, a safety cap counts only if it
    stopped the run."""
    from streamrec.cli import build_parser
    from streamrec.training_cli import differing_settings

    args = build_parser().parse_args(["tune", "--dataset", "ml-100k", "--preset", "sasrec", "--max-minutes", "150"])
    train = "streamrec train --dataset ml-100k --preset sasrec --seed 0 --max-minutes 60"
    point = {"lr": 0.002, "dropout": 0.2}
    rec = tmp_path / "r.json"
    _point_record(rec, train, 0.1)
    assert differing_settings(json.loads(rec.read_text()), args, point) == [], "sasrec's dropout is 0.2"
    assert differing_settings(json.loads(rec.read_text()), args, {**point, "dropout": 0.5}) == ["dropout"]
    _point_record(rec, train + " --lr 0.001", 0.1)
    assert differing_settings(json.loads(rec.read_text()), args, point) == ["lr"], "not read as the point's lr"
    _point_record(rec, train, 0.1, stopped_by="budget")
    assert differing_settings(json.loads(rec.read_text()), args, point) == ["max_minutes"]

    # A record from before runs said what stopped them: read from its epochs and its patience.
    older = {k: v for k, v in json.loads(rec.read_text()).items() if k != "stopped_by"}
    caps = {"patience": 10, "max_minutes": 60}
    by_patience = {**older, "best_epoch": 13, "epochs_run": 23, "train_seconds": 600, "train_config": caps}
    assert differing_settings(by_patience, args, point) == [], "patience stopped it: its cap never bit"
    by_clock = {**by_patience, "epochs_run": 20, "train_seconds": 3700}
    assert differing_settings(by_clock, args, point) == ["max_minutes"]
    assert differing_settings(older, args, point) == ["max_minutes"], "too thin to tell: the cap counts"


def test_tune_over_seeds_chooses_by_the_mean_of_validation(tmp_path: Path) -> None:
    from streamrec.cli import build_parser
    from streamrec.training_cli import run_tune

    base = f"tune --dataset ml-100k --preset sasrec --results-dir {tmp_path}"
    # Seed 0 alone prefers lr 0.001; the mean over seeds 0-2 prefers lr 0.002.
    figures = {0.001: (0.13, 0.10, 0.10), 0.002: (0.12, 0.12, 0.12)}
    for lr, valids in figures.items():
        for seed, valid in enumerate(valids):
            rec = tmp_path / "tune" / f"lr{lr}" / "ml-100k" / f"sasrec-s{seed}.json"
            _point_record(rec, f"streamrec {base} --seeds 0,1,2 --grid lr={lr}", valid, seed=seed)
    grid_args = ["--resume", "--grid", "lr=0.001,0.002"]
    assert run_tune(build_parser().parse_args([*base.split(), *grid_args]), Settings.from_env()) == 0
    assert json.loads((tmp_path / "tune" / "ml-100k-sasrec-s0-grid.json").read_text())["choice"] == {"lr": 0.001}
    three = build_parser().parse_args([*base.split(), "--seeds", "0,1,2", *grid_args])
    assert run_tune(three, Settings.from_env()) == 0
    grid = json.loads((tmp_path / "tune" / "ml-100k-sasrec-s0-1-2-grid.json").read_text())
    assert grid["choice"] == {"lr": 0.002}
    assert grid["seeds"] == [0, 1, 2]
    assert [[r["seed"] for r in p["seeds"]] for p in grid["points"]] == [[0, 1, 2], [0, 1, 2]]
    assert [p["valid_ndcg10_mean"] for p in grid["points"]] == [0.11, 0.12]


def test_tune_widened_by_an_axis_reads_the_narrower_grids_points_at_the_flags_own_value(tmp_path: Path) -> None:
    """Weight decay added to a grid run without it: the weight_decay0 point is the record the
    narrower grid wrote (trained at the flag's own 0), not trained again; a narrower record trained
    at another weight decay is refused, not read as the point."""
    from streamrec.cli import build_parser
    from streamrec.errors import UserError
    from streamrec.training_cli import _narrower_point, run_tune

    base = f"tune --dataset ml-100k --preset sasrec --seed 0 --results-dir {tmp_path}"
    point = {"lr": 0.002, "dropout": 0.2}
    narrow = tmp_path / "tune" / "lr0.002_dropout0.2" / "ml-100k" / "sasrec-s0.json"
    _point_record(narrow, f"streamrec {base} --grid lr=0.002 dropout=0.2", 0.12)
    wide = tmp_path / "tune" / "lr0.002_dropout0.2_weight_decay0.1" / "ml-100k" / "sasrec-s0.json"
    _point_record(wide, f"streamrec {base} --grid lr=0.002 dropout=0.2 weight_decay=0.1", 0.13)
    before = {p: p.read_text() for p in (narrow, wide)}
    # The caps (which the records' patience stop leaves out of the comparison) keep a wrong retrain short.
    caps = ["--epochs", "1", "--max-minutes", "0.05"]
    axes = ["--grid", "lr=0.002", "dropout=0.2", "weight_decay=0,0.1"]
    args = build_parser().parse_args([*base.split(), *caps, "--resume", *axes])
    assert _narrower_point(tmp_path / "tune", "*/sasrec-s0.json", args, {**point, "weight_decay": 0.0}) == [narrow]
    assert run_tune(args, Settings.from_env()) == 0
    grid = json.loads((tmp_path / "tune" / "ml-100k-sasrec-s0-grid.json").read_text())
    assert [p["seeds"][0]["record"] for p in grid["points"]] == [str(narrow), str(wide)]
    assert [p["valid_ndcg10_mean"] for p in grid["points"]] == [0.12, 0.13]
    assert grid["choice"] == {"lr": 0.002, "dropout": 0.2, "weight_decay": 0.1}
    assert {p: p.read_text() for p in before} == before, "no point was trained again"

    _point_record(narrow, f"streamrec {base} --weight-decay 0.01 --grid lr=0.002 dropout=0.2", 0.12)
    with pytest.raises(UserError, match=r"other settings \(weight_decay\)"):
        run_tune(args, Settings.from_env())


def test_tune_around_a_trained_run_reads_its_record_and_picks_its_dataset(tmp_path: Path) -> None:
    """A grid whose point has every axis at the run's own flags (the preset's dropout counting as
    written) reads what `streamrec train` wrote into the same results directory, not trained again;
    of the records the pattern matches in other datasets' folders it reads its own dataset's."""
    from streamrec.cli import build_parser
    from streamrec.training_cli import run_tune

    flags = f"--preset sasrec --seed 0 --results-dir {tmp_path} --lr 0.002"
    trained = tmp_path / "amazon-beauty" / "sasrec-s0.json"
    _point_record(trained, f"streamrec train --dataset amazon-beauty {flags} --max-minutes 60", 0.12)
    # Another dataset's record, sorting first, trained at the same point.
    _point_record(tmp_path / "a-other" / "sasrec-s0.json", f"streamrec train --dataset ml-100k {flags}", 0.5)
    wide = tmp_path / "tune" / "lr0.002_dropout0.2_weight_decay0.1" / "amazon-beauty" / "sasrec-s0.json"
    axes = "--grid lr=0.002 dropout=0.2 weight_decay=0.1"
    _point_record(wide, f"streamrec tune --dataset amazon-beauty {flags} {axes}", 0.13)
    before = {p: p.read_text() for p in (trained, wide)}
    caps = "--epochs 1 --max-minutes 0.05"  # keep a wrong retrain short
    grid = "--grid lr=0.002 dropout=0.2 weight_decay=0,0.1"
    args = build_parser().parse_args(f"tune --dataset amazon-beauty {flags} {caps} --resume {grid}".split())
    assert run_tune(args, Settings.from_env()) == 0
    out = json.loads((tmp_path / "tune" / "ml-100k-sasrec-s0-grid.json").read_text())
    assert [p["seeds"][0]["record"] for p in out["points"]] == [str(trained), str(wide)]
    assert [p["valid_ndcg10_mean"] for p in out["points"]] == [0.12, 0.13]
    assert {p: p.read_text() for p in before} == before, "no point was trained again"
