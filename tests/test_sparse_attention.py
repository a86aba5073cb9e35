"""Invariants of MUFASA's sparse attention: reference = efficient (outputs and gradients), causality,
full-coverage settings = dense attention, incremental step = full recompute, edge lengths."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from streamrec.models.attention_cache import CachedCall, LayerCache
from streamrec.models.sparse_attention import DenseCausalAttention, SparseAttention, SparseAttentionConfig
from streamrec.models.sparse_attention_math import (
    BlockLayout,
    causal_mask,
    compressed_attention,
    compressed_mask,
    masked_softmax_attention,
    nsa_efficient,
    nsa_reference,
    window_attention,
    window_mask,
)

BLOCK = 4
CFG = SparseAttentionConfig(block=BLOCK, num_selected=3, num_recent=1, window=5, chunk=7)
LENGTHS = [1, BLOCK - 1, BLOCK, BLOCK + 1, 23]


def inputs(t: int, seed: int = 0, b: int = 2, h: int = 2, dh: int = 8) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, t, dh, generator=g, dtype=torch.float64) for _ in range(3))
    nb = t // BLOCK
    kc, vc = (torch.randn(b, h, nb, dh, generator=g, dtype=torch.float64) for _ in range(2))
    gates = torch.rand(b, t, h, 3, generator=g, dtype=torch.float64)
    return q, k, v, kc, vc, gates


def dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return masked_softmax_attention(q, k, v, causal_mask(q.shape[2]))


@pytest.mark.parametrize("t", LENGTHS)
def test_reference_equals_efficient_outputs_and_gradients(t: int) -> None:
    args = [x.requires_grad_() for x in inputs(t)]
    ref = nsa_reference(*args, BlockLayout(BLOCK, 3, 1, 5))
    grads_ref = torch.autograd.grad(ref.square().sum(), args)
    eff = nsa_efficient(*args, BlockLayout(BLOCK, 3, 1, 5), chunk=7)
    grads_eff = torch.autograd.grad(eff.square().sum(), args, allow_unused=True)
    torch.testing.assert_close(eff, ref)
    for a, b in zip(grads_eff, grads_ref, strict=True):
        torch.testing.assert_close(a if a is not None else torch.zeros_like(b), b)


@pytest.mark.parametrize("t", [1, 3, 4, 5, 17, 40])
@pytest.mark.parametrize(("window", "chunk"), [(1, 2), (5, 2), (5, 3), (12, 8), (8, 8), (3, 16)])
def test_chunked_window_kernel_equals_masked_dense(t: int, window: int, chunk: int) -> None:
    """The window kernel's chunking (key span of several chunks, window not a multiple of the chunk,
    chunk longer than the sequence) changes cost only."""
    q, k, v = (x.requires_grad_() for x in inputs(t)[:3])
    ref = masked_softmax_attention(q, k, v, window_mask(t, window))
    eff = window_attention(q, k, v, window, chunk)
    torch.testing.assert_close(eff, ref)
    for a, b in zip(torch.autograd.grad(eff.sum(), (q, k, v)), torch.autograd.grad(ref.sum(), (q, k, v)), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("t", [1, BLOCK - 1, BLOCK, BLOCK + 1, 23])
@pytest.mark.parametrize("chunk", [1, 3, 8, 64])
def test_chunked_compressed_kernel_equals_masked_dense(t: int, chunk: int) -> None:
    """Each query chunk gets only the summaries complete by its end: same result as one masked call."""
    q, _, _, kc, vc, _ = inputs(t)
    q, kc, vc = (x.requires_grad_() for x in (q, kc, vc))
    ref = masked_softmax_attention(q, kc, vc, compressed_mask(torch.arange(t), kc.shape[2], BLOCK))
    eff = compressed_attention(q, kc, vc, BLOCK, chunk)
    torch.testing.assert_close(eff, ref)
    if kc.shape[2]:
        args = (q, kc, vc)
        for a, b in zip(torch.autograd.grad(eff.sum(), args), torch.autograd.grad(ref.sum(), args), strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("impl", [nsa_reference, nsa_efficient])
def test_window_covering_everything_equals_dense(impl: Callable[..., torch.Tensor]) -> None:
    q, k, v, kc, vc, gates = inputs(23)
    gates = torch.zeros_like(gates)
    gates[..., 2] = 1.0  # window branch only
    torch.testing.assert_close(impl(q, k, v, kc, vc, gates, BlockLayout(BLOCK, 3, 1, 23)), dense(q, k, v))


@pytest.mark.parametrize("impl", [nsa_reference, nsa_efficient])
def test_selecting_all_blocks_equals_dense(impl) -> None:  # noqa: ANN001
    q, k, v, kc, vc, gates = inputs(23)
    gates = torch.zeros_like(gates)
    gates[..., 1] = 1.0  # selection branch only, with room for every block
    torch.testing.assert_close(impl(q, k, v, kc, vc, gates, BlockLayout(BLOCK, 6, 1, 5)), dense(q, k, v))


@pytest.mark.parametrize("impl", ["reference", "efficient"])
def test_causality_future_items_do_not_change_the_past(impl: str) -> None:
    torch.manual_seed(0)
    layer = SparseAttention(16, 2, CFG).double()
    x = torch.randn(2, 23, 16, dtype=torch.float64)
    y = x.clone()
    y[:, 13:] = torch.randn(2, 10, 16, dtype=torch.float64)
    out_x, out_y = layer(x, impl=impl), layer(y, impl=impl)
    torch.testing.assert_close(out_x[:, :13], out_y[:, :13])
    assert not torch.allclose(out_x[:, 13:], out_y[:, 13:])


# 64 and 128: multiples of the window kernel's chunk, where padding is a no-op and the kernel sees
# the heads as split (non-contiguous) views.
@pytest.mark.parametrize("t", [*LENGTHS, 64, 128])
def test_module_reference_equals_efficient_with_parameter_gradients(t: int) -> None:
    torch.manual_seed(1)
    layer = SparseAttention(16, 2, CFG).double()
    x = torch.randn(2, t, 16, dtype=torch.float64)
    out_ref = layer(x, impl="reference")
    g_ref = torch.autograd.grad(out_ref.sum(), list(layer.parameters()), allow_unused=True)
    out_eff = layer(x, impl="efficient")
    g_eff = torch.autograd.grad(out_eff.sum(), list(layer.parameters()), allow_unused=True)
    torch.testing.assert_close(out_eff, out_ref)
    for a, b, p in zip(g_eff, g_ref, layer.parameters(), strict=True):
        # A parameter a path never touches (no complete block yet) has no gradient: zero.
        torch.testing.assert_close(
            a if a is not None else torch.zeros_like(p), b if b is not None else torch.zeros_like(p)
        )


def layer_and_cache(layer_kind: str, slots: int, length: int, seed: int) -> tuple[torch.nn.Module, LayerCache]:
    torch.manual_seed(seed)
    layer = (SparseAttention(16, 2, CFG) if layer_kind == "sparse" else DenseCausalAttention(16, 2)).double()
    cache = LayerCache.empty(slots, 2, length, 8, CFG.block, CFG.num_selected, "float64", torch.device("cpu"))
    return layer.eval(), cache


def call(cache: LayerCache, start: list[int], counts: list[int]) -> CachedCall:
    return CachedCall(cache, torch.arange(len(start)), torch.tensor(start), torch.tensor(counts))


@pytest.mark.parametrize("layer_kind", ["sparse", "dense"])
def test_incremental_steps_equal_full_recompute(layer_kind: str) -> None:
    t_all = 2 * BLOCK * 3 + 1
    layer, cache = layer_and_cache(layer_kind, 2, t_all, seed=2)
    x = torch.randn(2, t_all, 16, dtype=torch.float64)
    with torch.no_grad():
        full = layer(x)
        for t in range(t_all):
            out_t = layer(x[:, t : t + 1], cache=call(cache, [t, t], [1, 1]))
            torch.testing.assert_close(out_t, full[:, t : t + 1])


@pytest.mark.parametrize("layer_kind", ["sparse", "dense"])
@pytest.mark.parametrize("first", [1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + 3])
def test_one_forward_fills_extends_and_steps_ragged_slots(layer_kind: str, first: int) -> None:
    """Training, prefill, extend and the one-click step are one `forward(x, cache)`: slots filled
    with ragged windows, extended by ragged chunks across block boundaries, then stepped, give at
    every new position what the full forward gives there."""
    t_all = 6 * BLOCK
    layer, cache = layer_and_cache(layer_kind, 3, t_all, seed=4)
    x = torch.randn(3, t_all, 16, dtype=torch.float64)
    lengths = [first, 1, BLOCK]
    chunks = [BLOCK + 1, BLOCK - 1, 2]
    with torch.no_grad():
        full = layer(x)
        got = layer(x[:, : max(lengths)], cache=call(cache, [0, 0, 0], lengths))
        for row, n in enumerate(lengths):
            torch.testing.assert_close(got[row, :n], full[row, :n])
        new = torch.stack([x[r, lengths[r] : lengths[r] + max(chunks)] for r in range(3)])  # right-padded
        got = layer(new, cache=call(cache, lengths, chunks))
        for row, (s, n) in enumerate(zip(lengths, chunks, strict=True)):
            torch.testing.assert_close(got[row, :n], full[row, s : s + n])
        ends = [s + n for s, n in zip(lengths, chunks, strict=True)]
        for k in range(BLOCK + 2):
            pos = [e + k for e in ends]
            got = layer(torch.stack([x[r, pos[r]] for r in range(3)])[:, None], cache=call(cache, pos, [1, 1, 1]))
            torch.testing.assert_close(got[:, 0], full[torch.arange(3), torch.tensor(pos)])


@pytest.mark.parametrize("layer_kind", ["sparse", "dense"])
def test_a_slot_restarted_mid_window_ignores_what_it_held_beyond(layer_kind: str) -> None:
    """A slot restarted at the first position of a query block (serving restarts slots at 0, for a
    rebuilt window): positions it held past the new start must not be read, and are overwritten as
    the slot grows again. (Mid-block, the slot would keep its last block's selection.)"""
    t_all = 3 * BLOCK + 1
    layer, cache = layer_and_cache(layer_kind, 1, t_all, seed=3)
    x = torch.randn(1, t_all, 16, dtype=torch.float64)
    alt = torch.randn(1, 1, 16, dtype=torch.float64)
    with torch.no_grad():
        layer(x, cache=call(cache, [0], [t_all]))
        mid = 2 * BLOCK
        branched = layer(alt, cache=call(cache, [mid], [1]))
        torch.testing.assert_close(branched, layer(torch.cat([x[:, :mid], alt], dim=1))[:, -1:])
        x_next = torch.randn(1, 1, 16, dtype=torch.float64)
        again = layer(x_next, cache=call(cache, [mid + 1], [1]))
        torch.testing.assert_close(again, layer(torch.cat([x[:, :mid], alt, x_next], dim=1))[:, -1:])


def test_branch_ablation_zeroes_the_branch_gate() -> None:
    layer = SparseAttention(16, 2, SparseAttentionConfig(block=4, num_selected=3, window=5, branches=("sel", "win")))
    gates = layer.gate_values(torch.randn(1, 9, 16))
    assert (gates[..., 0] == 0).all() and (gates[..., 1:] > 0).all()
