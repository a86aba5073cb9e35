"""Attention modules: MUFASA's sparse attention (NSA-style, three gated branches) and dense causal
attention (SASRec). Each module owns its incremental cache: one `forward(x, cache=None)` serves
training (no cache), filling users' caches from scratch (prefill), extending them by several
positions, and the one-click step of live serving.

The math lives in `sparse_attention_math`; these modules own the parameters: query/key/value/output
projections, the compression MLPs with intra-block position embeddings, and the per-head branch
gates (sigmoid of a linear map of the layer input). The cache (models/attention_cache.py) holds
many users' state, one slot each; a call says which slots its rows extend and from where. With a
cache, each new position's output equals what the full forward computes at that position (tests
check it with ragged lengths and the edge lengths around block boundaries), at the cost of the
new positions only: O(w + T/l + n l) per user for a one-click step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from streamrec.models.attention_cache import CachedCall, take_positions
from streamrec.models.sparse_attention_math import (
    NEG,
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

    def forward(self, x: torch.Tensor, cache: CachedCall | None = None, impl: str | None = None) -> torch.Tensor:
        """x: (B, T, D) -> (B, T, D); causal: position t depends on positions <= t only.

        With `cache`, x holds the new positions of the cache's slots (right-padded) and each
        output equals the full forward's at that position over the slot's whole window."""
        if cache is not None:
            if x.shape[1] == 1:
                return self._one_click(x, cache)
            if not cache.explain and not bool(cache.start.any()):
                return self._fill(x, cache, impl)
            return self._extend(x, cache)
        q, k, v = self._project(x)  # (B, H, T, dh)
        kc = compress_blocks(k, self.cfg.block, self.block_pos_k, self.compress_k)  # (B, H, nb, dh)
        vc = compress_blocks(v, self.cfg.block, self.block_pos_v, self.compress_v)
        return self.out(merge_heads(self._attend(x, q, k, v, kc, vc, impl)))

    def _attend(
        self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor,
        impl: str | None,
    ) -> torch.Tensor:  # fmt: skip
        """The three gated branches over whole sequences -> (B, H, T, dh)."""
        c = self.cfg
        choice = impl or c.impl
        if choice == "auto":
            choice = "reference" if x.shape[1] <= c.auto_threshold else "efficient"
        if choice == "reference":
            return nsa_reference(q, k, v, kc, vc, self._gates(x), c.layout)
        return nsa_efficient(q, k, v, kc, vc, self._gates(x), c.layout, c.chunk)

    def gate_values(self, x: torch.Tensor) -> torch.Tensor:
        """Branch gates (B, T, H, 3), for explanations and analysis."""
        return self._gates(x)

    # --- with a cache --------------------------------------------------------------------------

    def _select(self, cache: CachedCall, rows: torch.Tensor, q: torch.Tensor, t: torch.Tensor) -> None:
        """Blocks chosen for the query blocks starting at positions t (N,) of the slots of `rows`
        (N,), from their queries there q (N, H, dh): kept in the slots until the next block."""
        c, layer = self.cfg, cache.layer
        slots = cache.slots[rows]
        kc = layer.kc.index_select(0, slots).to(q.dtype)  # (N, H, NB, dh)
        pos = t[:, None]  # (N, 1): one query per row, each at its own position
        imp = block_importance(q[:, :, None], kc, pos, c.block)  # (N, 1, NB)
        idx, valid = select_blocks(imp, pos, c.block, c.num_selected, c.num_recent)  # (N, 1, n)
        layer.sel_idx[slots] = idx[:, 0]
        layer.sel_valid[slots] = valid[:, 0]

    def _fill(self, x: torch.Tensor, cache: CachedCall, impl: str | None) -> torch.Tensor:
        """Slots filled from scratch: the full forward over the padded windows, whose keys, values
        and summaries are kept, and the selection of each slot's current query block."""
        c, layer = self.cfg, cache.layer
        t_max = x.shape[1]
        q, k, v = self._project(x)  # (B, H, T, dh)
        kc = compress_blocks(k, c.block, self.block_pos_k, self.compress_k)  # (B, H, T // l, dh)
        vc = compress_blocks(v, c.block, self.block_pos_v, self.compress_v)
        layer.k[cache.slots, :, :t_max] = k.to(layer.k.dtype)
        layer.v[cache.slots, :, :t_max] = v.to(layer.v.dtype)
        nb = kc.shape[2]
        if nb:
            layer.kc[cache.slots, :, :nb] = kc.to(layer.kc.dtype)
            layer.vc[cache.slots, :, :nb] = vc.to(layer.vc.dtype)
        rows = torch.arange(len(cache.slots), device=x.device)
        start = ((cache.counts - 1) // c.block) * c.block  # each slot's current query block
        self._select(cache, rows, q[rows, :, start], start)
        cache.attended = None
        return self.out(merge_heads(self._attend(x, q, k, v, kc, vc, impl)))

    def _summarise_completed(self, cache: CachedCall, rows: torch.Tensor, ends: torch.Tensor) -> None:
        """Block summaries of the blocks that end at positions `ends` (N,) of the slots of `rows`."""
        c, layer = self.cfg, cache.layer
        slots = cache.slots[rows]
        pos = ends[:, None] - c.block + 1 + torch.arange(c.block, device=ends.device)  # (N, l)
        kb = take_positions(layer.k, slots, pos).to(self.block_pos_k.dtype)  # (N, H, l, dh)
        vb = take_positions(layer.v, slots, pos).to(self.block_pos_v.dtype)
        j = (ends + 1) // c.block - 1
        kc = compress_blocks(kb, c.block, self.block_pos_k, self.compress_k)[:, :, 0]  # (N, H, dh)
        vc = compress_blocks(vb, c.block, self.block_pos_v, self.compress_v)[:, :, 0]
        layer.kc[slots, :, j] = kc.to(layer.kc.dtype)
        layer.vc[slots, :, j] = vc.to(layer.vc.dtype)

    def _one_click(self, x: torch.Tensor, cache: CachedCall) -> torch.Tensor:
        """One new position per slot, x (B, 1, D): the serving step."""
        c, layer, slots = self.cfg, cache.layer, cache.slots
        t = cache.start  # (B,) position of the new item
        q, k_new, v_new = self._project(x)  # (B, H, 1, dh)
        layer.k[slots, :, t] = k_new[:, :, 0].to(layer.k.dtype)
        layer.v[slots, :, t] = v_new[:, :, 0].to(layer.v.dtype)
        done = (t + 1) % c.block == 0  # the new item completes a block: summarise it once
        if done.any():
            rows = done.nonzero()[:, 0]
            self._summarise_completed(cache, rows, t[rows])
        starts = t % c.block == 0  # first position of a query block: choose its blocks once
        if starts.any():
            rows = starts.nonzero()[:, 0]
            self._select(cache, rows, q[rows, :, 0], t[rows])
        kc = layer.kc.index_select(0, slots).to(q.dtype)  # (B, H, NB, dh)
        vc = layer.vc.index_select(0, slots).to(q.dtype)
        cmp_ok = torch.arange(kc.shape[2], device=t.device)[None] < ((t + 1) // c.block)[:, None]  # (B, NB)
        o_cmp = masked_softmax_attention(q, kc, vc, cmp_ok[:, None, None])  # (B, H, 1, dh)
        # The selected and window branches in one pass: their positions side by side, one gather
        # of keys and of values, one score product, a softmax per branch (each normalises on its
        # own, as in the reference), the gates folded into the weights, one product with the
        # values. Separate branches cost twice the small kernels, which is most of what a
        # one-click step of a short window pays.
        ar_l = torch.arange(c.block, device=t.device)
        idx, valid = layer.sel_idx[slots], layer.sel_valid[slots]  # (B, n)
        sel_pos = (idx[:, :, None] * c.block + ar_l).reshape(len(t), -1)  # (B, n l)
        sel_ok = (sel_pos <= t[:, None]) & valid.repeat_interleave(c.block, dim=1)
        sel_pos = torch.minimum(sel_pos, t[:, None])
        win_pos = t[:, None] - c.window + 1 + torch.arange(c.window, device=t.device)  # (B, w)
        win_ok = win_pos >= 0
        win_pos = win_pos.clamp(min=0)
        positions = torch.cat([sel_pos, win_pos], 1)  # (B, n l + w)
        ok = torch.cat([sel_ok, win_ok], 1)[:, None, None]  # (B, 1, 1, n l + w)
        keys = take_positions(layer.k, slots, positions).to(q.dtype)  # (B, H, n l + w, dh)
        values = take_positions(layer.v, slots, positions).to(q.dtype)
        scores = ((q @ keys.transpose(-1, -2)) / math.sqrt(q.shape[-1])).masked_fill(~ok, NEG)  # (B, H, 1, S)
        g = self._gates(x).permute(0, 2, 1, 3)  # (B, H, 1, 3)
        n_sel = sel_pos.shape[1]
        p_sel = torch.softmax(scores[..., :n_sel], -1) * g[..., 1:2]
        p_win = torch.softmax(scores[..., n_sel:], -1) * g[..., 2:3]
        weights = torch.cat([p_sel, p_win], -1) * ok
        o = (weights @ values).addcmul_(g[..., 0:1], o_cmp)  # (B, H, 1, dh)
        # Attention mass per attended position (for explanations): gate-weighted, summed over heads.
        cache.attended = (positions, weights.sum((1, 2)), g[:, :, 0].mean(1))
        return self.out(merge_heads(o))

    def _extend(self, x: torch.Tensor, cache: CachedCall) -> torch.Tensor:
        """Several new positions per slot, x (B, P, D) right-padded: the new queries attend to the
        cached window under the reference masks, O(P T) per slot instead of P one-click steps."""
        c, layer, slots = self.cfg, cache.layer, cache.slots
        b, p, _ = x.shape
        dev = x.device
        t0, total = cache.start, cache.start + cache.counts
        pos = cache.positions(p)  # (B, P)
        new = cache.new(p)
        t_max = int(total.max())
        key_pos = torch.arange(t_max, device=dev)
        causal = key_pos[None, None] <= pos[:, :, None]  # (B, P, T)
        rows = torch.arange(b, device=dev)
        last = cache.counts - 1
        q, k_new, v_new = self._project(x)  # (B, H, P, dh)
        w_rows = slots[:, None].expand(b, p)[new]  # (N,) cache writes of the real queries only
        layer.k[w_rows, :, pos[new]] = k_new.permute(0, 2, 1, 3)[new].to(layer.k.dtype)
        layer.v[w_rows, :, pos[new]] = v_new.permute(0, 2, 1, 3)[new].to(layer.v.dtype)
        ks = take_positions(layer.k, slots, key_pos.expand(b, -1)).to(q.dtype)  # (B, H, T, dh)
        vs = take_positions(layer.v, slots, key_pos.expand(b, -1)).to(q.dtype)
        # Summaries of the blocks these new positions complete, once each (older ones are in the
        # cache; a block still incomplete is masked below and summarised when it completes).
        done = new & ((pos + 1) % c.block == 0)  # (B, P)
        if done.any():
            d_rows, d_cols = done.nonzero(as_tuple=True)
            self._summarise_completed(cache, d_rows, pos[d_rows, d_cols])
        kc = layer.kc.index_select(0, slots).to(q.dtype)  # (B, H, NB, dh)
        vc = layer.vc.index_select(0, slots).to(q.dtype)
        n_cap, h, dh = kc.shape[2], q.shape[1], q.shape[3]
        # Selection per new query: its query block's choice, made at the block's first position
        # (a new query there, or the choice the slot already holds for the block in progress).
        start = (pos // c.block) * c.block  # (B, P)
        fresh = start >= t0[:, None]
        q_start = q.permute(0, 2, 1, 3)[rows[:, None], (start - t0[:, None]).clamp(min=0)]  # (B, P, H, dh)
        kc_rep = kc[:, None].expand(b, p, h, n_cap, dh).reshape(b * p, h, n_cap, dh)
        flat_start = start.reshape(-1, 1)  # (B P, 1)
        imp = block_importance(q_start.reshape(b * p, h, 1, dh), kc_rep, flat_start, c.block)
        idx, valid = select_blocks(imp, flat_start, c.block, c.num_selected, c.num_recent)  # (B P, 1, n)
        idx, valid = idx.view(b, p, -1), valid.view(b, p, -1)
        idx = torch.where(fresh[..., None], idx, layer.sel_idx[slots][:, None])
        valid = torch.where(fresh[..., None], valid, layer.sel_valid[slots][:, None])
        layer.sel_idx[slots] = idx[rows, last]
        layer.sel_valid[slots] = valid[rows, last]
        n_all = t_max // c.block + 1
        chosen = torch.zeros(b, p, n_all + 1, dtype=torch.bool, device=dev)
        chosen.scatter_(2, torch.where(valid, idx, n_all), True)  # invalid slots go to a spare column
        sel_mask = chosen[:, :, key_pos // c.block] & causal  # (B, P, T)
        diff = pos[:, :, None] - key_pos[None, None]
        win_mask = (diff >= 0) & (diff < c.window)
        ends = (torch.arange(n_cap, device=dev) + 1) * c.block - 1
        cmp_mask = ends[None, None] <= pos[:, :, None]  # (B, P, NB)
        o_cmp = masked_softmax_attention(q, kc, vc, cmp_mask[:, None])
        # The selected and window branches read the same keys: one score product, a softmax per
        # branch (each normalises on its own), the gates folded into the weights, one product
        # with the values.
        scores = (q @ ks.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, P, T)
        sel_ok, win_ok = sel_mask[:, None], win_mask[:, None]
        g = self._gates(x).permute(0, 2, 1, 3)  # (B, H, P, 3)
        p_sel = torch.softmax(scores.masked_fill(~sel_ok, NEG), -1) * sel_ok * g[..., 1:2]
        p_win = torch.softmax(scores.masked_fill(~win_ok, NEG), -1) * win_ok * g[..., 2:3]
        weights = p_sel + p_win
        o = (weights @ vs).addcmul_(g[..., 0:1], o_cmp)  # (B, H, P, dh)
        g_last = g[rows, :, last]  # (B, H, 3)
        mass = weights[rows, :, last].sum(1)  # (B, T)
        cache.attended = (key_pos.expand(b, -1), mass, g_last.mean(1))
        return self.out(merge_heads(o))


class DenseCausalAttention(nn.Module):
    """Standard causal multi-head attention (SASRec), through PyTorch's fused SDPA."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        assert dim % heads == 0, "dim must be divisible by heads"
        self.dim, self.heads = dim, heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cache: CachedCall | None = None, impl: str | None = None) -> torch.Tensor:
        """x: (B, T, D) -> (B, T, D); with `cache`, as `SparseAttention.forward`."""
        q, k, v = (split_heads(p, self.heads) for p in self.qkv(x).chunk(3, dim=-1))  # (B, H, T, dh)
        if cache is None or (x.shape[1] > 1 and not cache.explain and not bool(cache.start.any())):
            if cache is not None:  # slots filled from scratch
                cache.layer.k[cache.slots, :, : x.shape[1]] = k.to(cache.layer.k.dtype)
                cache.layer.v[cache.slots, :, : x.shape[1]] = v.to(cache.layer.v.dtype)
                cache.attended = None
            return self.out(merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True)))
        layer, slots = cache.layer, cache.slots
        b, p = x.shape[:2]
        pos = cache.positions(p)  # (B, P)
        new = cache.new(p)
        w_rows = slots[:, None].expand(b, p)[new]
        layer.k[w_rows, :, pos[new]] = k.permute(0, 2, 1, 3)[new].to(layer.k.dtype)
        layer.v[w_rows, :, pos[new]] = v.permute(0, 2, 1, 3)[new].to(layer.v.dtype)
        t_max = int((cache.start + cache.counts).max())
        key_pos = torch.arange(t_max, device=x.device).expand(b, -1)  # (B, T)
        ks = take_positions(layer.k, slots, key_pos).to(q.dtype)  # (B, H, T, dh)
        vs = take_positions(layer.v, slots, key_pos).to(q.dtype)
        causal = key_pos[:, None] <= pos[:, :, None]  # (B, P, T)
        o, w = attention_with_weights(q, ks, vs, causal[:, None])
        rows = torch.arange(b, device=x.device)
        mass = w[rows, :, cache.counts - 1].sum(1)  # (B, T)
        cache.attended = (key_pos, mass, torch.zeros(b, 3, device=x.device))
        return self.out(merge_heads(o))


def attention_with_weights(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`masked_softmax_attention` that also returns the weights (B, H, P, S), for explanations."""
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    weights = torch.softmax(scores.masked_fill(~mask, NEG), dim=-1) * mask
    return weights @ v, weights
