"""Cached attention state for many users at once, which the attention modules own and extend
(models/sparse_attention.py, `forward(x, cache)`): one layer's keys, values, block summaries and
selection per user slot (`LayerCache`), what one call extends (`CachedCall`), the storage types
(float32, float16, bfloat16, or int8 with a scale per vector) and the one gather that reads them.
Serves MUFASA's Sparse Attention-guided Alignment Layer and SASRec's dense attention incrementally
(models/live_encoder.py holds the slots).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# float64 is for exact tests; serving chooses among the others (STREAMREC_STATE_DTYPE).
STATE_DTYPES = ("float32", "float16", "bfloat16", "int8", "float64")


class Int8Rows:
    """A cache tensor (..., dh) stored as int8 with one float16 scale per vector (symmetric,
    absmax / 127): a quarter of float32's bytes. Indexed like the tensor it replaces: reading
    `rows[idx]` returns float32 values, `rows[idx] = x` quantizes x. The index must not touch the
    last dimension, so the same index selects the scales (..., )."""

    # Smallest scale kept: float16 resolves it, and a vector this small is zero for attention.
    MIN_SCALE = 2.0**-14

    def __init__(self, shape: tuple[int, ...], device: torch.device) -> None:
        self.data = torch.zeros(shape, dtype=torch.int8, device=device)  # (..., dh)
        self.scale = torch.zeros(shape[:-1], dtype=torch.float16, device=device)  # (...,)

    @property
    def dtype(self) -> torch.dtype:
        """What reads return and writes take."""
        return torch.float32

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    def __getitem__(self, idx: object) -> torch.Tensor:
        return self.data[idx].to(torch.float32) * self.scale[idx].to(torch.float32)[..., None]

    def __setitem__(self, idx: object, value: torch.Tensor) -> None:
        value = value.to(torch.float32)
        scale = (value.abs().amax(-1) / 127.0).clamp(min=self.MIN_SCALE).to(torch.float16)
        # Quantize with the scale as stored, so reading multiplies back by exactly that scale.
        self.data[idx] = torch.round(value / scale.to(torch.float32)[..., None]).clamp(-127, 127).to(torch.int8)
        self.scale[idx] = scale

    def take_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Vectors at flat row numbers `rows` (N,) of the (..., dh) layout -> (N, dh) float32."""
        dh = self.data.shape[-1]
        values = self.data.view(-1, dh).index_select(0, rows).to(torch.float32)
        return values * self.scale.view(-1).index_select(0, rows).to(torch.float32)[:, None]

    def index_select(self, dim: int, index: torch.Tensor) -> torch.Tensor:
        """Like `Tensor.index_select` over a leading dimension, dequantized to float32."""
        assert dim == 0, "slots are the leading dimension"
        return self.data.index_select(0, index).to(torch.float32) * self.scale.index_select(0, index).to(
            torch.float32
        ).unsqueeze(-1)

    def normal_(self) -> Int8Rows:
        """Random contents (benchmarks fill caches without running the encoder)."""
        self[...] = torch.randn(self.shape, device=self.data.device)
        return self


def take_positions(cache: torch.Tensor | Int8Rows, slots: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """cache (S, H, L, dh), slots (B,), pos (B, P) -> (B, H, P, dh), as `cache[slots[:, None], :,
    pos].permute(0, 2, 1, 3)` but through one `index_select` over the flattened rows: advanced
    indexing with a slice in the middle was the largest cost of a one-click step (85 us a call at
    64 users, a third of the step's CPU time)."""
    _, h, length, dh = cache.shape
    heads = torch.arange(h, device=slots.device)
    rows = ((slots[:, None] * h + heads)[:, :, None] * length + pos[:, None]).reshape(-1)  # (B H P,)
    flat = cache.take_rows(rows) if isinstance(cache, Int8Rows) else cache.reshape(-1, dh).index_select(0, rows)
    return flat.view(len(slots), h, pos.shape[1], dh)


def bytes_per_vector(dtype: str, dh: int) -> float:
    """Bytes one cached vector of `dh` values occupies in storage type `dtype`."""
    assert dtype in STATE_DTYPES, f"state dtype {dtype!r} is not one of {STATE_DTYPES}"
    if dtype == "int8":
        return dh + 2  # int8 values and one float16 scale (`Int8Rows`)
    return dh * torch.finfo(getattr(torch, dtype)).bits // 8


def state_tensor(shape: tuple[int, ...], dtype: str, device: torch.device) -> torch.Tensor | Int8Rows:
    """One cache tensor of the given storage type (zeros)."""
    if dtype == "int8":
        return Int8Rows(shape, device)
    return torch.zeros(shape, dtype=getattr(torch, dtype), device=device)


@dataclass
class LayerCache:
    """One attention layer's cached state for S users, one slot each: the keys and values of every
    position of the user's window, the compressed block summaries and, for sparse attention, the
    selection made at the first position of the current query block."""

    k: torch.Tensor | Int8Rows  # (S, H, L, dh)
    v: torch.Tensor | Int8Rows  # (S, H, L, dh)
    kc: torch.Tensor | Int8Rows  # (S, H, L // block, dh)
    vc: torch.Tensor | Int8Rows  # (S, H, L // block, dh)
    sel_idx: torch.Tensor  # (S, n) long
    sel_valid: torch.Tensor  # (S, n) bool

    @classmethod
    def empty(
        cls, slots: int, heads: int, length: int, dh: int, block: int, num_selected: int, dtype: str,
        device: torch.device,
    ) -> LayerCache:  # fmt: skip
        assert dtype in STATE_DTYPES, f"state dtype {dtype!r} is not one of {STATE_DTYPES}"
        blocks = max(1, length // block)
        return cls(
            state_tensor((slots, heads, length, dh), dtype, device),
            state_tensor((slots, heads, length, dh), dtype, device),
            state_tensor((slots, heads, blocks, dh), dtype, device),
            state_tensor((slots, heads, blocks, dh), dtype, device),
            torch.zeros(slots, num_selected, dtype=torch.long, device=device),
            torch.zeros(slots, num_selected, dtype=torch.bool, device=device),
        )


@dataclass
class CachedCall:
    """What one forward call with a cache extends: row i of the input holds `counts[i]` new
    positions of slot `slots[i]` (right-padded), which follow the `start[i]` positions the slot
    already holds (0: the slot is filled from scratch). The layer writes the new positions' keys,
    values, summaries and selection into `layer`, and leaves in `attended` what each row's last
    new position attended to (positions (B, S), gate-weighted mass summed over heads (B, S),
    mean branch gates (B, 3)), or None when it did not compute it: a fill from scratch takes the
    cheaper whole-sequence path unless `explain` asks for `attended`."""

    layer: LayerCache
    slots: torch.Tensor  # (B,) distinct
    start: torch.Tensor  # (B,)
    counts: torch.Tensor  # (B,) in 1..P
    explain: bool = False
    attended: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def positions(self, p: int) -> torch.Tensor:
        """(B, P) absolute positions of the input's columns; padding repeats each row's last."""
        ar = torch.arange(p, device=self.start.device)
        return torch.minimum(self.start[:, None] + ar, (self.start + self.counts - 1)[:, None])

    def new(self, p: int) -> torch.Tensor:
        """(B, P) which columns are real new positions (not padding)."""
        return torch.arange(p, device=self.counts.device)[None] < self.counts[:, None]
