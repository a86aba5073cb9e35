"""Content baseline: hashed bag-of-tokens item vectors and a recency-weighted user vector.

The walking skeleton's encoder, needing no training: an item is the mean of fixed random vectors
of its hashed tokens (title words, each prefix of its category path, its brand), L2-normalised; a
user is the recency-weighted mean of their latest items. Its seam is the one the research models
(MUFASA, CAMMSR) fill: `encode_items(content) -> (N, D)` and `encode_users(item vectors) -> (B, D)`.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class ContentBaselineConfig:
    dim: int = 64
    buckets: int = 1 << 16
    seed: int = 0
    history: int = 50  # latest clicks that form the user vector
    decay: float = 0.85  # weight of a click one step older, relative to the next
    category_weight: int = 3  # category tokens count this many times against one title word
    version: str = "content-v1"


def item_tokens(title: str, category_path: Sequence[str], brand: str | None, category_weight: int) -> list[str]:
    """Tokens of an item: title words, category-path prefixes (weighted) and the brand."""
    tokens = [f"w:{w}" for w in _WORD.findall(title.lower())]
    for depth in range(1, len(category_path) + 1):
        tokens += [f"c:{'/'.join(category_path[:depth]).lower()}"] * category_weight
    if brand:
        tokens.append(f"b:{brand.lower()}")
    return tokens or ["<empty>"]


def hash_tokens(tokens: Sequence[str], buckets: int) -> list[int]:
    """Stable across processes (crc32, unlike Python's salted `hash`)."""
    return [zlib.crc32(t.encode()) % buckets for t in tokens]


class ContentBaseline(nn.Module):
    """Fixed random token table; no trainable parameters."""

    def __init__(self, cfg: ContentBaselineConfig) -> None:
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        table = torch.randn(cfg.buckets, cfg.dim, generator=gen) / cfg.dim**0.5
        self.register_buffer("table", table)
        self.bag = nn.EmbeddingBag.from_pretrained(table, freeze=True, mode="mean")

    @property
    def version(self) -> str:
        return self.cfg.version

    def token_ids(self, title: str, category_path: Sequence[str], brand: str | None) -> list[int]:
        return hash_tokens(item_tokens(title, category_path, brand, self.cfg.category_weight), self.cfg.buckets)

    @torch.no_grad()
    def encode_items(self, token_ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """token_ids: N lists of bucket ids -> (N, D) unit vectors."""
        assert len(token_ids) > 0, "encode_items needs at least one item"
        flat = torch.tensor([t for ids in token_ids for t in ids], dtype=torch.long)
        offsets = torch.tensor([0] + [len(ids) for ids in token_ids[:-1]], dtype=torch.long).cumsum(0)
        vecs = self.bag(flat, offsets)  # (N, D)
        return nn.functional.normalize(vecs, dim=-1)

    @torch.no_grad()
    def encode_users(self, item_vecs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """item_vecs: (B, L, D), oldest first, right-aligned; mask: (B, L) true on real items -> (B, D)."""
        assert item_vecs.ndim == 3 and mask.shape == item_vecs.shape[:2], "item_vecs (B, L, D), mask (B, L)"
        length = item_vecs.shape[1]
        ages = torch.arange(length - 1, -1, -1, dtype=item_vecs.dtype)  # (L,) 0 = newest
        weights = (self.cfg.decay**ages).unsqueeze(0) * mask.to(item_vecs.dtype)  # (B, L)
        user = (weights.unsqueeze(-1) * item_vecs).sum(1)  # (B, D)
        return nn.functional.normalize(user, dim=-1)
