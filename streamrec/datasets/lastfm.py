"""Loader for HetRec 2011 Last.fm-2K with multimodal features (Spillo et al.), `lastfm-2k-mm/`.

Items are artists: the title is the artist name, the tags (user tags, genre-like) form the category
path in the file's order, and the precomputed vectors are attached as modalities: `text` (MiniLM of
the tags, 384-d), `audio_vggish` (128-d), `audio_whisper` (512-d). The data has no timestamps: the
split label (train, valid, test) and then file order give each user's order, and a synthetic time
(one second per position) keeps that order when events are replayed.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from streamrec.datasets.schema import Dataset, Item, build_events

NAME = "lastfm-2k-mm"
REQUIRED = ("lfm2k.inter", "lfm2k_og_ids.inter", "artists.dat", "lfm2k_text.tsv", "all-MiniLM-L6-v2.npy")


def _read_tsv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        return [row for row in reader if row]


def load(root: Path) -> Dataset:
    inter = _read_tsv(root / "lfm2k.inter")
    og = _read_tsv(root / "lfm2k_og_ids.inter")
    assert len(inter) == len(og), "lfm2k.inter and lfm2k_og_ids.inter must have the same rows"
    artist_of_item: dict[int, str] = {}
    for row, og_row in zip(inter, og, strict=True):
        artist_of_item[int(row[1])] = og_row[1]
    names = {row[0]: row[1] for row in _read_tsv(root / "artists.dat")}
    tags = {
        row[0]: tuple(t.strip() for t in row[1].split(",") if t.strip()) for row in _read_tsv(root / "lfm2k_text.tsv")
    }
    modality_files = {"text": "all-MiniLM-L6-v2.npy", "audio_vggish": "vggish.npy", "audio_whisper": "whisper.npy"}
    matrices = {m: np.load(root / f).astype(np.float32) for m, f in modality_files.items() if (root / f).exists()}
    n_items = max(artist_of_item) + 1
    items = []
    for idx in range(n_items):
        artist = artist_of_item.get(idx, "")
        vectors = {m: mat[idx] for m, mat in matrices.items() if idx < len(mat)}
        items.append(
            Item(
                item_id=str(idx),
                title=names.get(artist, f"artist {artist}"),
                category_path=tags.get(artist, ()),
                vectors=vectors,
            )
        )
    # Per user: train rows, then valid, then test, each in file order.
    ordered = sorted(range(len(inter)), key=lambda i: (int(inter[i][0]), int(inter[i][3]), i))
    rows = []
    position: dict[str, int] = {}
    for i in ordered:
        user = inter[i][0]
        pos = position.get(user, 0)
        position[user] = pos + 1
        rows.append((user, inter[i][1], pos))
    return Dataset(NAME, items, build_events(NAME, rows))
