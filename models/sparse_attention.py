"""Attention modules: MUFASA's sparse attention (NSA-style, three gated branches) and dense causal
attention (SASRec), with an incremental step for serving.

The math lives in `sparse_attention_math`; these modules own the parameters: query/key/value/output
projections, the compression MLPs with intra-block position embeddings, and the per-head branch
gates (sigmoid of a linear map of the layer input).

`step` appends one position to a cache and returns that position's output. It computes exactly
what the full forward computes at that position, at cost O(window + T/block + n block) instead of
a re-encode of the whole history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from streamrec.models.sparse_attention_math import (
    BlockLayout,
    block_importance,
    compress_blocks,
    masked_softmax_attention,
    nsa_efficient,
    nsa_reference,
    select_blocks,
)

BRANCHES = ("cmp", "sel", "win")


@dataclass(frozen=True)
class SparseAttentionConfig:
    """NSA's LLM settings are block 32, stride 16, selection block 64, 16 blocks, window 512; item
    sequences are far shorter, so the defaults here are smaller (see docs/models.md)."""

    block: int = 16  # compression and selection block length l (stride = l)
    num_selected: int = 4  # n blocks attended token by token, forced ones included
    num_recent: int = 1  # complete blocks before the query's own that are always selected
    window: int = 32  # sliding window w
    branches: tuple[str, ...] = BRANCHES  # ablation: any subset of ("cmp", "sel", "win")
    # "efficient", "reference" (identical results, different cost) or "auto": the reference up to
    # `auto_threshold` items, where dense masked attention is cheaper than gathering blocks
    # (crossover measured near 100 items for training batches; docs/models.md).
    impl: str = "auto"
    auto_threshold: int = 96
    chunk: int = 512  # queries per chunk in the efficient selection branch

    def __post_init__(self) -> None:
        assert self.block >= 1 and self.window >= 1 and self.num_selected >= 1, "sizes must be positive"
        assert self.num_recent + 1 <= self.num_selected, "forced blocks must fit in num_selected"
        assert set(self.branches) <= set(BRANCHES) and self.branches, f"branches must be a subset of {BRANCHES}"
        assert self.impl in ("efficient", "reference", "auto"), "impl is 'efficient', 'reference' or 'auto'"

    @property
    def layout(self) -> BlockLayout:
        return BlockLayout(self.block, self.num_selected, self.num_recent, self.window)


@dataclass
class KVStore:
    """Capacity buffers behind a cache's keys and values, shared by the caches that view them.

    `used` counts the positions written; only a cache whose length equals it may append in place,
    so an older cache (a prefix view) is never overwritten behind its back."""

    k: torch.Tensor  # (B, H, capacity, dh)
    v: torch.Tensor  # (B, H, capacity, dh)
    used: int


@dataclass
class AttentionCache:
    """Per-layer serving state: keys/values of every position and the compressed block summaries."""

    k: torch.Tensor  # (B, H, t, dh)
    v: torch.Tensor  # (B, H, t, dh)
    kc: torch.Tensor  # (B, H, t // block, dh)
    vc: torch.Tensor  # (B, H, t // block, dh)
    extra: dict = field(default_factory=dict)

    @property
    def length(self) -> int:
        return self.k.shape[2]

    def append_kv(self, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, KVStore | None]:
        """Keys and values with one position appended: (B, H, t + 1, dh) each, and their store.

        Without autograd the position is written into a capacity buffer that doubles when full, so
        a step costs O(1) amortised instead of copying the whole history (16 MB per layer at 8,192
        positions, batch 8: more than the sparse attention itself). With autograd, or when this
        cache is not the store's newest view, it falls back to a copy."""
        t = self.length
        store: KVStore | None = self.extra.get("kv")
        if torch.is_grad_enabled() and (k_new.requires_grad or v_new.requires_grad or self.k.requires_grad):
            return torch.cat([self.k, k_new], dim=2), torch.cat([self.v, v_new], dim=2), None
        owns_tail = (
            store is not None
            and store.used == t
            and store.k.shape[2] > t
            and store.k.dtype == k_new.dtype
            and self.k.data_ptr() == store.k.data_ptr()
        )
        if not owns_tail:
            b, h, _, dh = k_new.shape
            cap = max(16, 2 * (t + 1))
            store = KVStore(k_new.new_empty(b, h, cap, dh), v_new.new_empty(b, h, cap, dh), t)
            store.k[:, :, :t] = self.k
            store.v[:, :, :t] = self.v
        assert store is not None
        store.k[:, :, t : t + 1] = k_new
        store.v[:, :, t : t + 1] = v_new
        store.used = t + 1
        return store.k[:, :, : t + 1], store.v[:, :, : t + 1], store


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)  # (B, H, T, dh)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, h * dh)  # (B, T, D)


class SparseAttention(nn.Module):
    """Causal three-branch sparse attention over a sequence of item representations."""

    def __init__(self, dim: int, heads: int, cfg: SparseAttentionConfig) -> None:
        super().__init__()
        assert dim % heads == 0, "dim must be divisible by heads"
        self.dim, self.heads, self.cfg = dim, heads, cfg
        dh = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.block_pos_k = nn.Parameter(torch.randn(cfg.block, dh) * 0.02)
        self.block_pos_v = nn.Parameter(torch.randn(cfg.block, dh) * 0.02)
        self.compress_k = nn.Sequential(nn.Linear(cfg.block * dh, 2 * dh), nn.GELU(), nn.Linear(2 * dh, dh))
        self.compress_v = nn.Sequential(nn.Linear(cfg.block * dh, 2 * dh), nn.GELU(), nn.Linear(2 * dh, dh))
        self.gate = nn.Linear(dim, heads * 3)
        self.register_buffer("branch_on", torch.tensor([b in cfg.branches for b in BRANCHES], dtype=torch.float32))

    def _gates(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, D) -> (B, T, H, 3), disabled branches fixed at 0."""
        g = torch.sigmoid(self.gate(x)).view(*x.shape[:2], self.heads, 3)
        return g * self.branch_on

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return split_heads(q, self.heads), split_heads(k, self.heads), split_heads(v, self.heads)

    def forward(self, x: torch.Tensor, impl: str | None = None) -> torch.Tensor:
        """x: (B, T, D) -> (B, T, D); causal: position t depends on positions <= t only."""
        q, k, v = self._project(x)  # (B, H, T, dh)
        kc = compress_blocks(k, self.cfg.block, self.block_pos_k, self.compress_k)  # (B, H, nb, dh)
        vc = compress_blocks(v, self.cfg.block, self.block_pos_v, self.compress_v)
        c = self.cfg
        choice = impl or c.impl
        if choice == "auto":
            choice = "reference" if x.shape[1] <= c.auto_threshold else "efficient"
        if choice == "reference":
            o = nsa_reference(q, k, v, kc, vc, self._gates(x), c.layout)
        else:
            o = nsa_efficient(q, k, v, kc, vc, self._gates(x), c.layout, c.chunk)
        return self.out(merge_heads(o))

    def gate_values(self, x: torch.Tensor) -> torch.Tensor:
        """Branch gates (B, T, H, 3), for explanations and analysis."""
        return self._gates(x)

    def empty_cache(self, batch: int, device: torch.device | None = None) -> AttentionCache:
        dh = self.dim // self.heads
        z = torch.zeros(batch, self.heads, 0, dh, device=device)
        return AttentionCache(z, z.clone(), z.clone(), z.clone())

    def step(self, x_t: torch.Tensor, cache: AttentionCache) -> tuple[torch.Tensor, AttentionCache]:
        """x_t: (B, 1, D), the next position's layer input -> its output (B, 1, D) and the new cache."""
        c = self.cfg
        q, k_new, v_new = self._project(x_t)  # (B, H, 1, dh)
        k, v, store = cache.append_kv(k_new, v_new)  # (B, H, t + 1, dh)
        t = k.shape[2] - 1  # position of the new item
        kc, vc = cache.kc, cache.vc
        if (t + 1) % c.block == 0:  # the new item completes a block: summarise it once
            start = t + 1 - c.block
            kc = torch.cat([kc, compress_blocks(k[:, :, start:], c.block, self.block_pos_k, self.compress_k)], 2)
            vc = torch.cat([vc, compress_blocks(v[:, :, start:], c.block, self.block_pos_v, self.compress_v)], 2)
        all_on = torch.ones(1, kc.shape[2], dtype=torch.bool, device=x_t.device)
        o_cmp = masked_softmax_attention(q, kc, vc, all_on)  # every cached block is complete
        if t % c.block == 0:  # first position of a block: choose the block's selection once
            pos = torch.tensor([t], device=x_t.device)
            imp = block_importance(q, kc, pos, c.block)
            idx, valid = select_blocks(imp, pos, c.block, c.num_selected, c.num_recent)  # (B, 1, n)
        else:
            idx, valid = cache.extra["sel_idx"], cache.extra["sel_valid"]
        # Gather only the selected blocks' tokens.
        key_pos = (idx[..., None] * c.block + torch.arange(c.block, device=x_t.device)).reshape(idx.shape[0], -1)
        ok = (key_pos <= t) & valid.repeat_interleave(c.block, dim=-1)[:, 0]  # (B, n l)
        safe = key_pos.clamp(max=t)
        gather = safe[:, None, :, None].expand(-1, self.heads, -1, k.shape[-1])
        o_sel = masked_softmax_attention(q, k.gather(2, gather), v.gather(2, gather), ok[:, None, None, :])
        lo = max(0, t + 1 - c.window)
        win_on = torch.ones(1, t + 1 - lo, dtype=torch.bool, device=x_t.device)
        o_win = masked_softmax_attention(q, k[:, :, lo:], v[:, :, lo:], win_on)
        g = self._gates(x_t).permute(0, 2, 1, 3)  # (B, H, 1, 3)
        o = g[..., 0:1] * o_cmp + g[..., 1:2] * o_sel + g[..., 2:3] * o_win
        extra = {"sel_idx": idx, "sel_valid": valid, "kv": store}
        return self.out(merge_heads(o)), AttentionCache(k, v, kc, vc, extra)


class DenseCausalAttention(nn.Module):
    """Standard causal multi-head attention (SASRec), through PyTorch's fused SDPA."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        assert dim % heads == 0, "dim must be divisible by heads"
        self.dim, self.heads = dim, heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, impl: str | None = None) -> torch.Tensor:
        """x: (B, T, D) -> (B, T, D)."""
        q, k, v = (split_heads(p, self.heads) for p in self.qkv(x).chunk(3, dim=-1))
        return self.out(merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True)))

    def empty_cache(self, batch: int, device: torch.device | None = None) -> AttentionCache:
        dh = self.dim // self.heads
        z = torch.zeros(batch, self.heads, 0, dh, device=device)
        return AttentionCache(z, z.clone(), z.clone(), z.clone())

    def step(self, x_t: torch.Tensor, cache: AttentionCache) -> tuple[torch.Tensor, AttentionCache]:
        q, k_new, v_new = (split_heads(p, self.heads) for p in self.qkv(x_t).chunk(3, dim=-1))
        k, v, store = cache.append_kv(k_new, v_new)  # (B, H, t + 1, dh)
        o = F.softmax((q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]), dim=-1) @ v
        return self.out(merge_heads(o)), AttentionCache(k, v, cache.kc, cache.vc, {"kv": store})
