"""The batched live encoder computes exactly what the full forward computes, for ragged users."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.models.live_encoder import LiveEncoder, LiveEncoderConfig
from streamrec.models.sequence_encoder import SequenceEncoder, SequenceEncoderConfig
from streamrec.models.sparse_attention import SparseAttentionConfig

BLOCK = 4


def make_encoder(attention: str, max_len: int = 40, seed: int = 0) -> SequenceEncoder:
    torch.manual_seed(seed)
    sparse = SparseAttentionConfig(block=BLOCK, num_selected=3, num_recent=1, window=6)
    cfg = SequenceEncoderConfig(
        dim=16, layers=2, heads=2, max_len=max_len, dropout=0.0, attention=attention, sparse=sparse
    )
    enc = SequenceEncoder(cfg).eval()
    # Untrained gates sit near 0.5 everywhere; spread them so every branch matters in the check.
    for blk in enc.blocks:
        if hasattr(blk.attn, "gate"):
            torch.nn.init.normal_(blk.attn.gate.weight, std=0.5)
    return enc


def full_outputs(enc: SequenceEncoder, items: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return enc(items)  # (B, T, D): causal, so position t is the output for the prefix [0, t]


# Edge lengths around the block size: 1, block-1, block, block+1, and longer ragged ones.
LENGTHS = [1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK, 2 * BLOCK + 1, 17, 33]


@pytest.mark.parametrize("attention", ["sparse", "dense"])
def test_steps_from_empty_equal_the_full_forward_at_every_position(attention: str) -> None:
    enc = make_encoder(attention)
    live = LiveEncoder(enc, LiveEncoderConfig(slots=16))
    t_max = max(LENGTHS)
    items = torch.randn(len(LENGTHS), t_max, 16)
    expected = full_outputs(enc, items)
    slots = torch.arange(len(LENGTHS)) * 2  # any slots, not 0..B-1
    lengths = torch.tensor(LENGTHS)
    for t in range(t_max):
        active = lengths > t  # users whose sequence has an item at position t: ragged rounds
        got, _ = live.step(slots[active], items[active, t])
        torch.testing.assert_close(got, expected[active, t], atol=1e-5, rtol=1e-5)
    assert live.length[slots].tolist() == LENGTHS


@pytest.mark.parametrize("attention", ["sparse", "dense"])
def test_prefill_then_steps_equal_the_full_forward(attention: str) -> None:
    enc = make_encoder(attention, seed=1)
    live = LiveEncoder(enc, LiveEncoderConfig(slots=8))
    b, t_max = len(LENGTHS), max(LENGTHS) + 6
    items = torch.randn(b, t_max, 16)
    expected = full_outputs(enc, items)
    lengths = torch.tensor(LENGTHS)
    slots = torch.arange(b)
    got = live.prefill(slots, items[:, : max(LENGTHS)], lengths)
    torch.testing.assert_close(got, expected[torch.arange(b), lengths - 1], atol=1e-5, rtol=1e-5)
    for extra in range(6):  # continue every user by 6 items, across block boundaries
        pos = lengths + extra
        got, _ = live.step(slots, items[torch.arange(b), pos])
        torch.testing.assert_close(got, expected[torch.arange(b), pos], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["sparse", "dense"])
def test_extend_by_ragged_chunks_equals_the_full_forward_and_steps_continue_after_it(attention: str) -> None:
    enc = make_encoder(attention, seed=2)
    live = LiveEncoder(enc, LiveEncoderConfig(slots=16))
    b, t_max = len(LENGTHS), 40
    items = torch.randn(b, t_max, 16)
    expected = full_outputs(enc, items)
    rows = torch.arange(b)
    slots = rows + 3
    lengths = torch.tensor(LENGTHS)
    live.prefill(slots, items[:, : max(LENGTHS)], lengths)
    done = lengths.clone()
    # Chunks of ragged sizes (1, block-1, block, block+1, ...) that cross block boundaries, so new
    # blocks complete and new query blocks choose their blocks inside a chunk.
    for sizes in ([1, 3, 4, 5, 2, 1, 6, 1], [5, 4, 1, 3, 4, 5, 1, 2]):
        counts = torch.tensor(sizes)
        p = int(counts.max())
        chunk = torch.zeros(b, p, 16)
        for i in range(b):
            chunk[i, : sizes[i]] = items[i, done[i] : done[i] + sizes[i]]
        got, why = live.extend(slots, chunk, counts, explain_top=2)
        done = done + counts
        torch.testing.assert_close(got, expected[rows, done - 1], atol=1e-5, rtol=1e-5)
        assert why is not None and bool((why.positions < done[:, None]).all()), "explanations name past positions"
    assert live.length[slots].tolist() == done.tolist()
    for _ in range(3):  # the cached state it leaves behind is what steps need
        got, _ = live.step(slots, items[rows, done])
        torch.testing.assert_close(got, expected[rows, done], atol=1e-5, rtol=1e-5)
        done = done + 1


@pytest.mark.parametrize("explain_top", [0, 2])  # 0: the whole-sequence fill; 2: the incremental path
@pytest.mark.parametrize("attention", ["sparse", "dense"])
def test_extend_from_an_empty_slot_equals_prefill(attention: str, explain_top: int) -> None:
    enc = make_encoder(attention, seed=3)
    live = LiveEncoder(enc, LiveEncoderConfig(slots=8))
    items = torch.randn(3, 9, 16)
    counts = torch.tensor([9, 1, BLOCK + 1])
    got, why = live.extend(torch.tensor([0, 1, 2]), items, counts, explain_top=explain_top)
    expected = full_outputs(enc, items)
    torch.testing.assert_close(got, expected[torch.arange(3), counts - 1], atol=1e-5, rtol=1e-5)
    assert (why is not None) == (explain_top > 0), "an explanation exactly when one is asked for"
    if why is not None:
        assert bool((why.positions < counts[:, None]).all()), "explanations name past positions"


@pytest.mark.parametrize("attention", ["sparse", "dense"])
def test_one_extend_refills_reset_slots_beside_cached_ones(attention: str) -> None:
    """Serving's mix: some slots reused for another user (stale keys, summaries and selections
    left in them), reset and refilled whole, in the same call as slots that continue."""
    enc = make_encoder(attention, seed=4)
    live = LiveEncoder(enc, LiveEncoderConfig(slots=8))
    stale = torch.randn(4, 33, 16)
    live.prefill(torch.arange(4), stale, torch.full((4,), 33))  # every slot holds someone else
    items = torch.randn(4, 30, 16)
    expected = full_outputs(enc, items)
    cached = torch.tensor([0, 2])
    live.prefill(cached, items[cached, :9], torch.tensor([9, 9]))  # these two continue from 9
    refilled = torch.tensor([1, 3])
    live.reset(refilled)
    counts = torch.tensor([BLOCK + 1, 2 * BLOCK + 3, 1, 17])  # new positions: 9..13, 0..10, 9, 0..16
    starts = torch.tensor([9, 0, 9, 0])
    chunk = torch.zeros(4, int(counts.max()), 16)
    for i in range(4):
        chunk[i, : counts[i]] = items[i, starts[i] : starts[i] + counts[i]]
    got, _ = live.extend(torch.arange(4), chunk, counts, explain_top=2)
    last = starts + counts - 1
    torch.testing.assert_close(got, expected[torch.arange(4), last], atol=1e-5, rtol=1e-5)
    got, _ = live.step(torch.arange(4), items[torch.arange(4), last + 1])  # and the state continues
    torch.testing.assert_close(got, expected[torch.arange(4), last + 1], atol=1e-5, rtol=1e-5)


def test_future_items_of_other_users_do_not_change_a_user_and_slots_are_independent() -> None:
    enc = make_encoder("sparse", seed=2)
    live = LiveEncoder(enc, LiveEncoderConfig(slots=4))
    a = torch.randn(12, 16)
    alone = LiveEncoder(enc, LiveEncoderConfig(slots=4))
    for t in range(12):
        mine, _ = live.step(torch.tensor([0, 3]), torch.stack([a[t], torch.randn(16)]))
        ref, _ = alone.step(torch.tensor([1]), a[t : t + 1])
        torch.testing.assert_close(mine[0:1], ref, atol=1e-6, rtol=1e-6)


def test_a_full_window_must_be_refilled_and_duplicates_are_refused() -> None:
    enc = make_encoder("sparse", max_len=8)
    live = LiveEncoder(enc, LiveEncoderConfig(slots=2))
    live.prefill(torch.tensor([0]), torch.randn(1, 8, 16), torch.tensor([8]))
    with pytest.raises(AssertionError, match="window is full"):
        live.step(torch.tensor([0]), torch.randn(1, 16))
    with pytest.raises(AssertionError, match="one new item per slot"):
        live.step(torch.tensor([1, 1]), torch.randn(2, 16))


def test_explanation_points_at_attended_past_positions() -> None:
    enc = make_encoder("sparse", seed=3)
    live = LiveEncoder(enc, LiveEncoderConfig(slots=2))
    items = torch.randn(1, 20, 16)
    live.prefill(torch.tensor([0]), items[:, :19], torch.tensor([19]))
    _, why = live.step(torch.tensor([0]), items[:, 19], explain_top=3)
    assert why is not None
    pos = why.positions[0]
    assert ((pos >= 0) & (pos <= 19)).all(), pos
    assert (why.weights[0][:-1] >= why.weights[0][1:]).all(), "sorted by weight"
    assert why.weights[0].sum() > 0
    assert why.gates.shape == (1, 3) and ((why.gates >= 0) & (why.gates <= 1)).all()


def test_state_bytes_count_keys_values_and_summaries() -> None:
    enc = make_encoder("sparse")
    live = LiveEncoder(enc, LiveEncoderConfig(slots=1))
    per_layer = 2 * 2 * 20 * 8 * 4 + 2 * 2 * (20 // BLOCK) * 8 * 4 + 3 * 9
    assert live.state_bytes(20) == 2 * per_layer + 8
    half = LiveEncoder(enc, LiveEncoderConfig(slots=1, dtype="float16"))
    assert half.state_bytes(20) < live.state_bytes(20)


def test_window_start_keeps_between_half_and_all_of_max_len() -> None:
    from streamrec.models.live_encoder import window_start

    assert [window_start(n, 8) for n in (0, 1, 8)] == [0, 0, 0]
    assert [window_start(n, 8) for n in (9, 12, 13, 16, 17)] == [4, 4, 8, 8, 12]
    for n in range(1, 100):
        s = window_start(n, 8)
        assert 4 < n - s <= 8 or (n <= 8 and s == 0)
        assert s % 4 == 0


def prefill_then_steps(
    live: LiveEncoder, enc: SequenceEncoder, steps: int = 6
) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Prefill the LENGTHS windows, then step each user `steps` clicks: the items (B, T, D), the
    full forward's outputs (B, T, D) and, per step, (live user vectors, full forward's) (B, D)."""
    b, t_max = len(LENGTHS), max(LENGTHS) + steps
    items = torch.randn(b, t_max, 16)
    expected = full_outputs(enc, items)
    lengths = torch.tensor(LENGTHS)
    slots = torch.arange(b)
    live.prefill(slots, items[:, : max(LENGTHS)], lengths)
    pairs = []
    for extra in range(steps):
        pos = lengths + extra
        got, _ = live.step(slots, items[torch.arange(b), pos])
        pairs.append((got, expected[torch.arange(b), pos]))
    return items, expected, pairs


@pytest.mark.parametrize("dtype, tol, share", [("float16", 2e-3, 0.55), ("bfloat16", 2e-2, 0.55), ("int8", 1e-2, 0.35)])
@pytest.mark.parametrize("attention", ["sparse", "dense"])
def test_a_narrow_cache_stays_close_to_the_full_forward_and_shrinks_the_state(
    attention: str, dtype: str, tol: float, share: float
) -> None:
    enc = make_encoder(attention, seed=2)
    live = LiveEncoder(enc, LiveEncoderConfig(slots=8, dtype=dtype))
    items, expected, pairs = prefill_then_steps(live, enc)
    for got, want in pairs:  # steps read every cached key, value and summary in the narrow type
        assert got.dtype == torch.float32, "computed in float32 whatever the cache stores"
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    b, lengths, slots = len(LENGTHS), torch.tensor(LENGTHS), torch.arange(len(LENGTHS))
    live.prefill(slots, items[:, : max(LENGTHS)], lengths)  # extend reads the narrow cache too
    three = items[torch.arange(b)[:, None], lengths[:, None] + torch.arange(3)]  # (B, 3, D)
    got, _ = live.extend(slots, three, torch.full((b,), 3))
    torch.testing.assert_close(got, expected[torch.arange(b), lengths + 2], atol=tol, rtol=tol)
    wide = LiveEncoder(enc, LiveEncoderConfig(slots=1))
    assert live.state_bytes(32) < share * wide.state_bytes(32)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 16)),
    magnitude=st.floats(1e-6, 1e4),
    seed=st.integers(0, 2**31 - 1),
)
def test_int8_rows_round_trip_within_half_a_step_of_each_vectors_scale(
    shape: tuple[int, int, int], magnitude: float, seed: int
) -> None:
    from streamrec.models.attention_cache import Int8Rows

    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * magnitude
    rows = Int8Rows(shape, torch.device("cpu"))
    rows[...] = x
    got = rows[...]
    assert got.dtype == torch.float32 and got.shape == x.shape
    step = rows.scale.to(torch.float32)[..., None]  # (...,1) the stored scale of each vector
    # Half a quantization step, plus float16's rounding of the scale where a value is clamped at 127.
    assert bool(((got - x).abs() <= step * 0.5 + 2e-3 * x.abs()).all()), "error bound per vector"
    assert rows.data.element_size() == 1 and rows.scale.element_size() == 2, "int8 values, float16 scales"


@pytest.mark.parametrize("attention", ["sparse", "dense"])
def test_int8_linears_stay_close_to_the_float_forward_and_leave_the_encoder_untouched(attention: str) -> None:
    enc = make_encoder(attention, seed=2)
    before = {n: p.detach().clone() for n, p in enc.state_dict().items()}
    live = LiveEncoder(enc, LiveEncoderConfig(slots=8, linear_dtype="int8"))
    assert not any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in enc.modules()), "a copy is quantized"
    assert all(torch.equal(before[n], p) for n, p in enc.state_dict().items()), "the given encoder keeps its weights"
    quantized = [m for m in live.encoder.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(quantized) >= 4 * len(enc.blocks), "qkv, out and the feed-forward layers of every block run in int8"
    for got, want in prefill_then_steps(live, enc)[2]:
        # Per-tensor int8 weights on a 16-wide random encoder: a few parts in a thousand of angle.
        similarity = F.cosine_similarity(got, want)
        assert bool((similarity > 0.99).all()), similarity
