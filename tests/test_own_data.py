"""Bring your own data: the RecBole and CSV loaders (streamrec/datasets/own.py), and the README's
"Use your own data" walk-through run end to end with the real commands on a generated dataset:
train for a few seconds, import the checkpoint, start a worker, replay, receive recommendations.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from streamrec.datasets import load_dataset
from streamrec.datasets.own import load_own
from streamrec.errors import UserError
from streamrec.local.processes import settings_env, start_worker
from streamrec.settings import Settings
from streamrec.stream.rec_consumer import RecommendationReader

GENRES = ("Tools", "Garden", "Kitchen", "Toys")
WORKER_FIGURES = (
    "streamrec_stream_recommendations_total",
    "streamrec_stream_dead_letters_total",
    "streamrec_stream_consumer_lag_messages",
    "streamrec_stream_events_in_total",
    "streamrec_index_size_items",
)


def write_recbole(folder: Path, users: int = 40, items: int = 30, clicks_per_user: int = 12, seed: int = 0) -> Path:
    """A small shop in RecBole atomic format: `shop.inter` and `shop.item` (titles, categories, brand)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["item_id:token\ttitle:token_seq\tcategories:token_seq\tbrand:token"]
    for i in range(items):
        genre = GENRES[i % len(GENRES)]
        lines.append(f"p{i}\t{genre} thing number {i}\t{genre} Sub{i % 3}\tbrand{i % 5}")
    (folder / "shop.item").write_text("\n".join(lines) + "\n")
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    t = 1_700_000_000
    for u in range(users):
        start = rng.randrange(items)
        for k in range(clicks_per_user):
            t += rng.randrange(1, 50)
            rows.append(f"u{u}\tp{(start + k) % items}\t{t}")
    (folder / "shop.inter").write_text("\n".join(rows) + "\n")
    return folder / "shop.inter"


def test_recbole_files_load_with_content(tmp_path: Path) -> None:
    ds = load_own(str(write_recbole(tmp_path / "shop")))
    assert ds.name.startswith("shop-") and len(ds.fingerprint) == 64
    assert len(ds.items) == 30 and ds.n_users == 40 and len(ds.events) == 40 * 12
    item = ds.item("p5")
    assert item.title == "Garden thing number 5" and item.category_path == ("Garden", "Sub2") and item.brand == "brand0"
    assert [e.timestamp for e in ds.events] == sorted(e.timestamp for e in ds.events)
    # The folder works as well as the file, and gives the same dataset.
    assert load_dataset(str(tmp_path / "shop"), tmp_path).name == ds.name


def test_fingerprint_follows_the_content_not_the_name(tmp_path: Path) -> None:
    a = load_own(str(write_recbole(tmp_path / "a", seed=1)))
    b = load_own(str(write_recbole(tmp_path / "b", seed=2)))
    c = load_own(str(write_recbole(tmp_path / "c", seed=1)))
    assert a.fingerprint != b.fingerprint and a.name != b.name
    assert a.fingerprint == c.fingerprint and a.name == c.name


def test_csv_with_and_without_optional_columns(tmp_path: Path) -> None:
    full = tmp_path / "full.csv"
    full.write_text(
        "user,item,timestamp,title,category,brand\n"
        'u1,i1,10,"Red, big shoe",Shoes>Running,Acme\n'
        "u1,i2,20,Blue sock,Socks,\n"
        'u2,i1,15,"Red, big shoe",Shoes>Running,Acme\n'
    )
    ds = load_own(str(full))
    assert ds.item("i1").title == "Red, big shoe" and ds.item("i1").category_path == ("Shoes", "Running")
    assert ds.item("i2").brand is None
    assert [(e.user_id, e.item_id) for e in ds.events] == [("u1", "i1"), ("u2", "i1"), ("u1", "i2")]
    bare = tmp_path / "bare.csv"
    bare.write_text("user,item\na,x\na,y\nb,x\n")
    ds = load_own(str(bare))
    assert {it.item_id: it.title for it in ds.items} == {"x": "", "y": ""}
    assert [e.item_id for e in ds.events] == ["x", "y", "x"], "without timestamps the file order is the time"


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("bad.csv", "user,item,timestamp\nu,i,yesterday\n", "line 2"),
        ("short.csv", "user,item,timestamp\nu,i\n", "line 2"),
        ("nouser.csv", "who,what\nu,i\n", "user,item"),
        ("empty.csv", "", "empty"),
        ("data.json", "{}", "format"),
    ],
)
def test_unreadable_files_are_one_user_error(tmp_path: Path, name: str, text: str, needle: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError, match=needle):
        load_own(str(path))


@pytest.mark.integration
def test_use_your_own_data_walk_through(stream_settings: Settings, tmp_path: Path) -> None:
    """The README section, command by command. The training files are removed before the worker
    starts (the replay reads a copy), so serving can only use what the checkpoint carries."""
    trained_on = write_recbole(tmp_path / "mine")
    settings = replace(stream_settings, data_dir=tmp_path / "no-datasets-here", state_dir=tmp_path / "state")
    env = settings_env(settings)

    def cli(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "streamrec.cli", *args], env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"streamrec {' '.join(args)}: {proc.stderr[-2000:]}"
        return proc.stdout

    cli(
        "train", "--dataset", str(trained_on), "--preset", "mufasa", "--text", "hashed", "--epochs", "2",
        "--max-minutes", "0.5", "--threads", "1", "--quiet", "--results-dir", str(tmp_path / "results"),
    )  # fmt: skip
    (checkpoint,) = (settings.state_dir / "models").glob("shop-*/mufasa-s0.pt")
    (record,) = (tmp_path / "results").glob("shop-*/mufasa-s0.json")
    assert checkpoint.parent.name == record.parent.name, "checkpoint and results keyed by the same fingerprint"
    # The saved checkpoint, evaluated again, ranks every test user as the training run's record says.
    cli("eval", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "eval.json"))
    trained, evaluated = json.loads(record.read_text()), json.loads((tmp_path / "eval.json").read_text())
    assert trained["stopped_by"] in ("budget", "epochs")
    assert evaluated["test_ranks"] == trained["test_ranks"] and evaluated["test"] == trained["test"]
    assert "imported and promoted" in cli("model", "import", str(checkpoint))
    replay_copy = tmp_path / "copy"
    shutil.copytree(trained_on.parent, replay_copy)
    shutil.rmtree(trained_on.parent)

    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        reader = RecommendationReader(settings.kafka_bootstrap, settings.topics.recommendations)
        cli("replay", "--dataset", str(replay_copy / "shop.inter"), "--limit", "200")
        got: dict[str, object] = {}
        deadline = time.monotonic() + 90
        while len(got) < 200 and time.monotonic() < deadline:
            got.update({rec.event_id: rec for rec, _ in reader.poll(300)})
        reader.close()
        # What the worker says of itself, for a failure message that tells where the clicks went.
        seen = {k: v for k, v in worker.metrics().items() if k.startswith(WORKER_FIGURES)}
    finally:
        assert worker.stop() == 0, f"worker did not stop cleanly; log {worker.log_path}"
    assert len(got) == 200, f"{len(got)} of 200 clicks answered; worker: {seen}; log {worker.log_path}"
    known = {f"p{i}" for i in range(30)}
    for rec in got.values():
        assert rec.model_version.startswith("shop-"), rec.model_version
        assert {i.item_id for i in rec.items} <= known
    assert not os.path.exists(trained_on)
