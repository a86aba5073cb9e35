"""Batched incremental encoding for live serving: many users' next clicks encoded in one pass.

Serves MUFASA's Sparse Attention-guided Alignment Layer (and SASRec's dense encoder) from cached
per-user state. Every user being served owns a *slot* of an arena of preallocated tensors; per
layer a slot holds the keys and values of every position of the user's encoder window (H, L, dh),
the compressed block summaries (H, L / l, dh) and, for sparse layers, the selection made at the
first position of the current query block. The arena lets one click of each of B users be
encoded together with a handful of batched gathers instead of B separate small steps:

    prefill(slots, items, lengths)  full forward over whole windows (after a restart or a miss)
    step(slots, items)              one new item per slot, cost O(w + T/l + n l) per user
    extend(slots, items, counts)    several new items per slot in one pass, O(P T) per user

Both return what `SequenceEncoder.forward` returns at the user's last position (tests check it,
with ragged lengths and the edge lengths around block boundaries). Everything is plain torch on
whichever device the encoder lives on (CUDA when present, CPU otherwise).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from streamrec.models.attention_cache import STATE_DTYPES, Int8Rows, state_tensor, take_positions
from streamrec.models.sequence_encoder import SequenceEncoder
from streamrec.models.sparse_attention import SparseAttention, merge_heads, split_heads
from streamrec.models.sparse_attention_math import FORCED, NEG, compress_blocks, masked_softmax_attention

LINEAR_DTYPES = ("float32", "int8")


@dataclass(frozen=True)
class LiveEncoderConfig:
    slots: int = 4096  # users whose state is kept; the least recently used is evicted past this
    # Storage type of cached keys, values and block summaries (reads compute in float32); "int8"
    # keeps each cached vector as int8 with its own float16 scale (`Int8Rows`).
    dtype: str = "float32"
    # "int8": the encoder's linear layers run with int8 weights and dynamically quantized int8
    # activations (torch's dynamic quantization, CPU only), on a copy of the encoder.
    linear_dtype: str = "float32"

    def __post_init__(self) -> None:
        assert self.dtype in STATE_DTYPES, f"state dtype {self.dtype!r} is not one of {STATE_DTYPES}"
        assert self.linear_dtype in LINEAR_DTYPES, f"linear dtype {self.linear_dtype!r} is not one of {LINEAR_DTYPES}"

    def bytes_per_vector(self, dh: int) -> float:
        """Bytes one cached vector of `dh` values occupies."""
        if self.dtype == "int8":
            return dh + 2  # int8 values and one float16 scale
        return dh * torch.finfo(getattr(torch, self.dtype)).bits // 8


def int8_linears(encoder: SequenceEncoder) -> SequenceEncoder:
    """A copy of `encoder` whose linear layers compute in int8 (dynamic quantization: int8
    weights, activations quantized per call). The block-compression MLPs stay in float32, because
    `compress_blocks` folds the intra-block positions into their first layer's weight."""
    assert encoder.pos.weight.device.type == "cpu", "torch's dynamic quantization runs on the CPU only"
    names = {n for n, m in encoder.named_modules() if isinstance(m, torch.nn.Linear) and "compress" not in n}
    with warnings.catch_warnings():
        # torch marks its quantized tensor types as deprecated in favour of torchao, which this
        # project does not depend on; the warning would land in every worker's log.
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(encoder), names, dtype=torch.qint8)


@dataclass
class StepExplanation:
    """Which cached positions the last layer attended to most, and its branch gates."""

    positions: torch.Tensor  # (B, k) positions in the encoder window, -1 = none
    weights: torch.Tensor  # (B, k) gate-weighted attention mass, summed over heads
    gates: torch.Tensor  # (B, 3) mean over heads of the (cmp, sel, win) gates; zeros for dense layers


class LiveEncoder:
    """Slot arena + batched prefill/step over a trained `SequenceEncoder` (kept in eval mode)."""

    def __init__(self, encoder: SequenceEncoder, cfg: LiveEncoderConfig | None = None) -> None:
        self.cfg = cfg or LiveEncoderConfig()
        self.encoder = (int8_linears(encoder) if self.cfg.linear_dtype == "int8" else encoder).eval()
        ec = encoder.cfg
        self.max_len, self.heads = ec.max_len, ec.heads
        self.dh = ec.dim // ec.heads
        self.sparse = ec.attention == "sparse"
        self.block = ec.sparse.block
        self.device = encoder.pos.weight.device
        s, h, length, dh = self.cfg.slots, self.heads, self.max_len, self.dh
        n_blocks = max(1, length // self.block)
        n_sel = ec.sparse.num_selected

        def caches(n: int) -> list[torch.Tensor | Int8Rows]:
            return [state_tensor((s, h, n, dh), self.cfg.dtype, self.device) for _ in range(ec.layers)]

        self.k, self.v = caches(length), caches(length)  # per layer (S, H, L, dh)
        self.kc, self.vc = caches(n_blocks), caches(n_blocks)  # per layer (S, H, L / l, dh)
        self.sel_idx = [torch.zeros(s, n_sel, dtype=torch.long, device=self.device) for _ in range(ec.layers)]
        self.sel_valid = [torch.zeros(s, n_sel, dtype=torch.bool, device=self.device) for _ in range(ec.layers)]
        self.length = torch.zeros(s, dtype=torch.long, device=self.device)

    # --- sizes -------------------------------------------------------------------------------

    def state_bytes(self, length: int) -> int:
        """Bytes of cached state a user with `length` positions occupies (keys, values, summaries)."""
        vector = self.cfg.bytes_per_vector(self.dh)
        vectors = 2 * self.heads * length
        extra = 0
        if self.sparse:
            vectors += 2 * self.heads * (length // self.block)
            extra = self.sel_idx[0].shape[1] * 9  # int64 index + bool per selected block
        return len(self.k) * (int(vectors * vector) + extra) + 8

    # --- selection ---------------------------------------------------------------------------

    def _choose(self, kc: torch.Tensor, q: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks chosen for query blocks starting at positions t (N,), from q (N, H, dh) and the
        summaries kc (N, H, NB, dh), as `select_blocks` does -> idx, valid (N, n)."""
        sp = self.encoder.cfg.sparse
        nb = kc.shape[2]
        blocks = torch.arange(nb + 1, device=q.device)
        complete = blocks[None, :nb] < (t // self.block)[:, None]  # (N, NB): ended before t
        scores = torch.einsum("bhd,bhnd->bhn", q, kc) / self.dh**0.5
        probs = torch.softmax(scores.masked_fill(~complete[:, None], NEG), -1) * complete[:, None]
        imp = torch.full((len(t), nb + 1), float("-inf"), device=q.device)
        imp[:, :nb] = torch.where(complete, probs.sum(1), torch.full_like(probs[:, 0], float("-inf")))
        current = (t // self.block)[:, None]
        forced = (blocks[None] <= current) & (blocks[None] >= current - sp.num_recent)
        imp = torch.where(forced, FORCED + blocks.to(imp.dtype)[None], imp)
        imp = imp.masked_fill(blocks[None] > current, float("-inf"))
        top, idx = imp.topk(sp.num_selected, dim=-1)
        return idx, torch.isfinite(top)

    def _select(self, layer: int, slots: torch.Tensor, q: torch.Tensor, t: torch.Tensor) -> None:
        """Selection for query blocks starting at positions t (B,), q (B, H, dh), kept in the slots."""
        idx, valid = self._choose(self.kc[layer].index_select(0, slots).to(q.dtype), q, t)
        self.sel_idx[layer][slots] = idx
        self.sel_valid[layer][slots] = valid

    # --- gathers -----------------------------------------------------------------------------

    def _gather(
        self, cache: torch.Tensor | Int8Rows, slots: torch.Tensor, pos: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        """cache (S, H, L, dh), slots (B,), pos (B, P) -> (B, H, P, dh)."""
        return take_positions(cache, slots, pos).to(dtype)

    def _attend_sparse(
        self, layer: int, attn: SparseAttention, slots: torch.Tensor, xn: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One sparse layer's attention for the new positions t (B,); xn (B, 1, D) normed input."""
        sp = attn.cfg
        q, k_new, v_new = attn._project(xn)  # (B, H, 1, dh)
        self.k[layer][slots, :, t] = k_new[:, :, 0].to(self.k[layer].dtype)
        self.v[layer][slots, :, t] = v_new[:, :, 0].to(self.v[layer].dtype)
        ar_l = torch.arange(self.block, device=t.device)
        done = (t + 1) % self.block == 0  # the new item completes a block: summarise it once
        if done.any():
            s_c, t_c = slots[done], t[done]
            pos = t_c[:, None] - self.block + 1 + ar_l  # (Bc, l)
            kb = self._gather(self.k[layer], s_c, pos, q.dtype)
            vb = self._gather(self.v[layer], s_c, pos, q.dtype)
            j = (t_c + 1) // self.block - 1
            kc = compress_blocks(kb, self.block, attn.block_pos_k, attn.compress_k)[:, :, 0]
            vc = compress_blocks(vb, self.block, attn.block_pos_v, attn.compress_v)[:, :, 0]
            self.kc[layer][s_c, :, j] = kc.to(self.kc[layer].dtype)
            self.vc[layer][s_c, :, j] = vc.to(self.vc[layer].dtype)
        starts = t % self.block == 0  # first position of a query block: choose its blocks once
        if starts.any():
            self._select(layer, slots[starts], q[starts, :, 0], t[starts])
        # The selected and window branches in one pass: their positions side by side, one gather
        # of keys and of values, one score product, a softmax per branch (each normalises on its
        # own, as in the reference), the gates folded into the weights, one product with the
        # values. Separate branches cost twice the small kernels, which is most of what a
        # one-click step of a short window pays.
        kc_all = self.kc[layer].index_select(0, slots).to(q.dtype)  # (B, H, NB, dh)
        vc_all = self.vc[layer].index_select(0, slots).to(q.dtype)
        cmp_ok = torch.arange(kc_all.shape[2], device=t.device)[None] < ((t + 1) // self.block)[:, None]
        o_cmp = masked_softmax_attention(q, kc_all, vc_all, cmp_ok[:, None, None])  # (B, H, 1, dh)
        idx, valid = self.sel_idx[layer][slots], self.sel_valid[layer][slots]  # (B, n)
        sel_pos = (idx[:, :, None] * self.block + ar_l).reshape(len(t), -1)  # (B, n l)
        sel_ok = (sel_pos <= t[:, None]) & valid.repeat_interleave(self.block, dim=1)
        sel_pos = torch.minimum(sel_pos, t[:, None])
        win_pos = t[:, None] - sp.window + 1 + torch.arange(sp.window, device=t.device)  # (B, w)
        win_ok = win_pos >= 0
        win_pos = win_pos.clamp(min=0)
        positions = torch.cat([sel_pos, win_pos], 1)  # (B, n l + w)
        ok = torch.cat([sel_ok, win_ok], 1)[:, None, None]  # (B, 1, 1, n l + w)
        keys = self._gather(self.k[layer], slots, positions, q.dtype)  # (B, H, n l + w, dh)
        values = self._gather(self.v[layer], slots, positions, q.dtype)
        scores = ((q @ keys.transpose(-1, -2)) / self.dh**0.5).masked_fill(~ok, NEG)  # (B, H, 1, n l + w)
        g = attn._gates(xn).permute(0, 2, 1, 3)  # (B, H, 1, 3)
        n_sel = sel_pos.shape[1]
        p_sel = torch.softmax(scores[..., :n_sel], -1) * g[..., 1:2]
        p_win = torch.softmax(scores[..., n_sel:], -1) * g[..., 2:3]
        weights = torch.cat([p_sel, p_win], -1) * ok
        o = (weights @ values).addcmul_(g[..., 0:1], o_cmp)  # (B, H, 1, dh)
        # Attention mass per attended position (for explanations): gate-weighted, summed over heads.
        mass = weights.sum((1, 2))  # (B, n l + w)
        gates = g[:, :, 0].mean(1)  # (B, 3)
        return attn.out(merge_heads(o)), torch.stack([positions.to(mass.dtype), mass], 0), gates

    def _attend_dense(
        self, layer: int, attn: torch.nn.Module, slots: torch.Tensor, xn: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k_new, v_new = (split_heads(p, self.heads) for p in attn.qkv(xn).chunk(3, dim=-1))
        self.k[layer][slots, :, t] = k_new[:, :, 0].to(self.k[layer].dtype)
        self.v[layer][slots, :, t] = v_new[:, :, 0].to(self.v[layer].dtype)
        upto = int(t.max()) + 1
        window = torch.arange(upto, device=t.device).expand(len(t), -1)  # (B, upto)
        ks = self._gather(self.k[layer], slots, window, q.dtype)  # (B, H, upto, dh)
        vs = self._gather(self.v[layer], slots, window, q.dtype)
        ok = torch.arange(upto, device=t.device)[None] <= t[:, None]  # (B, upto)
        o, p = _attention_with_weights(q, ks, vs, ok[:, None, None])
        positions = torch.arange(upto, device=t.device).expand(len(t), -1).to(p.dtype)
        mass = p.sum((1, 2))
        return attn.out(merge_heads(o)), torch.stack([positions, mass], 0), torch.zeros(len(t), 3, device=t.device)

    # --- public ------------------------------------------------------------------------------

    @torch.no_grad()
    def step(
        self, slots: torch.Tensor, items: torch.Tensor, explain_top: int = 0
    ) -> tuple[torch.Tensor, StepExplanation | None]:
        """slots (B,) distinct, items (B, D) the next item of each -> user vectors (B, D)."""
        assert slots.dim() == 1 and items.shape == (len(slots), self.encoder.cfg.dim), "one item per slot"
        assert len(torch.unique(slots)) == len(slots), "one new item per slot per step: split into rounds"
        t = self.length[slots]  # (B,) position of the new item
        assert int(t.max()) < self.max_len, f"a window is full (max_len {self.max_len}): prefill a shorter one"
        x = (items + self.encoder.pos.weight[t])[:, None]  # (B, 1, D)
        attended = gates = None
        for layer, block in enumerate(self.encoder.blocks):
            xn = block.norm1(x)
            attend = self._attend_sparse if self.sparse else self._attend_dense
            a, attended, gates = attend(layer, block.attn, slots, xn, t)
            x = x + a
            x = x + block.ffn(block.norm2(x))
        self.length[slots] = t + 1
        users = self.encoder.norm(x)[:, 0]
        explanation = None
        if explain_top > 0 and attended is not None:
            explanation = _top_positions(attended[0].long(), attended[1], explain_top, gates)
        return users, explanation

    @torch.no_grad()
    def extend(
        self, slots: torch.Tensor, items: torch.Tensor, counts: torch.Tensor, explain_top: int = 0
    ) -> tuple[torch.Tensor, StepExplanation | None]:
        """Several new items per slot in one pass: slots (B,) distinct, items (B, P, D) right-padded,
        counts (B,) in 1..P -> user vectors after each slot's last new item (B, D).

        Equals `counts[i]` calls of `step` (tests check it); the new queries attend to the cached
        window under the reference masks, so a batch costs O(P T) per user instead of P rounds."""
        b, p, d = items.shape
        assert slots.shape == counts.shape == (b,) and d == self.encoder.cfg.dim, "slots, items, counts disagree"
        assert len(torch.unique(slots)) == b, "each slot at most once per call"
        assert bool((counts >= 1).all()) and int(counts.max()) <= p, "counts must be in 1..P"
        dev = items.device
        t0 = self.length[slots]  # (B,) position of each slot's first new item
        total = t0 + counts
        assert int(total.max()) <= self.max_len, f"a window would exceed max_len {self.max_len}: prefill instead"
        ar_p = torch.arange(p, device=dev)
        new = ar_p[None] < counts[:, None]  # (B, P) real (not padding) queries
        pos = torch.minimum(t0[:, None] + ar_p, total[:, None] - 1)  # (B, P); padding repeats the last
        t_max = int(total.max())
        keys = torch.arange(t_max, device=dev)
        causal = keys[None, None] <= pos[:, :, None]  # (B, P, T)
        w_rows = slots[:, None].expand(b, p)[new]  # (N,) cache writes of the real queries only
        w_pos = pos[new]
        rows = torch.arange(b, device=dev)
        last = counts - 1
        x = items + self.encoder.pos.weight[pos]  # (B, P, D)
        mass = None
        gates = torch.zeros(b, 3, device=dev)
        for layer, block in enumerate(self.encoder.blocks):
            xn = block.norm1(x)
            attn = block.attn
            q, k_new, v_new = (split_heads(t, self.heads) for t in attn.qkv(xn).chunk(3, dim=-1))  # (B, H, P, dh)
            self.k[layer][w_rows, :, w_pos] = k_new.permute(0, 2, 1, 3)[new].to(self.k[layer].dtype)
            self.v[layer][w_rows, :, w_pos] = v_new.permute(0, 2, 1, 3)[new].to(self.v[layer].dtype)
            ks = self._gather(self.k[layer], slots, keys.expand(b, -1), q.dtype)  # (B, H, T, dh)
            vs = self._gather(self.v[layer], slots, keys.expand(b, -1), q.dtype)
            if not self.sparse:
                o, w = _attention_with_weights(q, ks, vs, causal[:, None])
                x = x + attn.out(merge_heads(o))
                mass = w[rows, :, last].sum(1)  # (B, T)
            else:
                o, mass, gates = self._extend_sparse(layer, attn, slots, xn, q, ks, vs, pos, t0, total, causal)
                x = x + attn.out(merge_heads(o))
            x = x + block.ffn(block.norm2(x))
        self.length[slots] = total
        users = self.encoder.norm(x)[rows, last]
        explanation = None
        if explain_top > 0 and mass is not None:
            positions = keys.expand(b, -1)
            explanation = _top_positions(positions, mass, explain_top, gates)
        return users, explanation

    def _extend_sparse(
        self,
        layer: int,
        attn: SparseAttention,
        slots: torch.Tensor,
        xn: torch.Tensor,
        q: torch.Tensor,
        ks: torch.Tensor,
        vs: torch.Tensor,
        pos: torch.Tensor,
        t0: torch.Tensor,
        total: torch.Tensor,
        causal: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sparse attention of the new queries q (B, H, P, dh) at positions pos (B, P) against the
        slots' windows ks/vs (B, H, T, dh) -> output (B, H, P, dh), last query's mass (B, T), gates (B, 3)."""
        sp = attn.cfg
        b, h, p, dh = q.shape
        t_max = ks.shape[2]
        dev = q.device
        rows = torch.arange(b, device=dev)
        last = total - t0 - 1
        nb = t_max // self.block
        if nb:
            # Summaries of every complete block (re-deriving old ones gives the same values);
            # blocks still incomplete for a slot are masked below and rewritten once complete.
            kc = compress_blocks(ks, self.block, attn.block_pos_k, attn.compress_k)
            vc = compress_blocks(vs, self.block, attn.block_pos_v, attn.compress_v)
            self.kc[layer][slots, :, :nb] = kc.to(self.kc[layer].dtype)
            self.vc[layer][slots, :, :nb] = vc.to(self.vc[layer].dtype)
        kc_all = self.kc[layer].index_select(0, slots).to(q.dtype)  # (B, H, NB, dh)
        vc_all = self.vc[layer].index_select(0, slots).to(q.dtype)
        n_cap = kc_all.shape[2]
        # Selection per new query: its query block's choice, made at the block's first position
        # (a new query there, or the choice the slot already holds for the block in progress).
        start = (pos // self.block) * self.block  # (B, P)
        fresh = start >= t0[:, None]
        q_start = q.permute(0, 2, 1, 3)[rows[:, None], (start - t0[:, None]).clamp(min=0)]  # (B, P, H, dh)
        kc_rep = kc_all[:, None].expand(b, p, h, n_cap, dh).reshape(b * p, h, n_cap, dh)
        idx, valid = self._choose(kc_rep, q_start.reshape(b * p, h, dh), start.reshape(-1))
        idx, valid = idx.view(b, p, -1), valid.view(b, p, -1)
        held_idx, held_valid = self.sel_idx[layer][slots], self.sel_valid[layer][slots]  # (B, n)
        idx = torch.where(fresh[..., None], idx, held_idx[:, None])
        valid = torch.where(fresh[..., None], valid, held_valid[:, None])
        self.sel_idx[layer][slots] = idx[rows, last]
        self.sel_valid[layer][slots] = valid[rows, last]
        n_all = t_max // self.block + 1
        chosen = torch.zeros(b, p, n_all + 1, dtype=torch.bool, device=dev)
        chosen.scatter_(2, torch.where(valid, idx, n_all), True)  # invalid slots go to a spare column
        key_block = torch.arange(t_max, device=dev) // self.block
        sel_mask = chosen[:, :, key_block] & causal  # (B, P, T)
        diff = pos[:, :, None] - torch.arange(t_max, device=dev)[None, None]
        win_mask = (diff >= 0) & (diff < sp.window)
        ends = (torch.arange(n_cap, device=dev) + 1) * self.block - 1
        cmp_mask = ends[None, None] <= pos[:, :, None]  # (B, P, NB)
        o_cmp = masked_softmax_attention(q, kc_all, vc_all, cmp_mask[:, None])
        o_sel, p_sel = _attention_with_weights(q, ks, vs, sel_mask[:, None])
        o_win, p_win = _attention_with_weights(q, ks, vs, win_mask[:, None])
        g = attn._gates(xn).permute(0, 2, 1, 3)  # (B, H, P, 3)
        o = g[..., 0:1] * o_cmp + g[..., 1:2] * o_sel + g[..., 2:3] * o_win
        g_last = g[rows, :, last]  # (B, H, 3)
        mass = (g_last[..., 1:2] * p_sel[rows, :, last]).sum(1) + (g_last[..., 2:3] * p_win[rows, :, last]).sum(1)
        return o, mass, g_last.mean(1)

    @torch.no_grad()
    def prefill(self, slots: torch.Tensor, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """slots (B,), items (B, T, D) right-padded windows, lengths (B,) >= 1 -> user vectors (B, D).

        Replaces whatever the slots held."""
        b, t_max, _ = items.shape
        assert t_max <= self.max_len, f"window {t_max} exceeds max_len {self.max_len}"
        assert (lengths >= 1).all() and int(lengths.max()) <= t_max, "lengths must be within the padded windows"
        enc = self.encoder
        x = items + enc.pos.weight[:t_max]
        last = lengths - 1
        rows = torch.arange(b, device=items.device)
        for layer, block in enumerate(enc.blocks):
            xn = block.norm1(x)
            q, k, v = (split_heads(p, self.heads) for p in block.attn.qkv(xn).chunk(3, dim=-1))
            self.k[layer][slots, :, :t_max] = k.to(self.k[layer].dtype)
            self.v[layer][slots, :, :t_max] = v.to(self.v[layer].dtype)
            if self.sparse:
                attn = block.attn
                nb = t_max // self.block
                if nb:
                    kc = compress_blocks(k, self.block, attn.block_pos_k, attn.compress_k)
                    vc = compress_blocks(v, self.block, attn.block_pos_v, attn.compress_v)
                    self.kc[layer][slots, :, :nb] = kc.to(self.kc[layer].dtype)
                    self.vc[layer][slots, :, :nb] = vc.to(self.vc[layer].dtype)
                qstart = (last // self.block) * self.block  # the current query block's first position
                self._select(layer, slots, q[rows, :, qstart], qstart)
            x = block(x)
        self.length[slots] = lengths
        return enc.norm(x)[rows, last]


def _attention_with_weights(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`masked_softmax_attention` that also returns the weights (B, H, P, S)."""
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    weights = torch.softmax(scores.masked_fill(~mask, NEG), dim=-1) * mask
    return weights @ v, weights


def _top_positions(positions: torch.Tensor, mass: torch.Tensor, top: int, gates: torch.Tensor) -> StepExplanation:
    """Sum the mass of repeated positions (a position can be both selected and in the window)."""
    b, p = positions.shape
    span = int(positions.max()) + 1 if p else 1
    per_pos = torch.zeros(b, span, device=mass.device).scatter_add_(1, positions.clamp(min=0), mass)
    k = min(top, span)
    w, idx = per_pos.topk(k, dim=1)
    idx = torch.where(w > 0, idx, torch.full_like(idx, -1))
    if k < top:
        idx = F.pad(idx, (0, top - k), value=-1)
        w = F.pad(w, (0, top - k))
    return StepExplanation(idx, w, gates)


def window_start(total: int, max_len: int) -> int:
    """Where a user's encoder window starts, in absolute click positions (serving's choice).

    Histories up to `max_len` are encoded whole, as in training. Longer ones use a hopping window:
    it starts at a multiple of `max_len // 2` and keeps between `max_len // 2 + 1` and `max_len`
    items, so the incremental state is rebuilt once every `max_len // 2` clicks instead of on
    every click (positions are absolute from the window start). See docs/models.md."""
    assert total >= 0 and max_len >= 1, "total and max_len must be non-negative / positive"
    if total <= max_len:
        return 0
    hop = max(1, max_len // 2)
    return -(-(total - max_len) // hop) * hop
