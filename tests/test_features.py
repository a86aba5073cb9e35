"""Item features built from real datasets: rows, masks, categories, precomputed modalities."""

from __future__ import annotations

from pathlib import Path

import torch

from streamrec.datasets import load_dataset
from streamrec.features import build_catalog
from streamrec.models.sequence_data import leave_one_out, training_batches


def test_ml100k_catalog_and_split(data_dir: Path) -> None:
    ds = load_dataset("ml-100k", data_dir)
    cat = build_catalog(ds, text="hashed")
    f = cat.features
    assert f.n_rows == 1683 and not f.title_mask[0] and f.title_mask[1:].all()
    assert (f.category[1:] > 0).sum() >= 1680, "almost every movie has a genre"
    assert cat.row_of["1"] == 1 and cat.item_ids[0] == "1"
    split = leave_one_out(cat.sequences(ds), len(cat.item_ids))
    assert len(split.test) == 943
    hist, target = split.test[0]
    assert split.valid[0] == (hist[:-1], hist[-1]), "validation target is the second-last item"
    seqs, targets = next(training_batches(split.train, 50, 16, torch.Generator().manual_seed(0)))
    valid = seqs > 0
    assert torch.equal(seqs[:, 1:][valid[:, 1:]], targets[:, :-1][valid[:, 1:]]), "targets are the next items"


def test_lastfm_precomputed_modalities_are_standardised(data_dir: Path) -> None:
    cat = build_catalog(load_dataset("lastfm", data_dir), text="hashed")
    f = cat.features
    assert set(f.extra) == {"pre_text", "pre_audio_vggish", "pre_audio_whisper"}
    for name, x in f.extra.items():
        rows = x[f.extra_mask[name]]
        std = rows.std(0)
        # Unit variance per dimension, except dimensions constant over all items (left at 0).
        assert rows.mean(0).abs().max() < 1e-3 and (((std - 1).abs() < 1e-2) | (std < 1e-3)).all(), name
    assert f.modality_names == ["title", "attr", "pre_audio_vggish", "pre_audio_whisper", "pre_text"]


def test_beauty_categories_are_the_level_two_genres(data_dir: Path) -> None:
    cat = build_catalog(load_dataset("beauty", data_dir), text="hashed")
    assert cat.categories == [
        "unknown",
        "Bath & Body",
        "Fragrance",
        "Hair Care",
        "Makeup",
        "Skin Care",
        "Tools & Accessories",
    ]
    assert (cat.features.category[1:] > 0).all()
