"""New items: how an item with no ID evidence is scored beside warm items (issue 16).

Neither paper says how its item representation ranks an item that has no ID history. Ours places
such an item by its content alone (ID row zero, `SeqRecConfig.id_dropout` trains that path), and
measurement showed why that is not enough: a warm item's ID embedding carries the popularity the
new item lacks, so content-only items score on a lower scale and almost never reach the top 10
(docs/results.md, "Cold start"). The choice made here, by measurement (docs/models.md, "New
items"), is a *calibration* of the content-only score:

    score(new item) = scale * u.v + offset            (no clicks yet)

fitted on validation pairs whose target is an item held out of training, and faded out as the
item gathers evidence: with n clicks seen since it joined, f = max(0, 1 - n / full_evidence) and

    score = u.v * (1 + (scale - 1) f) + offset * f,

so an item with `full_evidence` clicks is scored like any other. The fit is a grid search over
(scale, offset) that keeps validation NDCG@10 of warm targets at `warm_floor` of the uncalibrated
model (or maximises NDCG@10 over all validation targets, `fit="pooled"`).
Offsets are tried between -2 and +2 times the median gap between a user's 10th-best warm score and
best new-item score (a content-only score may as well be too high as too low).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch

from streamrec.models.ranking_metrics import target_rank


@dataclass(frozen=True)
class ColdStartConfig:
    scale: float = 1.0  # multiplies a new item's content-only score u.v
    offset: float = 0.0  # added to it: the prior for new items that content cannot carry
    full_evidence: int = 20  # clicks after which an item is scored like any other
    fit: str = "warm_floor"  # "warm_floor", "pooled" or "none": how scale and offset are chosen
    warm_floor: float = 0.98  # "warm_floor": keep warm validation NDCG@10 at this share of uncalibrated

    def __post_init__(self) -> None:
        assert self.fit in ("warm_floor", "pooled", "none"), "fit: warm_floor, pooled or none"
        assert self.scale > 0, "scale must be positive (it must keep the content order of new items)"
        assert self.full_evidence >= 1, "full_evidence must be at least 1 click"

    @property
    def active(self) -> bool:
        return self.scale != 1.0 or self.offset != 0.0


def evidence_fade(clicks: torch.Tensor, cfg: ColdStartConfig) -> torch.Tensor:
    """clicks (...,) seen since an item joined -> weight (...,) of the calibration: 1 at no
    clicks, falling linearly to 0 at `full_evidence` clicks."""
    return (1.0 - clicks.float() / cfg.full_evidence).clamp(0.0, 1.0)


def calibrated_scores(raw: torch.Tensor, clicks: torch.Tensor, cfg: ColdStartConfig) -> torch.Tensor:
    """raw (B, M) inner products with M new items, clicks (M,) -> calibrated scores (B, M)."""
    f = evidence_fade(clicks, cfg)  # (M,)
    return raw * (1.0 + (cfg.scale - 1.0) * f) + cfg.offset * f


ScoreBatches = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]


@torch.no_grad()
def _ndcg10(scores: ScoreBatches, new_rows: torch.Tensor, scale: float, offsets: torch.Tensor) -> torch.Tensor:
    """Mean NDCG@10 for each offset at one scale; `scores()` yields history-masked scores (B, N+1)
    of content-only new items and targets (B,)."""
    total = torch.zeros(len(offsets), dtype=torch.float64)
    n = 0
    for s, targets in scores():
        n += len(targets)
        for j, b in enumerate(offsets.tolist()):
            adj = s.clone()
            adj[:, new_rows] = s[:, new_rows] * scale + b
            rank = target_rank(adj, targets).double()
            total[j] += ((rank <= 10).double() / torch.log2(rank + 1)).sum()
    return total / max(1, n)


def fit_calibration(
    warm: ScoreBatches, cold: ScoreBatches, new_rows: torch.Tensor, cfg: ColdStartConfig
) -> tuple[ColdStartConfig, list[dict]]:
    """Choose (scale, offset) on validation: `warm` and `cold` yield history-masked score batches
    for validation pairs whose target is a warm / a held-out item (B, N+1), with held-out items
    scored by content alone. Returns the chosen config and every grid point tried."""
    if cfg.fit == "none":
        return cfg, []
    first, _ = next(warm())  # (B, N+1) history-masked
    is_new = torch.zeros(first.shape[1], dtype=torch.bool)
    is_new[new_rows] = True
    grid: list[dict] = []
    for scale in (0.5, 0.75, 1.0, 1.25, 1.5, 2.0):
        # Offsets span the typical gap between a user's 10th warm score and best new score.
        tenth_warm = first.masked_fill(is_new, float("-inf")).topk(10, dim=1).values[:, -1]
        best_new = (first[:, new_rows] * scale).max(dim=1).values
        gap = max(1e-3, abs(float((tenth_warm - best_new).median())))
        offsets = torch.cat([torch.zeros(1), torch.linspace(-2.0 * gap, 2.0 * gap, 40)])
        w, c = _ndcg10(warm, new_rows, scale, offsets), _ndcg10(cold, new_rows, scale, offsets)
        for j, b in enumerate(offsets.tolist()):
            grid.append({"scale": scale, "offset": round(b, 5), "warm_ndcg10": float(w[j]), "cold_ndcg10": float(c[j])})
    base = next(g for g in grid if g["scale"] == 1.0 and g["offset"] == 0.0)
    n_warm = sum(len(t) for _, t in warm())
    n_cold = sum(len(t) for _, t in cold())
    if cfg.fit == "pooled":
        best = max(grid, key=lambda g: g["warm_ndcg10"] * n_warm + g["cold_ndcg10"] * n_cold)
    else:
        allowed = [g for g in grid if g["warm_ndcg10"] >= cfg.warm_floor * base["warm_ndcg10"]]
        best = max(allowed, key=lambda g: (g["cold_ndcg10"], g["warm_ndcg10"]))
    return replace(cfg, scale=best["scale"], offset=best["offset"]), grid
