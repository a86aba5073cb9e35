"""Leave-one-out splits by time and padded mini-batches of item-row sequences.

Per user with at least 3 items, in time order: the last item is the test target (history: all
before it), the second-last the validation target (history: all before it), and the rest is
training data where every position predicts the next item. Item rows are 1..N; 0 is padding.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass
class Split:
    n_items: int
    train: list[list[int]]  # per user: the training prefix (>= 1 item)
    valid: list[tuple[list[int], int]]  # (history, target)
    test: list[tuple[list[int], int]]


def leave_one_out(sequences: list[list[int]], n_items: int) -> Split:
    train, valid, test = [], [], []
    for seq in sequences:
        if len(seq) < 3:
            continue
        train.append(seq[:-2])
        valid.append((seq[:-2], seq[-2]))
        test.append((seq[:-1], seq[-1]))
    return Split(n_items, train, valid, test)


def item_clicks(sequences: list[list[int]], n_items: int) -> torch.Tensor:
    """Clicks per item row (N+1,) over the sequences (row 0, padding, counts none)."""
    counts = torch.zeros(n_items + 1)
    for seq in sequences:
        counts += torch.bincount(torch.tensor(seq, dtype=torch.long), minlength=n_items + 1)[: n_items + 1]
    counts[0] = 0
    return counts


def pad_right(rows: list[list[int]], length: int) -> torch.Tensor:
    out = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r[-length:], dtype=torch.long)
    return out


def training_batches(
    train: list[list[int]], max_len: int, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(seqs, targets), both (B, max_len) right-padded: targets[t] is the item after seqs[:t+1]."""
    usable = [s for s in train if len(s) >= 2]
    order = torch.randperm(len(usable), generator=generator).tolist()
    for start in range(0, len(order), batch_size):
        chunk = [usable[i][-(max_len + 1) :] for i in order[start : start + batch_size]]
        yield pad_right([c[:-1] for c in chunk], max_len), pad_right([c[1:] for c in chunk], max_len)


def eval_batches(
    pairs: list[tuple[list[int], int]], max_len: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(seqs (B, L), lengths (B,), targets (B,), full histories (B, H)) for scoring the next item."""
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        hist = [h[-max_len:] for h, _ in chunk]
        seqs = pad_right(hist, max_len)
        lengths = torch.tensor([len(h) for h in hist])
        targets = torch.tensor([t for _, t in chunk])
        full = pad_right([h for h, _ in chunk], max(len(h) for h, _ in chunk))
        yield seqs, lengths, targets, full
