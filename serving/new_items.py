"""New items in serving: the items scored apart from the main index, and the exploration quota.

Two kinds of item are held here instead of the main index (issue 16, docs/models.md "New items"):

- items the served model places by content alone (no trained ID row), while their calibration has
  not faded out: their score goes through the model's new-item calibration (`models/cold_start.py`),
  which fades as clicks arrive (seen, or learned by the served model's ID row: `ColdStartConfig.fade_by`)
  and, with `ColdStartConfig.impressions_per_click`, as the item is shown without being clicked;
- when the exploration quota is on, every item younger than `ExploreConfig.max_age_s`, so that up
  to `ExploreConfig.slots` of the K slots can be given to the best of them by content score.

An item leaves when it has neither reason any more; the caller then puts it into the main index.
Evidence survives restarts: clicks and impressions per item come from the sequence store, the
clicks a version's ID row was trained on from that version's metadata. The age counts from when
this worker's catalogue first stored the item. Plain numpy and torch, no Kafka.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from streamrec.models.cold_start import ColdStartConfig, calibrated_scores, calibration_spent


@dataclass(frozen=True)
class ExploreConfig:
    slots: int = 0  # at most this many of the K slots go to young items; 0 = off
    max_age_s: float = 86_400.0  # items younger than this may take an exploration slot

    def __post_init__(self) -> None:
        assert self.slots >= 0, "explore slots must be >= 0"
        assert self.max_age_s > 0, "explore max age must be positive"


@dataclass(frozen=True)
class FadeConfig:
    """The deployment's part of the new-item calibration (settings `STREAMREC_NEW_ITEM_*`): it
    overrides the serving-only fields of the model's `ColdStartConfig`."""

    fade_by: str = "clicks"  # "clicks" seen, or "trained": clicks the served model's ID row learned
    impressions_per_click: int = 0  # 0 = no fade by impressions

    def apply(self, cold: ColdStartConfig) -> ColdStartConfig:
        return replace(cold, fade_by=self.fade_by, impressions_per_click=self.impressions_per_click)


@dataclass
class _Fresh:
    item_id: str
    by_content: bool  # placed by content alone under the served model
    first_seen_s: float
    clicks: int
    impressions: int = 0
    trained: int = 0  # clicks the served model's ID row for the item was trained on

    def evidence(self, cold: ColdStartConfig) -> int:
        return self.trained if cold.fade_by == "trained" else self.clicks


@dataclass
class Ranked:
    """Top-k per user after merging the main index's answer with the new items."""

    scores: np.ndarray  # (U, k) float32, -inf where fewer than k items
    ids: np.ndarray  # (U, k) int64, -1 where fewer than k items
    new: np.ndarray  # (U, k) bool: the slot holds an item placed by content and calibrated
    explore: np.ndarray  # (U, k) bool: the slot was given by the exploration quota


class NewItems:
    """The rows held apart from the main index, and how their scores join its answers."""

    def __init__(self, cold: ColdStartConfig, explore: ExploreConfig) -> None:
        self.cold = cold
        self.explore = explore
        self._fresh: dict[int, _Fresh] = {}

    def __len__(self) -> int:
        return len(self._fresh)

    def __contains__(self, row: int) -> bool:
        return row in self._fresh

    def _wanted(self, f: _Fresh, now_s: float) -> bool:
        calibrated = (
            self.cold.active
            and f.by_content
            and not calibration_spent(f.evidence(self.cold), f.impressions, self.cold, f.clicks)
        )
        young = self.explore.slots > 0 and now_s - f.first_seen_s < self.explore.max_age_s
        return calibrated or young

    def offer(
        self,
        row: int,
        item_id: str,
        by_content: bool,
        first_seen_s: float,
        clicks: int,
        now_s: float,
        impressions: int = 0,
        trained: int = 0,
    ) -> bool:
        """Hold the item if it is new in either sense; returns whether it is held."""
        f = _Fresh(item_id, by_content, first_seen_s, clicks, impressions, trained)
        if self._wanted(f, now_s):
            self._fresh[row] = f
            return True
        self._fresh.pop(row, None)
        return False

    def remove(self, row: int) -> None:
        self._fresh.pop(row, None)

    def set_clicks(self, row: int, clicks: int) -> None:
        if row in self._fresh:
            self._fresh[row].clicks = clicks

    def add_impressions(self, ids: np.ndarray) -> dict[str, int]:
        """ids (U, k) rows shown, one row of ids per emitted list: counts the impressions of held
        items and returns them by item id (to be stored as evidence)."""
        shown, n = np.unique(ids[ids >= 0], return_counts=True)
        out: dict[str, int] = {}
        for row, count in zip(shown.tolist(), n.tolist(), strict=True):
            f = self._fresh.get(row)
            if f is not None:
                f.impressions += count
                out[f.item_id] = count
        return out

    def release(self, now_s: float) -> list[int]:
        """Rows that no longer need holding (calibration spent, too old), removed; index them."""
        done = [row for row, f in self._fresh.items() if not self._wanted(f, now_s)]
        for row in done:
            del self._fresh[row]
        return done

    def rank(
        self,
        users: np.ndarray,
        main_scores: np.ndarray,
        main_ids: np.ndarray,
        matrix: np.ndarray,
        exclude: list[set[int]],
        k: int,
        now_s: float,
    ) -> Ranked:
        """users (U, D); main_scores, main_ids (U, k) from the main index (which does not hold
        these rows); matrix (R, D) every row's vector; exclude: each user's history rows."""
        u = users.shape[0]
        new = np.zeros((u, k), dtype=bool)
        explore = np.zeros((u, k), dtype=bool)
        if not self._fresh:
            return Ranked(main_scores, main_ids, new, explore)
        rows = np.fromiter(self._fresh, dtype=np.int64, count=len(self._fresh))  # (P,)
        fresh = [self._fresh[int(r)] for r in rows]
        raw = torch.from_numpy(np.ascontiguousarray(users @ matrix[rows].T, dtype=np.float32))  # (U, P)
        by_content = np.array([f.by_content for f in fresh])
        full = self.cold.full_evidence  # items held only to explore are not calibrated
        evidence = torch.tensor([f.evidence(self.cold) if f.by_content else full for f in fresh])
        clicks = torch.tensor([f.clicks for f in fresh])
        shown = torch.tensor([f.impressions for f in fresh])
        if self.cold.active:
            scored = calibrated_scores(raw, evidence, self.cold, shown, clicks).numpy()
        else:
            scored = raw.numpy().copy()
        young = np.array([now_s - f.first_seen_s < self.explore.max_age_s for f in fresh])
        position = {int(r): j for j, r in enumerate(rows)}
        for b in range(u):
            seen = [position[r] for r in exclude[b] if r in position]  # the user's history, never recommended
            scored[b, seen] = -np.inf
        cand_scores = np.concatenate([main_scores, scored], axis=1)  # (U, k + P)
        cand_ids = np.concatenate([main_ids, np.broadcast_to(rows, (u, len(rows)))], axis=1)
        order = np.argsort(-cand_scores, axis=1, kind="stable")[:, :k]
        out_scores = np.take_along_axis(cand_scores, order, axis=1).astype(np.float32)
        out_ids = np.take_along_axis(cand_ids, order, axis=1)
        from_pool = order >= main_scores.shape[1]
        pool_pos = np.where(from_pool, order - main_scores.shape[1], 0)
        new[:] = from_pool & by_content[pool_pos] & self.cold.active & np.isfinite(out_scores)
        out_ids[~np.isfinite(out_scores)] = -1
        if self.explore.slots and young.any():
            self._fill_quota(raw.numpy(), scored, rows, young, out_scores, out_ids, explore, k)
        return Ranked(out_scores, out_ids, new, explore)

    def _fill_quota(
        self,
        raw: np.ndarray,
        scored: np.ndarray,
        rows: np.ndarray,
        young: np.ndarray,
        out_scores: np.ndarray,
        out_ids: np.ndarray,
        explore: np.ndarray,
        k: int,
    ) -> None:
        """Give up to `slots` of each user's k slots to young items not already there, best by
        content score (raw u.v), replacing the lowest-ranked other items; those slots are flagged."""
        young_rows = set(rows[young].tolist())
        quota = min(self.explore.slots, k)
        for b in range(len(out_ids)):
            have = sum(1 for i in out_ids[b] if int(i) in young_rows)
            want = quota - have
            if want <= 0:
                continue
            listed = set(out_ids[b].tolist())
            choice = [
                j
                for j in np.argsort(-raw[b], kind="stable").tolist()
                if young[j] and np.isfinite(scored[b, j]) and int(rows[j]) not in listed
            ][:want]
            # Replace from the bottom, never a young item already placed on its own merit.
            slots = [s for s in range(k - 1, -1, -1) if int(out_ids[b, s]) not in young_rows][: len(choice)]
            for s, j in zip(sorted(slots), choice, strict=False):
                out_ids[b, s] = rows[j]
                out_scores[b, s] = scored[b, j]
                explore[b, s] = True
