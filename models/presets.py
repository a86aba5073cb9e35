"""Named model configurations: the baseline, the two research models, their combination, ablations.

`build_config(name, n_items, max_len, **overrides)` returns a `SeqRecConfig`; ablation names are
"<model>-no-<part>" (see docs/models.md for the list and docs/results.md for their figures).
"""

from __future__ import annotations

from dataclasses import replace

from streamrec.models.cammsr_moe import MoEConfig
from streamrec.models.modality_swap import SwapConfig
from streamrec.models.mufasa_fusion import FusionConfig
from streamrec.models.seqrec import SeqRecConfig
from streamrec.models.sequence_encoder import SequenceEncoderConfig
from streamrec.models.sparse_attention import SparseAttentionConfig

SWAP_ON = SwapConfig(weight=0.1, prob=0.3, tau=0.2)


def _base(n_items: int, max_len: int, dim: int, attention: str, sparse: SparseAttentionConfig) -> SeqRecConfig:
    enc = SequenceEncoderConfig(
        dim=dim, layers=2, heads=2, max_len=max_len, dropout=0.2, attention=attention, sparse=sparse
    )
    return SeqRecConfig(n_items=n_items, encoder=enc)


def default_sparse(max_len: int) -> SparseAttentionConfig:
    """Blocks of 8 with a window of 16 for Beauty-length sequences (50), larger for long ones."""
    if max_len <= 64:
        return SparseAttentionConfig(block=8, num_selected=3, num_recent=1, window=16)
    return SparseAttentionConfig(block=16, num_selected=4, num_recent=1, window=32)


def _no_branch(cfg: SeqRecConfig, branch: str) -> SeqRecConfig:
    sp = cfg.encoder.sparse
    return replace(
        cfg, encoder=replace(cfg.encoder, sparse=replace(sp, branches=tuple(b for b in sp.branches if b != branch)))
    )


def _presets(n_items: int, max_len: int, dim: int) -> dict[str, SeqRecConfig]:
    sparse = default_sparse(max_len)
    dense_id = _base(n_items, max_len, dim, "dense", sparse)
    sparse_base = _base(n_items, max_len, dim, "sparse", sparse)
    mufasa = replace(sparse_base, item_encoder="mufasa", fusion=FusionConfig())
    cammsr = replace(dense_id, item_encoder="cammsr", moe=MoEConfig(), swap=SWAP_ON)
    presets = {
        "sasrec": dense_id,
        "sasrec-sparse": sparse_base,
        # Content-aware baselines: SASRec with a projection of the frozen title vector added to the
        # ID embedding (UniSRec-style), and with the projection alone.
        "sasrec-content": replace(dense_id, item_encoder="id+text"),
        "sasrec-text": replace(dense_id, item_encoder="text"),
        "mufasa": mufasa,
        "cammsr": cammsr,
        # The combination: CAMMSR's item encoder with MUFASA's sparse sequence encoder.
        "cammsr-sparse": replace(cammsr, encoder=sparse_base.encoder),
        # MUFASA ablations
        "mufasa-no-align": replace(mufasa, fusion=replace(mufasa.fusion, align_weight=0.0)),
        "mufasa-no-cf": replace(mufasa, fusion=replace(mufasa.fusion, cf_weight=0.0)),
        "mufasa-no-structure": replace(mufasa, fusion=replace(mufasa.fusion, structure_weight=0.0)),
        "mufasa-no-dist": replace(mufasa, fusion=replace(mufasa.fusion, dist_weight=0.0)),
        # All four fusion losses off at once: what the title-anchored fusion gives on its own, since
        # removing any one loss leaves the other three to stand in for it.
        "mufasa-no-fusion-losses": replace(
            mufasa,
            fusion=replace(mufasa.fusion, align_weight=0.0, cf_weight=0.0, structure_weight=0.0, dist_weight=0.0),
        ),
        "mufasa-no-cmp": _no_branch(mufasa, "cmp"),
        "mufasa-no-sel": _no_branch(mufasa, "sel"),
        "mufasa-no-win": _no_branch(mufasa, "win"),
        "mufasa-dense": replace(mufasa, encoder=dense_id.encoder),
        # CAMMSR ablations
        "cammsr-no-category": replace(cammsr, moe=replace(cammsr.moe, category_guidance="off")),
        "cammsr-no-swap": replace(cammsr, swap=SwapConfig(weight=0.0)),
        "cammsr-no-synergy": replace(cammsr, moe=replace(cammsr.moe, synergy="none")),
    }
    return presets


def build_config(name: str, n_items: int, max_len: int = 50, dim: int = 64) -> SeqRecConfig:
    presets = _presets(n_items, max_len, dim)
    if name not in presets:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(presets))}")
    return presets[name]


def preset_names() -> list[str]:
    return sorted(_presets(1, 50, 64))
