"""Growing a trained sequential recommender to a larger catalogue, for fine-tuning from the stream.

Items that joined the catalogue after a model was trained get new ID-embedding rows, initialised
at zero: before any fine-tuning a new item is placed by its content alone, exactly where live
serving puts unseen items (ID row 0; see docs/models.md, "Live serving"). Fine-tuning then learns
their ID rows from the clicks they received. Every other parameter is copied unchanged, so the
grown model scores the old items exactly as the original did. Until an item has a click to learn
from, it is not a negative of the fine-tuning softmax either (`unclicked_new_rows`): its ID row
stays zero, so serving keeps placing it by content through the calibration fitted for exactly
that case (models/cold_start.py).
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


def untrained_id_rows(model: SeqRec) -> torch.Tensor:
    """(N+1,) bool: rows whose ID vector was never trained (all zero: grown here, or held out of
    the model's training); such items are placed by content alone."""
    return (model.id_emb.weight.detach() == 0).all(dim=1)


def unclicked_new_rows(model: SeqRec, clicks: torch.Tensor) -> torch.Tensor:
    """Rows (K,) whose ID vector was never trained (all zero: grown here, or held out of the
    model's training) and that have no click in `clicks` (N+1,), the round's clicks per row.

    Fine-tuning leaves them out of the softmax (`SeqRec.excluded_rows`). As negatives they would be
    pushed down by every step while never a target, and their content-only scores would drift
    from the ones the new-item calibration was fitted on."""
    zero = untrained_id_rows(model)  # (N+1,)
    assert clicks.shape == zero.shape, f"clicks must have one count per row ({len(zero)})"
    zero[0] = False  # the padding row is never a candidate anyway
    return torch.nonzero(zero & (clicks.to(zero.device) == 0)).flatten()


def new_item_clicks(
    before: dict[str, int], model: SeqRec, row_of: dict[str, int], clicks: torch.Tensor
) -> dict[str, int]:
    """The clicks each new item's ID row has been trained on, after a round that trains on
    `clicks` (N+1,) per row: items already counted in `before`, and items whose ID row is still
    all zero in `model` (grown, or held out of its training) and clicked in the round. A count is
    the most clicks any round's window held for the item (windows overlap, so they do not add up).
    Serving fades a new item's calibration by it (`ColdStartConfig.fade_by="trained"`)."""
    untrained = untrained_id_rows(model)  # (N+1,)
    assert clicks.shape == untrained.shape, f"clicks must have one count per row ({len(untrained)})"
    zero = untrained.tolist()
    counts = clicks.tolist()
    out = dict(before)
    for item, row in row_of.items():
        n = int(counts[row])
        if item in before or (zero[row] and n > 0):
            out[item] = max(before.get(item, 0), n)
    return out
