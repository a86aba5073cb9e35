"""Causal Transformer over item representations: SASRec's encoder with dense attention, MUFASA's
Sparse Attention-guided Alignment Layer with the NSA-style sparse attention.

Sequences are right-padded: real items occupy positions 0..n-1, so causal attention alone keeps
padding out of every real position's output and no key-padding mask is needed. Positions are
learned absolute embeddings counted from the first item of the (truncated) sequence. The same
forward runs incrementally over cached state (`cache`): the attention modules own it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from streamrec.models.attention_cache import CachedCall
from streamrec.models.sparse_attention import DenseCausalAttention, SparseAttention, SparseAttentionConfig


@dataclass(frozen=True)
class SequenceEncoderConfig:
    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.2
    attention: str = "dense"  # "dense" (SASRec) or "sparse" (MUFASA SAL)
    sparse: SparseAttentionConfig = field(default_factory=SparseAttentionConfig)
    # Initial std of the learned position embeddings. 1.0 is PyTorch's default, under which
    # positions (norm about 8 at D = 64) dwarf ID embeddings (std 0.02, norm about 0.16) at start;
    # 0.02 starts them balanced (docs/models.md, "Training").
    pos_init_std: float = 1.0

    def __post_init__(self) -> None:
        assert self.attention in ("dense", "sparse"), "attention is 'dense' or 'sparse'"


class EncoderBlock(nn.Module):
    """Pre-norm block: x + Attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, cfg: SequenceEncoderConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.attn: SparseAttention | DenseCausalAttention = (
            SparseAttention(cfg.dim, cfg.heads, cfg.sparse)
            if cfg.attention == "sparse"
            else DenseCausalAttention(cfg.dim, cfg.heads)
        )
        self.ffn = nn.Sequential(
            nn.Linear(cfg.dim, 2 * cfg.dim), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(2 * cfg.dim, cfg.dim)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: CachedCall | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), cache=cache))
        return x + self.drop(self.ffn(self.norm2(x)))


class SequenceEncoder(nn.Module):
    def __init__(self, cfg: SequenceEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.pos = nn.Embedding(cfg.max_len, cfg.dim)
        if cfg.pos_init_std != 1.0:  # 1.0: keep PyTorch's draw, so earlier seeds reproduce exactly
            nn.init.normal_(self.pos.weight, std=cfg.pos_init_std)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, items: torch.Tensor, cache: list[CachedCall] | None = None) -> torch.Tensor:
        """items: (B, T, D) item representations, right-padded -> (B, T, D) hidden states.

        With `cache` (one call per layer, all for the same slots), items are the slots' new
        positions, which follow what the slots hold: the hidden states equal the full forward's at
        those positions, and the cache is extended by them (models/attention_cache.py)."""
        b, t, d = items.shape
        if cache is None:
            assert t <= self.cfg.max_len, f"sequence length {t} exceeds max_len {self.cfg.max_len}"
            x = self.drop(items + self.pos.weight[:t])
            for block in self.blocks:
                x = block(x)
            return self.norm(x)
        assert len(cache) == len(self.blocks), "one cached call per layer"
        pos = cache[0].positions(t)  # (B, T)
        assert int(pos.max()) < self.cfg.max_len, f"a window would exceed max_len {self.cfg.max_len}"
        x = self.drop(items + self.pos.weight[pos])
        for block, call in zip(self.blocks, cache, strict=True):
            x = block(x, cache=call)
        return self.norm(x)
