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

so an item with `full_evidence` clicks is scored like any other. Optionally (`id_map`) the new
item's missing ID vector is first predicted from its content by a ridge map fitted on warm items.
The fit is a grid search over (scale, offset), choosing by default the best warm validation
NDCG@10 whose cold one is at least `cold_share` of it (`fit="cold_share"`, chosen by measurement:
docs/models.md); or the best cold validation NDCG@10 that keeps the warm targets' validation
NDCG@10 at `warm_floor` of what it is when no new item competes (`fit="warm_floor"`); or the one
that maximises NDCG@10 over all validation targets (`fit="pooled"`). Offsets are tried between -2
and +2 times the median gap between a user's 10th-best warm score and best new-item score (a
content-only score may as well be too high as too low).

Serving only (offline every new item has no clicks and no impressions):

- which clicks fade the calibration is `fade_by`: "clicks", every click seen since the item
  joined, or "trained", the clicks the served model's ID row for the item was trained on (the
  online trainer records them; a frozen model has none). The calibration stands in for a missing
  ID row, so under "trained" it leaves exactly as that row is learned;
- it can also fade by *impressions without clicks* (`impressions_per_click`, off by default): an
  item shown m times with n clicks keeps f times max(0, 1 - m / (impressions_per_click (n + 1))),
  since an item many users were shown and did not click has shown that the prior was wrong for it.

Both were measured live (docs/results.md, "Live: what fades the calibration"); the defaults are
"clicks" and off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch

from streamrec.models.ranking_metrics import target_rank

FITS = ("warm_floor", "cold_share", "pooled", "none")
FADES = ("clicks", "trained")


@dataclass(frozen=True)
class ColdStartConfig:
    scale: float = 1.0  # multiplies a new item's content-only score u.v
    offset: float = 0.0  # added to it: the prior for new items that content cannot carry
    full_evidence: int = 20  # clicks after which an item is scored like any other
    fit: str = "cold_share"  # "cold_share", "warm_floor", "pooled" or "none": how scale and offset are chosen
    warm_floor: float = 0.97  # "warm_floor": keep warm validation NDCG@10 at this share of its level without new items
    # "cold_share": the best warm validation NDCG@10 among the points whose cold validation NDCG@10
    # is at least this share of their warm one (new items get a guaranteed share of quality).
    cold_share: float = 0.5
    # An ID vector predicted from content for items without one (a ridge map fitted on warm items
    # after training, `fit_id_map`), instead of the zero row; MUFASA and content-SASRec only.
    id_map: bool = False
    # Serving only: impressions a new item may take per click it has, plus one, before its
    # calibration is gone (see the module docstring); 0 = off. Offline there are no impressions.
    impressions_per_click: int = 0
    # Serving only: which clicks fade the calibration, "clicks" (seen) or "trained" (learned by the
    # served model's ID row); see the module docstring. Offline every new item has none of either.
    fade_by: str = "clicks"

    def __post_init__(self) -> None:
        assert self.fit in FITS, f"fit must be one of {FITS}"
        assert self.scale > 0, "scale must be positive (it must keep the content order of new items)"
        assert self.full_evidence >= 1, "full_evidence must be at least 1 click"
        assert self.impressions_per_click >= 0, "impressions_per_click must be >= 0 (0 = off)"
        assert self.fade_by in FADES, f"fade_by must be one of {FADES}"

    @property
    def active(self) -> bool:
        return self.scale != 1.0 or self.offset != 0.0


def evidence_fade(
    evidence: torch.Tensor,
    cfg: ColdStartConfig,
    impressions: torch.Tensor | None = None,
    clicks: torch.Tensor | None = None,
) -> torch.Tensor:
    """evidence (...,) the clicks that count under `fade_by` -> weight (...,) of the calibration: 1
    at none, falling linearly to 0 at `full_evidence`; with `impressions` (...,) and
    `impressions_per_click` on, also falling linearly to 0 at that many impressions per click seen
    plus one (`clicks` (...,), the clicks seen; the evidence when not given)."""
    f = (1.0 - evidence.float() / cfg.full_evidence).clamp(0.0, 1.0)
    if impressions is not None and cfg.impressions_per_click > 0:
        seen = evidence if clicks is None else clicks
        budget = cfg.impressions_per_click * (seen.float() + 1.0)
        f = f * (1.0 - impressions.float() / budget).clamp(0.0, 1.0)
    return f


def calibrated_scores(
    raw: torch.Tensor,
    evidence: torch.Tensor,
    cfg: ColdStartConfig,
    impressions: torch.Tensor | None = None,
    clicks: torch.Tensor | None = None,
) -> torch.Tensor:
    """raw (B, M) inner products with M new items, evidence (M,) and optionally impressions and
    clicks seen (M,) as in `evidence_fade` -> calibrated scores (B, M)."""
    f = evidence_fade(evidence, cfg, impressions, clicks)  # (M,)
    return raw * (1.0 + (cfg.scale - 1.0) * f) + cfg.offset * f


def calibration_spent(evidence: int, impressions: int, cfg: ColdStartConfig, clicks: int | None = None) -> bool:
    """Whether an item's calibration has faded out entirely (`evidence_fade` at 0): it is then
    scored like any other."""
    if evidence >= cfg.full_evidence:
        return True
    seen = evidence if clicks is None else clicks
    return cfg.impressions_per_click > 0 and impressions >= cfg.impressions_per_click * (seen + 1)


def fit_id_map(content: torch.Tensor, ids: torch.Tensor, ridge: float = 1.0) -> torch.Tensor:
    """Ridge regression of ID vectors on content vectors over warm items: content (N, D), ids
    (N, D) -> map (D + 1, D), the last row a bias. A new item's predicted ID vector is
    `map_ids(content, map)`: where warm items with similar content sit, popularity included."""
    x = torch.cat([content, torch.ones(len(content), 1, dtype=content.dtype)], dim=1)  # (N, D+1)
    gram = x.T @ x + ridge * torch.eye(x.shape[1], dtype=content.dtype)
    return torch.linalg.solve(gram, x.T @ ids)  # (D+1, D)


def map_ids(content: torch.Tensor, id_map: torch.Tensor) -> torch.Tensor:
    """content (N, D), id_map (D+1, D) -> predicted ID vectors (N, D)."""
    return content @ id_map[:-1] + id_map[-1]


ScoreBatches = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]


@torch.no_grad()
def ndcg10_reference(scores: ScoreBatches, new_rows: torch.Tensor, scale: float, offsets: torch.Tensor) -> torch.Tensor:
    """Mean NDCG@10 for each offset at one scale, by re-ranking the whole catalogue per offset (the
    readable reference of `ndcg10_by_offset`). `scores()` yields history-masked scores (B, N+1),
    new items scored by content alone, and targets (B,)."""
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


@torch.no_grad()
def ndcg10_by_offset(scores: ScoreBatches, new_rows: torch.Tensor, scale: float, offsets: torch.Tensor) -> torch.Tensor:
    """Same figures as `ndcg10_reference`, counting only what an offset changes: a warm
    target's rank moves with the new items' scores only, and a new target's with the warm items'
    (its place among new items does not move: the map is increasing). rank = #(scores >= target's),
    the target included, as `target_rank` counts ties against it."""
    total = torch.zeros(len(offsets), dtype=torch.float64)
    n = 0
    for s, targets in scores():
        n += len(targets)
        is_new = torch.zeros(s.shape[1], dtype=torch.bool)
        is_new[new_rows] = True
        t = s.gather(1, targets[:, None])  # (B, 1)
        new_target = is_new[targets]  # (B,)
        warm_s, new_s = s[:, ~is_new], s[:, is_new]  # (B, W), (B, M)
        w_rows, n_rows = ~new_target, new_target
        warm_fixed = (warm_s[w_rows] >= t[w_rows]).sum(1)  # (Bw,) the target itself included
        new_fixed = (new_s[n_rows] >= t[n_rows]).sum(1)  # (Bn,) the target itself included
        for j, b in enumerate(offsets.tolist()):
            rank_w = warm_fixed + (new_s[w_rows] * scale + b >= t[w_rows]).sum(1)
            rank_n = new_fixed + (warm_s[n_rows] >= t[n_rows] * scale + b).sum(1)
            rank = torch.cat([rank_w, rank_n]).double()
            total[j] += ((rank <= 10).double() / torch.log2(rank + 1)).sum()
    return total / max(1, n)


@dataclass(frozen=True)
class CalibrationGrid:
    """Validation NDCG@10 of warm and cold targets at every (scale, offset) tried."""

    points: list[dict]  # {"scale", "offset", "warm_ndcg10", "cold_ndcg10"}
    warm_alone: float  # warm validation NDCG@10 when no new item competes (each scored -inf)
    n_warm: int  # validation pairs whose target is warm
    n_cold: int  # ... and held out of training

    def choose(self, cfg: ColdStartConfig) -> ColdStartConfig:
        """`cfg` with the (scale, offset) its `fit` rule picks from the grid."""
        if cfg.fit == "none" or not self.points:
            return cfg
        grid = self.points
        if cfg.fit == "pooled":
            best = max(grid, key=lambda g: g["warm_ndcg10"] * self.n_warm + g["cold_ndcg10"] * self.n_cold)
        elif cfg.fit == "cold_share":
            allowed = [g for g in grid if g["cold_ndcg10"] >= cfg.cold_share * g["warm_ndcg10"]]
            if not allowed:  # no point gives new items that share: the one that comes closest
                allowed = [max(grid, key=lambda g: g["cold_ndcg10"] / max(1e-12, g["warm_ndcg10"]))]
            best = max(allowed, key=lambda g: (g["warm_ndcg10"], g["cold_ndcg10"]))
        else:
            allowed = [g for g in grid if g["warm_ndcg10"] >= cfg.warm_floor * self.warm_alone]
            if not allowed:  # every point costs warm items more: the one that costs least
                allowed = [max(grid, key=lambda g: g["warm_ndcg10"])]
            best = max(allowed, key=lambda g: (g["cold_ndcg10"], g["warm_ndcg10"]))
        return replace(cfg, scale=best["scale"], offset=best["offset"])


def calibration_grid(warm: ScoreBatches, cold: ScoreBatches, new_rows: torch.Tensor) -> CalibrationGrid:
    """Every (scale, offset) tried on validation: `warm` and `cold` yield history-masked score
    batches for validation pairs whose target is a warm / a held-out item (B, N+1), with
    held-out items scored by content alone."""
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
        w, c = ndcg10_by_offset(warm, new_rows, scale, offsets), ndcg10_by_offset(cold, new_rows, scale, offsets)
        for j, b in enumerate(offsets.tolist()):
            grid.append({"scale": scale, "offset": round(b, 5), "warm_ndcg10": float(w[j]), "cold_ndcg10": float(c[j])})
    warm_alone = float(ndcg10_by_offset(warm, new_rows, 1.0, torch.tensor([float("-inf")]))[0])
    n_warm = sum(len(t) for _, t in warm())
    n_cold = sum(len(t) for _, t in cold())
    return CalibrationGrid(grid, warm_alone, n_warm, n_cold)
