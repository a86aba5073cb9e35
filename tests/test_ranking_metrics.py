"""Full-ranking metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from streamrec.models.ranking_metrics import mask_history, metrics_from_ranks, target_rank


def test_ranks_by_hand() -> None:
    scores = torch.tensor([[-math.inf, 0.9, 0.5, 0.7, 0.1], [-math.inf, 0.2, 0.2, 0.9, 0.3]])
    # row 0: target item 2 (0.5) is beaten by 0.9 and 0.7 -> rank 3
    # row 1: target item 1 (0.2) ties with item 2 and is beaten by 0.9, 0.3 -> ties count against: rank 4
    assert target_rank(scores, torch.tensor([2, 1])).tolist() == [3, 4]


def test_metric_values_by_hand() -> None:
    m = metrics_from_ranks(torch.tensor([1, 3, 11]), ks=(5, 10))
    assert m["HR@5"] == pytest.approx(2 / 3)
    assert m["HR@10"] == pytest.approx(2 / 3)
    assert m["NDCG@5"] == pytest.approx((1 / math.log2(2) + 1 / math.log2(4)) / 3)
    assert m["MRR"] == pytest.approx((1 + 1 / 3 + 1 / 11) / 3)


def test_history_masking_keeps_the_target() -> None:
    scores = torch.tensor([[-math.inf, 0.9, 0.8, 0.7, 0.6]])
    history = torch.tensor([[1, 3, 0]])
    masked = mask_history(scores, history, torch.tensor([3]))
    assert masked[0, 1] == -math.inf and masked[0, 3] == 0.7, "history item 1 masked, target 3 kept"
    assert target_rank(masked, torch.tensor([3])).item() == 2
    assert target_rank(scores, torch.tensor([3])).item() == 3
