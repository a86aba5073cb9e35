"""Batched incremental encoding for live serving: many users' next clicks encoded in one pass.

Serves MUFASA's Sparse Attention-guided Alignment Layer (and SASRec's dense encoder) from cached
per-user state. Every user being served owns a *slot* of each layer's cache
(models/attention_cache.py `LayerCache`): the keys and values of every position of the user's
encoder window, the compressed block summaries and, for sparse layers, the selection made at the
first position of the current query block. The attention modules read and extend the caches
themselves (`forward(x, cache)`); this class keeps how many positions each slot holds and offers
three calls, each one pass of `SequenceEncoder.forward` with a cache:

    prefill(slots, items, lengths)  whole windows from scratch (after a restart or a miss)
    step(slots, items)              one new item per slot, cost O(w + T/l + n l) per user
    extend(slots, items, counts)    several new items per slot in one pass, O(P T) per user

`reset(slots)` empties slots so that one `extend` can refill some users' windows while it
advances others': serving makes at most two calls per micro-batch, whatever its mix of users
(a caller may put one-click users into the extend with a count of 1: one call).
Each call returns what `SequenceEncoder.forward` returns at the user's last position (tests check it,
with ragged lengths and the edge lengths around block boundaries). Everything is plain torch on
whichever device the encoder lives on (CUDA when present, CPU otherwise).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from streamrec.models.attention_cache import STATE_DTYPES, CachedCall, LayerCache, bytes_per_vector
from streamrec.models.sequence_encoder import SequenceEncoder

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
    """Slots of cached state + batched prefill/step/extend over a trained `SequenceEncoder` (kept
    in eval mode). The attention modules own the caches' contents (`forward(x, cache)`); this
    class keeps which slot holds how many positions."""

    def __init__(self, encoder: SequenceEncoder, cfg: LiveEncoderConfig | None = None) -> None:
        self.cfg = cfg or LiveEncoderConfig()
        self.encoder = (int8_linears(encoder) if self.cfg.linear_dtype == "int8" else encoder).eval()
        ec = encoder.cfg
        self.max_len, self.heads = ec.max_len, ec.heads
        self.dh = ec.dim // ec.heads
        self.sparse = ec.attention == "sparse"
        self.block = ec.sparse.block
        self.device = encoder.pos.weight.device
        self.caches = [
            LayerCache.empty(
                self.cfg.slots,
                self.heads,
                self.max_len,
                self.dh,
                self.block,
                ec.sparse.num_selected,
                self.cfg.dtype,
                self.device,
            )
            for _ in range(ec.layers)
        ]
        self.length = torch.zeros(self.cfg.slots, dtype=torch.long, device=self.device)

    def state_bytes(self, length: int) -> int:
        """Bytes of cached state a user with `length` positions occupies (keys, values, summaries)."""
        vector = bytes_per_vector(self.cfg.dtype, self.dh)
        vectors = 2 * self.heads * length
        extra = 0
        if self.sparse:
            vectors += 2 * self.heads * (length // self.block)
            extra = self.caches[0].sel_idx.shape[1] * 9  # int64 index + bool per selected block
        return len(self.caches) * (int(vectors * vector) + extra) + 8

    @torch.inference_mode()
    def _advance(
        self, slots: torch.Tensor, items: torch.Tensor, counts: torch.Tensor, explain_top: int
    ) -> tuple[torch.Tensor, StepExplanation | None]:
        """items (B, P, D) right-padded, counts (B,) new items per slot -> user vectors after each
        slot's last new item (B, D), and what the last layer attended to there."""
        t0 = self.length[slots]
        # Only the last layer's attention explains a recommendation.
        explains = [explain_top > 0 and i == len(self.caches) - 1 for i in range(len(self.caches))]
        calls = [CachedCall(c, slots, t0, counts, explain=e) for c, e in zip(self.caches, explains, strict=True)]
        hidden = self.encoder(items, cache=calls)  # (B, P, D)
        self.length[slots] = t0 + counts
        users = hidden[torch.arange(len(slots), device=items.device), counts - 1]
        attended = calls[-1].attended
        explanation = None
        if explain_top > 0 and attended is not None:
            positions, mass, gates = attended
            explanation = _top_positions(positions, mass, explain_top, gates)
        return users, explanation

    def step(
        self, slots: torch.Tensor, items: torch.Tensor, explain_top: int = 0
    ) -> tuple[torch.Tensor, StepExplanation | None]:
        """slots (B,) distinct, items (B, D) the next item of each -> user vectors (B, D)."""
        assert slots.dim() == 1 and items.shape == (len(slots), self.encoder.cfg.dim), "one item per slot"
        assert len(torch.unique(slots)) == len(slots), "one new item per slot per step: split into rounds"
        assert int(self.length[slots].max()) < self.max_len, f"a window is full (max_len {self.max_len}): prefill"
        ones = torch.ones(len(slots), dtype=torch.long, device=items.device)
        return self._advance(slots, items[:, None], ones, explain_top)

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
        total = self.length[slots] + counts
        assert int(total.max()) <= self.max_len, f"a window would exceed max_len {self.max_len}: prefill instead"
        return self._advance(slots, items, counts, explain_top)

    def reset(self, slots: torch.Tensor) -> None:
        """Empty the slots (a new user, or one whose window moved): the next `step` or `extend`
        starts them from position 0, so a batch can mix refilled slots with cached ones in one
        call. What the slots held before is overwritten or masked, never read."""
        self.length[slots] = 0

    def prefill(self, slots: torch.Tensor, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """slots (B,), items (B, T, D) right-padded windows, lengths (B,) >= 1 -> user vectors (B, D).

        Replaces whatever the slots held."""
        t_max = items.shape[1]
        assert t_max <= self.max_len, f"window {t_max} exceeds max_len {self.max_len}"
        assert (lengths >= 1).all() and int(lengths.max()) <= t_max, "lengths must be within the padded windows"
        self.reset(slots)
        users, _ = self._advance(slots, items, lengths, 0)
        return users


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
