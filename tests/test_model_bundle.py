"""Item content for items a model was not trained on (streamrec/model_bundle.py): precomputed
modality vectors travel in catalogue records and are put on the training scale; the catalogue saved
in checkpoints keeps that scale."""

from __future__ import annotations

import numpy as np
import torch

from streamrec.datasets.schema import Dataset, Event, Item
from streamrec.features import build_catalog, catalogue_from_payload, catalogue_payload
from streamrec.model_bundle import content_features
from streamrec.stream.replay import catalogue_record
from streamrec.stream.schemas import decode_catalogue, encode, now_ms


def dataset_with_audio() -> Dataset:
    rng = np.random.default_rng(0)
    items = [
        Item(
            f"a{k}", f"artist {k}", ("rock",), vectors={"audio": (100 + 10 * rng.standard_normal(6)).astype(np.float32)}
        )
        for k in range(12)
    ]
    return Dataset("toy", items, [Event("u", "a0", 1, "e0")])


def test_a_new_item_takes_its_records_vector_on_the_training_scale() -> None:
    ds = dataset_with_audio()
    catalog, titles = catalogue_from_payload(catalogue_payload(build_catalog(ds, text="hashed"), {}))
    mean, std = catalog.extra_scale["pre_audio"]
    raw = np.stack([it.vectors["audio"] for it in ds.items])
    assert torch.allclose(mean, torch.from_numpy(raw.mean(0)), atol=1e-4), "the scale survives the checkpoint"
    vec = [100.0, 90.0, 110.0, 100.0, 95.0, 105.0]
    new = decode_catalogue(
        encode(catalogue_record(Item("new", "newcomer", ("rock",), vectors={"audio": vec}), now_ms()))
    )
    bare = decode_catalogue(encode(catalogue_record(Item("bare", "no audio", ("rock",)), now_ms())))
    known = decode_catalogue(encode(catalogue_record(ds.items[3], now_ms())))
    feats, id_rows = content_features(catalog, titles, "hashed", [new, bare, known])
    assert id_rows.tolist() == [0, 0, 4]
    mask = feats.extra_mask["pre_audio"].tolist()
    assert mask == [True, False, True], "new with a vector, new without one, known"
    expected = (torch.tensor(vec) - mean) / std
    assert torch.allclose(feats.extra["pre_audio"][0], expected, atol=1e-5)
    assert torch.equal(feats.extra["pre_audio"][2], catalog.features.extra["pre_audio"][4]), "known items keep theirs"
