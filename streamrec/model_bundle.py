"""A trained model with what it needs to score items: the `SeqRec` weights, the item catalogue it
was trained on plus the items it grew to, titles, text encoder, and the checkpoint's metadata.

Serving (serving/research_model.py, which adds per-user state on top) and online training
(training/online_trainer.py) both start from a `ModelBundle`; training never builds a serving model.
No Kafka here; items are anything with `item_id`, `title`, `category_path`, `brand` and `price`
(a dataset `Item` or a catalogue record), and optionally `vectors` (precomputed modalities).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from streamrec.datasets import load_dataset
from streamrec.datasets.schema import Item
from streamrec.features import (
    ItemCatalog,
    attribute_tokens,
    build_catalog,
    catalogue_from_payload,
    catalogue_payload,
    hashed_text_vectors,
)
from streamrec.models.checkpoint import read_checkpoint
from streamrec.models.item_features import ItemFeatures
from streamrec.models.seqrec import SeqRec


class ItemContent(Protocol):
    item_id: str
    title: str
    category_path: tuple[str, ...]
    brand: str | None
    price: float | None


@dataclass
class ModelBundle:
    model: SeqRec
    catalog: ItemCatalog  # training catalogue + grown items, rows in model order
    titles: dict[str, str]
    version: str
    text: str  # "minilm" or "hashed": how new titles are encoded
    meta: dict[str, Any]  # the checkpoint's metadata (dataset, parent, grown items, gate figures)
    base_catalogue: dict[str, Any]  # the training catalogue as saved in checkpoints

    @property
    def grown_items(self) -> list[dict]:
        return list(self.meta.get("grown_items", []))

    @property
    def trained_clicks(self) -> dict[str, int]:
        """Clicks the online trainer learned each new item's ID row from: items whose row was zero
        when a round began (grown, or held out of training); absent items have none."""
        return dict(self.meta.get("trained_clicks", {}))


def content_features(
    catalog: ItemCatalog, titles: dict[str, str], text: str, items: Sequence[ItemContent]
) -> tuple[ItemFeatures, torch.Tensor]:
    """Features of `items` in the checkpoint's vocabularies, and each one's ID row (0 for items
    the model has no ID row for: placed by content alone)."""
    cat, f = catalog, catalog.features
    n = len(items)
    id_rows = torch.tensor([cat.row_of.get(r.item_id, 0) for r in items], dtype=torch.long)  # (n,)
    title = torch.zeros(n, f.title.shape[1])  # (n, d_title)
    fresh = []
    for i, (rec, row) in enumerate(zip(items, id_rows.tolist(), strict=True)):
        if row and rec.title == titles.get(rec.item_id):
            title[i] = f.title[row]  # the training-time vector of an unchanged title
        else:
            fresh.append(i)
    if fresh:
        texts = [items[i].title for i in fresh]
        if text == "minilm":
            from streamrec.text_encoder import encode_texts

            vecs = encode_texts(texts)
        else:
            vecs = hashed_text_vectors(texts)
        title[fresh] = torch.from_numpy(np.asarray(vecs, dtype=np.float32))
    title_mask = torch.tensor([bool(r.title.strip()) for r in items])
    attr = torch.zeros(n, f.attr_tokens.shape[1], dtype=torch.long)
    category = torch.zeros(n, dtype=torch.long)
    cat_index = {c: i for i, c in enumerate(cat.categories)}
    for i, rec in enumerate(items):
        item = Item(rec.item_id, rec.title, tuple(rec.category_path), rec.brand, rec.price)
        toks = [cat.attr_vocab[t] for t in attribute_tokens(item) if t in cat.attr_vocab]  # unknown dropped
        attr[i, : len(toks)] = torch.tensor(toks[: attr.shape[1]], dtype=torch.long)
        category[i] = cat_index.get(item.top_category, 0)
    # Precomputed vectors (e.g. audio): known items keep their training-time ones; a new item takes
    # the one its catalogue record carries (`vectors`, by modality name), standardised as in
    # training, and has the modality masked without one.
    extra = {k: v[id_rows].clone() for k, v in f.extra.items()}  # (n, d) each
    extra_mask = {k: m[id_rows] & (id_rows > 0) for k, m in f.extra_mask.items()}  # (n,) each
    for i, rec in enumerate(items):
        if id_rows[i] > 0:
            continue
        for name, vec in (getattr(rec, "vectors", None) or {}).items():
            key = f"pre_{name}"
            if key in extra and key in cat.extra_scale and len(vec) == extra[key].shape[1]:
                mean, std = cat.extra_scale[key]
                extra[key][i] = (torch.as_tensor(np.asarray(vec, dtype=np.float32)) - mean) / std
                extra_mask[key][i] = True
    feats = ItemFeatures(title, title_mask, attr, f.attr_vocab, category, f.n_categories, extra, extra_mask)
    return feats, id_rows


def grown_item(d: dict[str, Any]) -> Item:
    """An item grown by online fine-tuning, from the dict the checkpoint's metadata keeps."""
    path = tuple(d.get("category_path") or ())
    return Item(d["item_id"], d.get("title", ""), path, d.get("brand"), d.get("price"), dict(d.get("vectors") or {}))


def grown_catalog(catalog: ItemCatalog, titles: dict[str, str], text: str, grown: list[dict]) -> ItemCatalog:
    """The training catalogue plus items added by online fine-tuning (rows n+1.. in order); their
    content travels in the checkpoint's metadata because the dataset does not have them."""
    if not grown:
        return catalog
    items = [grown_item(g) for g in grown]
    feats, _ = content_features(catalog, titles, text, items)
    ids = catalog.item_ids + [it.item_id for it in items]
    return ItemCatalog(
        ids,
        {item: row + 1 for row, item in enumerate(ids)},
        catalog.features.append(feats),
        catalog.categories,
        catalog.attr_vocab,
        catalog.extra_scale,
    )


def load_bundle(path: Path, data_dir: Path, features_dir: Path) -> ModelBundle:
    """A checkpoint from `streamrec train` (or the online trainer), with the item features of the
    dataset it was trained on (carried in the checkpoint; older checkpoints without them re-read
    the dataset) and of the items it grew to since."""
    ck = read_checkpoint(path)
    meta = ck.meta
    payload = ck.catalogue
    if payload is None:
        dataset = load_dataset(meta.get("dataset_source", meta["dataset"]), data_dir)
        base = build_catalog(dataset, text=meta["text"], cache_dir=features_dir, progress=False)
        payload = catalogue_payload(base, {it.item_id: it.title for it in dataset.items})
    catalog, titles = catalogue_from_payload(payload)
    grown = meta.get("grown_items", [])
    catalog = grown_catalog(catalog, titles, meta["text"], grown)
    titles.update({g["item_id"]: g["title"] for g in grown})
    model = SeqRec(ck.config, catalog.features)
    model.load_state_dict(ck.state_dict)
    return ModelBundle(model, catalog, titles, ck.version, meta["text"], meta, payload)
