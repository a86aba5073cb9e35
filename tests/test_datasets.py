"""Loaders produce the one item schema and the one event schema, with the documented counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamrec.datasets import DatasetMissingError, load_dataset
from streamrec.datasets.schema import build_events, make_event_id


@pytest.mark.parametrize(
    ("name", "n_items", "n_events", "n_users"),
    [("ml-100k", 1682, 100_000, 943), ("amazon-beauty", 12_101, 198_502, 22_363), ("lastfm-2k-mm", 1425, 56_345, 1858)],
)
def test_counts_match_the_source(data_dir: Path, name: str, n_items: int, n_events: int, n_users: int) -> None:
    ds = load_dataset(name, data_dir)
    assert len(ds.items) == n_items
    assert len(ds.events) == n_events
    assert ds.n_users == n_users
    assert all(ds.has_item(ev.item_id) for ev in ds.events), "every click refers to a catalogue item"
    times = [ev.timestamp for ev in ds.events]
    assert times == sorted(times), "events are in time order"
    assert len({ev.event_id for ev in ds.events}) == n_events, "event ids are unique"


def test_beauty_keeps_each_users_sequence_order(data_dir: Path) -> None:
    ds = load_dataset("beauty", data_dir)
    root = data_dir / "amazon-beauty"
    import json

    id2item = json.loads((root / "datamaps.json").read_text())["id2item"]
    lines = (root / "Beauty_sequential_data.txt").read_text().splitlines()[:200]
    seqs = ds.user_sequences()
    for line in lines:
        user, *items = line.split()
        assert seqs[user] == [id2item[i] for i in items]


def test_beauty_items_have_content(data_dir: Path) -> None:
    ds = load_dataset("beauty", data_dir)
    tops = {it.top_category for it in ds.items}
    assert {"Skin Care", "Hair Care", "Makeup", "Tools & Accessories", "Bath & Body", "Fragrance"} <= tops
    assert sum(it.brand is not None for it in ds.items) == 12_101 - 2_098
    item = ds.item("9759091062")
    assert item.title == "Xtreme Brite Brightening Gel 1oz."
    assert item.category_path[0] == "Hair Care" and item.price == pytest.approx(19.99)


def test_lastfm_carries_precomputed_modalities(data_dir: Path) -> None:
    ds = load_dataset("lastfm", data_dir)
    item = ds.items[0]
    assert item.vectors["text"].shape == (384,)
    assert item.vectors["audio_vggish"].shape == (128,)
    assert item.vectors["audio_whisper"].shape == (512,)


def test_ml100k_titles_and_genres(data_dir: Path) -> None:
    ds = load_dataset("ml-100k", data_dir)
    toy = ds.item("1")
    assert toy.title == "Toy Story (1995)"
    assert toy.category_path == ("Animation", "Children's", "Comedy")


def test_event_ids_are_deterministic() -> None:
    rows = [("u1", "a", 5), ("u2", "b", 3), ("u1", "c", 5)]
    first, second = build_events("x", rows), build_events("x", rows)
    assert first == second
    assert [e.item_id for e in first] == ["b", "a", "c"], "stable sort keeps source order on ties"
    assert first[1].event_id == make_event_id("x", "u1", "a", 5, 0)
    assert first[2].event_id == make_event_id("x", "u1", "c", 5, 1)


def test_missing_dataset_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError, match="STREAMREC_DATA_DIR") as err:
        load_dataset("ml-100k", tmp_path)
    assert "streamrec data fetch ml-100k" in str(err.value)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("nope", tmp_path)
