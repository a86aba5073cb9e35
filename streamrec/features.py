"""Builds the models' item features from a dataset: item rows, title vectors, attribute tokens,
top-level categories, and any precomputed modality vectors.

Item row r (1..N) is the dataset's r-th item; row 0 is padding. Title vectors come from MiniLM
(`text="minilm"`, cached) or, for fast tests, from a fixed random projection of hashed title words
(`text="hashed"`, same 384-d shape).
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamrec.datasets.schema import Dataset, Item
from streamrec.models.item_features import ItemFeatures

_WORD = re.compile(r"[a-z0-9]+")
MAX_ATTR_TOKENS = 8


@dataclass
class ItemCatalog:
    """Dataset item ids <-> model rows, and the features of every row."""

    item_ids: list[str]  # row r-1 -> item id
    row_of: dict[str, int]
    features: ItemFeatures
    categories: list[str]  # category id c -> name (0 = "unknown")
    attr_vocab: dict[str, int]
    # Per precomputed modality ("pre_<name>"): the per-dimension mean and std the training rows
    # were standardised with, so a new item's vector (from its catalogue record) is put on the
    # same scale.
    extra_scale: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def sequences(self, dataset: Dataset) -> list[list[int]]:
        return [[self.row_of[i] for i in seq] for seq in dataset.user_sequences().values()]


def hashed_text_vectors(texts: list[str], dim: int = 384, buckets: int = 1 << 15, seed: int = 0) -> np.ndarray:
    """Deterministic stand-in for a sentence encoder: mean of fixed random word vectors, unit norm."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((buckets, dim)).astype(np.float32)
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, text in enumerate(texts):
        ids = [zlib.crc32(w.encode()) % buckets for w in _WORD.findall(text.lower())] or [0]
        v = table[ids].mean(0)
        out[i] = v / (np.linalg.norm(v) + 1e-8)
    return out


def attribute_tokens(item: Item) -> list[str]:
    toks = ["c:" + "/".join(item.category_path[: d + 1]).lower() for d in range(min(3, len(item.category_path)))]
    if item.brand:
        toks.append("b:" + item.brand.lower())
    return toks[:MAX_ATTR_TOKENS]


def build_catalog(
    dataset: Dataset, text: str = "minilm", cache_dir: Path | None = None, progress: bool = True
) -> ItemCatalog:
    items = dataset.items
    n = len(items)
    titles = [it.title for it in items]
    if text == "minilm":
        from streamrec.text_encoder import cached_title_vectors

        assert cache_dir is not None, "MiniLM vectors are cached: give a cache directory"
        tv = cached_title_vectors(titles, cache_dir, dataset.name, progress=progress)
    elif text == "hashed":
        tv = hashed_text_vectors(titles)
    else:
        raise ValueError(f"text encoder {text!r} is 'minilm' or 'hashed'")
    title = torch.zeros(n + 1, tv.shape[1])
    title[1:] = torch.from_numpy(tv)
    title_mask = torch.zeros(n + 1, dtype=torch.bool)
    title_mask[1:] = torch.tensor([bool(t.strip()) for t in titles])
    vocab: dict[str, int] = {}
    attr = torch.zeros(n + 1, MAX_ATTR_TOKENS, dtype=torch.long)
    for r, it in enumerate(items, start=1):
        for j, tok in enumerate(attribute_tokens(it)):
            attr[r, j] = vocab.setdefault(tok, len(vocab) + 1)
    cats = ["unknown"] + sorted({it.top_category for it in items} - {"unknown"})
    cat_id = {c: i for i, c in enumerate(cats)}
    category = torch.zeros(n + 1, dtype=torch.long)
    category[1:] = torch.tensor([cat_id[it.top_category] for it in items])
    extra, extra_mask = {}, {}
    scale: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    names = sorted({k for it in items for k in it.vectors})
    for name in names:
        dim = next(len(it.vectors[name]) for it in items if name in it.vectors)
        mat = torch.zeros(n + 1, dim)
        mask = torch.zeros(n + 1, dtype=torch.bool)
        for r, it in enumerate(items, start=1):
            if name in it.vectors:
                mat[r] = torch.from_numpy(np.asarray(it.vectors[name], dtype=np.float32))
                mask[r] = True
        # Precomputed features come on arbitrary scales (VGGish is ~100s): standardise per dimension.
        rows = mat[mask]
        mean, std = rows.mean(0), rows.std(0)
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
        mat[mask] = (rows - mean) / std
        extra[f"pre_{name}"] = mat
        extra_mask[f"pre_{name}"] = mask
        scale[f"pre_{name}"] = (mean, std)
    features = ItemFeatures(title, title_mask, attr, len(vocab) + 1, category, len(cats), extra, extra_mask)
    ids = [it.item_id for it in items]
    return ItemCatalog(ids, {i: r for r, i in enumerate(ids, start=1)}, features, cats, vocab, scale)


def catalogue_payload(catalog: ItemCatalog, titles: dict[str, str]) -> dict[str, Any]:
    """The catalogue as plain tensors and strings, saved inside checkpoints (models/checkpoint.py)
    so that serving a checkpoint needs neither the training files nor the text encoder for them."""
    f = catalog.features
    return {
        "item_ids": json.dumps(catalog.item_ids),
        "titles": json.dumps([titles.get(i, "") for i in catalog.item_ids]),
        "categories": json.dumps(catalog.categories),
        "attr_vocab": json.dumps(catalog.attr_vocab),
        "title": f.title,
        "title_mask": f.title_mask,
        "attr_tokens": f.attr_tokens,
        "n_attr": f.attr_vocab,
        "category": f.category,
        "n_categories": f.n_categories,
        "extra": dict(f.extra),
        "extra_mask": dict(f.extra_mask),
        "extra_mean": {k: m for k, (m, _) in catalog.extra_scale.items()},
        "extra_std": {k: sd for k, (_, sd) in catalog.extra_scale.items()},
    }


def catalogue_from_payload(d: dict[str, Any]) -> tuple[ItemCatalog, dict[str, str]]:
    ids: list[str] = json.loads(d["item_ids"])
    features = ItemFeatures(
        d["title"],
        d["title_mask"],
        d["attr_tokens"],
        int(d["n_attr"]),
        d["category"],
        int(d["n_categories"]),
        dict(d["extra"]),
        dict(d["extra_mask"]),
    )
    assert features.n_rows == len(ids) + 1, f"catalogue of {len(ids)} items has {features.n_rows} feature rows"
    catalog = ItemCatalog(
        ids,
        {item: row for row, item in enumerate(ids, start=1)},
        features,
        json.loads(d["categories"]),
        json.loads(d["attr_vocab"]),
        {k: (m, d["extra_std"][k]) for k, m in d.get("extra_mean", {}).items()},
    )
    return catalog, dict(zip(ids, json.loads(d["titles"]), strict=True))
