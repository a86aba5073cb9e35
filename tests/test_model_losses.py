"""Each auxiliary loss behaves as designed on toy cases."""

from __future__ import annotations

import torch

from streamrec.models.losses import info_nce, load_balance, structure_kl, uniformity, variance_covariance


def test_info_nce_rewards_alignment_and_respects_the_negative_mask() -> None:
    torch.manual_seed(0)
    a = torch.randn(8, 16)
    aligned = info_nce(a, a + 0.01 * torch.randn(8, 16), tau=0.1)
    shuffled = info_nce(a, a[torch.randperm(8)], tau=0.1)
    assert aligned < 0.05 < shuffled
    none = torch.zeros(8, 8, dtype=torch.bool)
    assert info_nce(a, a[torch.randperm(8)], tau=0.1, neg_mask=none) == 0, "no negatives: nothing to contrast"


def test_uniformity_prefers_spread_over_collapse() -> None:
    torch.manual_seed(0)
    spread = torch.randn(64, 8)
    collapsed = torch.ones(64, 8) + 0.01 * torch.randn(64, 8)
    assert uniformity(spread) < uniformity(collapsed)
    assert variance_covariance(spread) < variance_covariance(collapsed)


def test_structure_kl_is_zero_when_structures_match() -> None:
    torch.manual_seed(0)
    ref = torch.randn(16, 8)
    assert structure_kl(ref, ref * 2.0, tau=0.1).abs() < 1e-5, "same cosine structure"
    assert structure_kl(ref, torch.randn(16, 8), tau=0.1) > 0.1
    learned = torch.randn(16, 8, requires_grad=True)
    structure_kl(ref, learned, 0.1).backward()
    assert learned.grad is not None and learned.grad.abs().sum() > 0


def test_load_balance_is_one_when_balanced_and_higher_when_not() -> None:
    balanced = torch.eye(4).repeat(8, 1) * 0.7 + 0.075
    skewed = torch.tensor([[0.97, 0.01, 0.01, 0.01]]).repeat(32, 1)
    assert abs(float(load_balance(balanced)) - 1.0) < 1e-5
    assert float(load_balance(skewed)) > 3.5
