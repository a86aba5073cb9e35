"""Growing a trained sequential recommender to a larger catalogue, for fine-tuning from the stream.

Items that joined the catalogue after a model was trained get new ID-embedding rows, initialised
at zero: before any fine-tuning a new item is placed by its content alone, exactly where live
serving puts unseen items (ID row 0; see docs/models.md, "Live serving"). Fine-tuning then learns
their ID rows from the clicks they received. Every other parameter is copied unchanged, so the
grown model scores the old items exactly as the original did.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from streamrec.models.item_features import ItemFeatures
from streamrec.models.seqrec import SeqRec


def grow_items(model: SeqRec, features: ItemFeatures) -> SeqRec:
    """A copy of `model` over `features` (n_rows = old rows + new rows), new ID rows at zero."""
    old_rows = model.cfg.n_items + 1
    new_rows = features.n_rows
    assert new_rows >= old_rows, f"features have {new_rows} rows, fewer than the model's {old_rows}"
    device = model.id_emb.weight.device
    feats = features.to(device) if model.features is not None else None  # ID-only models keep none
    grown = SeqRec(replace(model.cfg, n_items=new_rows - 1), feats)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.zeros(new_rows, model.cfg.encoder.dim, dtype=state["id_emb.weight"].dtype, device=device)
    ids[:old_rows] = state["id_emb.weight"]  # (N'+1, D)
    state["id_emb.weight"] = ids
    if "item_clicks" in state:  # `id_evidence`: new items have no training clicks yet (content only)
        clicks = torch.zeros(new_rows, dtype=state["item_clicks"].dtype, device=device)
        clicks[:old_rows] = state["item_clicks"]
        state["item_clicks"] = clicks
    grown.load_state_dict(state)
    return grown.to(device)
