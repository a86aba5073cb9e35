"""Sparse attention math after Native Sparse Attention (NSA, arXiv 2502.11089), as plain functions.

MUFASA's Sparse Attention-guided Alignment Layer mixes three causal branches per head:
  * compressed (cmp): attention over one summary key/value per complete block of `block` items;
  * selected (sel): token attention inside the top-n blocks ranked by the compressed-attention
    probabilities (summed over heads), the block holding the query and the `num_recent` blocks
    before it always included. The choice is made once per query block, from the block's first
    query, and shared by the block's queries;
  * window (win): token attention over the latest `window` items.
Outputs are mixed by per-head gates in [0, 1]: o = g_cmp o_cmp + g_sel o_sel + g_win o_win.

Two implementations share one signature and must agree on outputs and gradients:
  * `nsa_reference`: dense attention under the equivalent boolean masks, O(T^2);
  * `nsa_efficient`: computes only what each query attends to, O(T (w + T/l + n l)).

Choices where NSA leaves room (see docs/models.md): compression and selection share one block
partition (stride = block length); selection is shared by all heads of a layer (NSA shares it
within a GQA group) and by all queries of a block (decided at the block's first position, so it
stays causal while the block's queries can share one gather of keys: on a CPU that gather is what
costs); a query with nothing to attend to in a branch gets zeros from that branch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

NEG = -1e30  # finite "minus infinity": masked rows stay NaN-free in forward and backward
FORCED = 1e6  # importance given to always-selected blocks (plus the block index, to break ties)


@dataclass(frozen=True)
class BlockLayout:
    """What each branch sees: block length l, blocks selected per query block (forced ones
    included), complete blocks before the query's own always selected, and the window w."""

    block: int
    num_selected: int
    num_recent: int
    window: int


def masked_softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """q: (..., Tq, dh), k/v: (..., S, dh), mask: broadcastable to (..., Tq, S) -> (..., Tq, dh).

    Rows whose mask is all false return zeros."""
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (..., Tq, S)
    scores = scores.masked_fill(~mask, NEG)
    weights = torch.softmax(scores, dim=-1) * mask  # exact zeros where masked, also in all-masked rows
    return weights @ v


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Same as `masked_softmax_attention` through PyTorch's fused kernel, for masks in which every
    query row allows at least one key (the fused kernel returns NaN on empty rows).

    The mask is given four dimensions because PyTorch's CPU dispatcher sends 2-d and 3-d masks to
    the unfused math kernel (4-5x slower here at T = 8,192); a leading 1 broadcasts the same way."""
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def causal_mask(t: int, device: torch.device | None = None) -> torch.Tensor:
    idx = torch.arange(t, device=device)
    return idx[None, :] <= idx[:, None]  # (T, T)


def window_mask(t: int, window: int, device: torch.device | None = None) -> torch.Tensor:
    """(T, T): query i sees keys i - window < j <= i."""
    idx = torch.arange(t, device=device)
    diff = idx[:, None] - idx[None, :]
    return (diff >= 0) & (diff < window)


def compressed_mask(pos: torch.Tensor, n_blocks: int, block: int) -> torch.Tensor:
    """pos (Tq,) or (B, Tq) -> (Tq, nb) or (B, Tq, nb): the query at position p sees block j once
    the block is complete, (j+1)l-1 <= p."""
    ends = (torch.arange(n_blocks, device=pos.device) + 1) * block - 1
    return ends <= pos[..., None]


def compress_blocks(x: torch.Tensor, block: int, pos_emb: torch.Tensor, mlp: torch.nn.Sequential) -> torch.Tensor:
    """x: (B, H, T, dh) -> (B, H, T // block, dh): an MLP over each complete block plus intra-block positions.

    The positions are folded into the MLP's first (linear) layer's bias, W (x + p) + b = W x + (W p + b):
    the blocks are then read in place instead of being copied with the positions added, which was a
    quarter of this function's time at T = 8,192."""
    b, h, t, dh = x.shape
    nb = t // block
    assert pos_emb.shape == (block, dh), "one position vector per offset inside a block"
    first = mlp[0]
    assert isinstance(first, torch.nn.Linear), "the compression MLP opens with a linear layer"
    flat = x[:, :, : nb * block].reshape(b, h, nb, block * dh)  # (B, H, nb, l dh), a view when x is contiguous
    bias = first.weight @ pos_emb.reshape(-1)  # (hidden,)
    if first.bias is not None:
        bias = bias + first.bias
    return mlp[1:](F.linear(flat, first.weight, bias))


def block_importance(q: torch.Tensor, kc: torch.Tensor, pos: torch.Tensor, block: int) -> torch.Tensor:
    """Compressed-attention probabilities summed over heads: q (B, H, Tq, dh), kc (B, H, nb, dh),
    pos (Tq,) or, when each row's queries sit elsewhere (serving), (B, Tq) -> (B, Tq, nb)."""
    nb = kc.shape[2]
    if nb == 0:
        return q.new_zeros(q.shape[0], q.shape[2], 0)
    mask = compressed_mask(pos, nb, block)  # (Tq, nb) or (B, Tq, nb)
    if mask.dim() == 3:
        mask = mask[:, None]  # (B, 1, Tq, nb): the same for every head
    scores = (q @ kc.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, Tq, nb)
    probs = torch.softmax(scores.masked_fill(~mask, NEG), dim=-1) * mask
    return probs.sum(1).detach()  # selection is a discrete choice: no gradient through it


def select_blocks(
    importance: torch.Tensor, pos: torch.Tensor, block: int, num_selected: int, num_recent: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick blocks per query: importance (B, Tq, nb_complete), pos (Tq,) or (B, Tq) -> idx, valid: (B, Tq, n).

    The block holding the query and the `num_recent` blocks before it are always chosen; the rest
    of the n slots go to the most important earlier complete blocks. Slots beyond what exists are
    invalid. Slots come in descending score order, so slot 0 is always the query's own block (the
    forced score grows with the block index) and the valid slots come first: min(n, blocks up to
    the query's own) of them. The efficient selection kernel relies on this layout."""
    b, tq, nb_c = importance.shape
    n_total = int(pos.max().item()) // block + 1 if tq else 0
    scores = torch.full((b, tq, n_total), float("-inf"), device=importance.device)
    scores[:, :, :nb_c] = importance[:, :, :n_total]
    blocks = torch.arange(n_total, device=pos.device)
    current = (pos // block)[..., None]  # (Tq, 1) or (B, Tq, 1)
    forced = (blocks <= current) & (blocks >= current - num_recent)  # (Tq, n_total) or (B, Tq, n_total)
    visible = blocks <= current
    scores = torch.where(forced, FORCED + blocks.to(scores.dtype), scores)
    scores = scores.masked_fill(~visible, float("-inf"))
    k = min(num_selected, n_total)
    top, idx = scores.topk(k, dim=-1)  # (B, Tq, k)
    valid = torch.isfinite(top)
    if k < num_selected:
        pad = num_selected - k
        idx = F.pad(idx, (0, pad))
        valid = F.pad(valid, (0, pad), value=False)
    return idx, valid


def select_per_query_block(
    q: torch.Tensor, kc: torch.Tensor, t: int, block: int, num_selected: int, num_recent: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Selection decided at each query block's first position: -> idx, valid (B, n_qblocks, n)."""
    starts = torch.arange(0, t, block, device=q.device)  # first position of each query block
    imp = block_importance(q[:, :, starts], kc, starts, block)  # (B, nqb, nb)
    return select_blocks(imp, starts, block, num_selected, num_recent)


def selection_token_mask(idx: torch.Tensor, valid: torch.Tensor, t: int, block: int) -> torch.Tensor:
    """(B, T, T) from per-query-block choices idx/valid (B, nqb, n): query i sees key j if j's block
    is selected for i's block and j <= i."""
    qblock = torch.arange(t, device=idx.device) // block
    idx, valid = idx[:, qblock], valid[:, qblock]  # (B, T, n)
    b = idx.shape[0]
    n_blocks = (t + block - 1) // block
    chosen = torch.zeros(b, t, n_blocks + 1, dtype=torch.bool, device=idx.device)
    # Invalid slots write into a spare column that is dropped.
    chosen.scatter_(2, torch.where(valid, idx, n_blocks), True)
    key_block = torch.arange(t, device=idx.device) // block  # (T,)
    token = chosen[:, :, key_block]  # (B, T, T)
    return token & causal_mask(t, idx.device)


def _mix(gates: torch.Tensor, outs: list[torch.Tensor]) -> torch.Tensor:
    """gates: (B, T, H, 3); outs: three (B, H, T, dh) -> (B, H, T, dh).

    The gates are made contiguous per branch first: broadcasting a strided gate slice over each
    output ran the multiply-adds at about a third of the speed (the mix was 10% of the forward).
    The sums accumulate in place into the first product, which autograd allows (no backward reads
    it): a fresh output per addition doubled the mix's time at T = 8,192 (4.7 ms against 2.3)."""
    g = gates.permute(0, 2, 3, 1).contiguous().unsqueeze(-1)  # (B, H, 3, T, 1)
    out = outs[0] * g[:, :, 0]
    for i in (1, 2):
        out.addcmul_(g[:, :, i], outs[i])
    return out


def nsa_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kc: torch.Tensor,
    vc: torch.Tensor,
    gates: torch.Tensor,
    lay: BlockLayout,
) -> torch.Tensor:
    """Dense attention under masks. q/k/v: (B, H, T, dh); kc/vc: (B, H, T // block, dh);
    gates: (B, T, H, 3) for (cmp, sel, win) -> (B, H, T, dh)."""
    block, num_selected, num_recent, window = lay.block, lay.num_selected, lay.num_recent, lay.window
    t = q.shape[2]
    pos = torch.arange(t, device=q.device)
    o_cmp = masked_softmax_attention(q, kc, vc, compressed_mask(pos, kc.shape[2], block))
    idx, valid = select_per_query_block(q, kc, t, block, num_selected, num_recent)
    o_sel = masked_softmax_attention(q, k, v, selection_token_mask(idx, valid, t, block)[:, None])
    o_win = masked_softmax_attention(q, k, v, window_mask(t, window, q.device))
    return _mix(gates, [o_cmp, o_sel, o_win])


def pad_time(x: torch.Tensor, front: int, back: int) -> torch.Tensor:
    """Zero-pad the time axis of x (..., T, dh) -> (..., front + T + back, dh); x itself when no padding.

    Same result as `F.pad`, which fills the whole new tensor before copying x into it: at
    T = 8,192 that fill made each padded copy about four times slower (4.3 ms against 1.2 ms)."""
    if front == 0 and back == 0:
        return x
    t = x.shape[-2]
    out = x.new_empty(*x.shape[:-2], front + t + back, x.shape[-1])
    out[..., :front, :] = 0
    out[..., front + t :, :] = 0
    out[..., front : front + t, :] = x
    return out


def compressed_attention(q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, block: int, chunk: int) -> torch.Tensor:
    """Attention over complete-block summaries, `chunk` queries at a time: (B, H, T, dh).

    A chunk's queries can see at most the summaries completed by its last position, so each chunk
    is given only those: about half the (query, summary) pairs of one masked call over all of them.
    The first block - 1 positions see no summary and get zeros (the fused kernel would give NaN)."""
    b, h, t, dh = q.shape
    nb = kc.shape[2]
    first = min(t, block - 1)
    outs = [q.new_zeros(b, h, first, dh)]
    pos = torch.arange(t, device=q.device)
    for s0 in range(first, t, chunk):
        s1 = min(t, s0 + chunk)
        visible = min(nb, s1 // block)  # summaries complete by position s1 - 1
        mask = compressed_mask(pos[s0:s1], visible, block)  # (c, visible); each row sees block 0
        outs.append(sdpa_attention(q[:, :, s0:s1], kc[:, :, :visible], vc[:, :, :visible], mask))
    return torch.cat(outs, dim=2)


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, chunk: int = 32) -> torch.Tensor:
    """Sliding-window causal attention, `chunk` queries at a time against the keys of their own
    chunk and the r = ceil(window / chunk) chunks before it: O(T (r + 1) c).

    Each query scores w + c keys for the w it uses: chunks of 32 waste less than chunks of 64
    (window 128: 160 keys against 192) and ran about a tenth faster at T = 8,192 on two threads.

    The key span of each chunk is an overlapping `unfold` view of the padded keys (no copy): batch
    and heads go into the kernel's batch dimension and chunks into its head dimension, a layout
    the fused kernel reads through strides (folding chunks into the batch dimension instead would
    force a copy of every span). The band mask depends only on the chunk, so it broadcasts over
    batch and heads."""
    b, h, t, dh = q.shape
    c = min(chunk, t)
    n_chunks = (t + c - 1) // c
    t_pad = n_chunks * c
    r = (window + c - 1) // c
    span = (r + 1) * c
    # Keys padded in front by r chunks (never visible), queries padded at the end (dropped).
    kp = pad_time(k, r * c, t_pad - t).reshape(b * h, (n_chunks + r) * c, dh)
    vp = pad_time(v, r * c, t_pad - t).reshape(b * h, (n_chunks + r) * c, dh)
    # Chunk i holds queries [i c, (i+1) c) and keys [(i - r) c, (i+1) c).
    kw = kp.unfold(1, span, c).transpose(2, 3)  # (B H, n_chunks, span, dh), overlapping view
    vw = vp.unfold(1, span, c).transpose(2, 3)
    qp = pad_time(q, 0, t_pad - t).reshape(b * h, n_chunks, c, dh)
    qi = torch.arange(c, device=q.device)[:, None] + r * c  # query offset within the key span
    kj = torch.arange(span, device=q.device)[None, :]
    key_pos = torch.arange(n_chunks, device=q.device)[:, None, None] * c - r * c + kj  # (n_chunks, 1, span)
    mask = (kj <= qi) & (kj > qi - window) & (key_pos >= 0)  # (n_chunks, c, span); each row sees itself
    out = sdpa_attention(qp, kw, vw, mask[None])  # (B H, n_chunks, c, dh)
    return out.reshape(b, h, t_pad, dh)[:, :, :t]


def _selected_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor, block: int, chunk: int
) -> torch.Tensor:
    """Token attention over the gathered selected blocks only, one gather per query block: O(T n l).

    idx, valid: (B, nqb, n) per query block, laid out as `select_blocks` promises (slot 0 the own
    block, valid slots first, as many for every batch row). That makes the mask a function of the
    query block alone: query blocks go into the kernel's batch dimension, batch rows and heads
    share its head dimension, and one (l, n l) mask per query block broadcasts over both. Query
    blocks are processed `chunk // block` at a time to bound memory.

    Keys, values and queries are read in their own (B H, nqb, l, dh) layout, which is a view of
    the inputs: rearranging them block-major first cost two full copies and a third for the output,
    about a fifth of this branch at T = 8,192. Each chunk's output is written into place."""
    b, h, t, dh = q.shape
    n = idx.shape[-1]
    nqb = (t + block - 1) // block
    pad = nqb * block - t
    qblocks = torch.arange(nqb, device=q.device)
    assert bool((idx[:, :, 0] == qblocks).all()), "slot 0 must hold the query's own block"
    n_valid = valid[0].sum(-1)  # (nqb,)
    assert bool((valid.sum(-1) == n_valid).all()), "every batch row must have as many valid slots"
    # One (block, dh) row per (batch, head, source block): a selected block is one row copy.
    # Kept 3-d: index_select on 2-d rows this wide takes a path about ten times slower on CPU.
    kb = pad_time(k, 0, pad).reshape(b * h * nqb, block, dh)
    vb = pad_time(v, 0, pad).reshape(b * h * nqb, block, dh)
    qb = pad_time(q, 0, pad).reshape(b * h, nqb, block, dh)
    out = q.new_empty(b * h, nqb, block, dh)
    row0 = (torch.arange(b * h, device=q.device) * nqb).view(1, b, h, 1)  # first row of each (batch, head)
    offs = torch.arange(block, device=q.device)
    slot = torch.arange(n, device=q.device).repeat_interleave(block)  # (n l,) slot of each gathered key
    key_off = offs.repeat(n)  # (n l,) offset of each gathered key inside its block
    own = (slot == 0) & (key_off[None, :] <= offs[:, None])  # (l, n l): own block (slot 0), causal inside
    step = max(1, chunk // block)
    # Gather buffers allocated once and refilled per chunk: a fresh allocation this size per chunk
    # cost more in page faults than the copy itself (2 ms against 0.3 ms per 8 MB here).
    # Under autograd the gathered keys must outlive their chunk, so each chunk gets its own.
    reuse = not (torch.is_grad_enabled() and (k.requires_grad or v.requires_grad))
    buf_k = k.new_empty(step * b * h * n, block, dh) if reuse else None
    buf_v = v.new_empty(step * b * h * n, block, dh) if reuse else None
    for s0 in range(0, nqb, step):
        s1 = min(nqb, s0 + step)
        c = s1 - s0
        ci = idx[:, s0:s1].transpose(0, 1)  # (c, B, n)
        rows = (ci[:, :, None, :] + row0).reshape(-1)  # (c B H n,)
        m = rows.numel()
        ks = kb.index_select(0, rows) if buf_k is None else torch.index_select(kb, 0, rows, out=buf_k[:m])
        vs = vb.index_select(0, rows) if buf_v is None else torch.index_select(vb, 0, rows, out=buf_v[:m])
        ks, vs = ks.view(c, b * h, n * block, dh), vs.view(c, b * h, n * block, dh)
        other = (slot > 0) & (slot < n_valid[s0:s1, None])  # (c, n l): other slots, visible when valid
        mask = own[None] | other[:, None, :]  # (c, l, n l); every row sees itself
        o = sdpa_attention(qb[:, s0:s1].transpose(0, 1), ks, vs, mask[:, None])  # (c, B H, l, dh)
        out[:, s0:s1] = o.transpose(0, 1)
    return out.view(b, h, nqb * block, dh)[:, :, :t]


def nsa_efficient(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kc: torch.Tensor,
    vc: torch.Tensor,
    gates: torch.Tensor,
    lay: BlockLayout,
    chunk: int = 512,
) -> torch.Tensor:
    """Same contract as `nsa_reference`, computing only what each query attends to."""
    block, num_selected, num_recent, window = lay.block, lay.num_selected, lay.num_recent, lay.window
    t = q.shape[2]
    o_cmp = compressed_attention(q, kc, vc, block, chunk)
    idx, valid = select_per_query_block(q, kc, t, block, num_selected, num_recent)
    o_sel = _selected_attention(q, k, v, idx, valid, block, chunk)
    o_win = window_attention(q, k, v, window)
    return _mix(gates, [o_cmp, o_sel, o_win])
