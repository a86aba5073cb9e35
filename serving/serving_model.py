"""What the worker's core needs from a model, and the content baseline behind that interface.

`Recommender` talks to any `ServingModel`: it encodes catalogue records into item vectors, and
turns users' histories (catalogue rows, oldest first) into user vectors for inner-product search
over those item vectors, optionally with an explanation. Two implementations:

- `BaselineServingModel` (here): the untrained content baseline of the walking skeleton;
- `ResearchServingModel` (`serving/research_model.py`): a trained MUFASA / CAMMSR / SASRec checkpoint
  with batched incremental user state; `ProcessServingModel` (`serving/model_process.py`) serves
  one from a process of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from streamrec.models.cold_start import ColdStartConfig
from streamrec.models.content_baseline import ContentBaseline
from streamrec.stream.schemas import CatalogueRecord


@dataclass
class UserEncoding:
    """User vectors for a batch, and per user the history rows that weighed most (may be empty)."""

    vectors: np.ndarray  # (U, D) float32
    because_rows: list[list[int]] = field(default_factory=list)


@dataclass(frozen=True)
class UserHistory:
    """A user's stored history as catalogue rows (oldest first; only the latest `history_window`
    clicks when the model names one) and how many clicks it ever had."""

    user_id: str
    rows: list[int]
    total: int  # clicks ever appended, >= len(rows) once the sequence cap evicts old ones


class ServingModel(Protocol):
    @property
    def version(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode_items(self, records: list[CatalogueRecord]) -> np.ndarray:
        """(N, D) float32 item vectors; an all-zero row means the model cannot place the item."""
        ...

    def encode_users(
        self,
        histories: list[UserHistory],
        item_matrix: np.ndarray,
        explain: bool,
        changed_rows: np.ndarray | None = None,
    ) -> UserEncoding:
        """item_matrix (R, D): the vector of every catalogue row. changed_rows: the rows written since
        this model's previous call (None: not known), so a model that keeps its own copy of the
        matrix need not compare it."""
        ...

    def modality_weights(self, item_id: str) -> dict[str, float] | None:
        """How the item's representation weighs its modalities (None when the model has no gate)."""
        ...

    @property
    def history_window(self) -> int | None:
        """How many of a user's latest clicks `encode_users` reads (None: any of them). The caller
        maps only those to catalogue rows, so a click's cost does not grow with the user's history."""
        ...

    @property
    def cold_start(self) -> ColdStartConfig:
        """How items the model places by content alone are scored (models/cold_start.py)."""
        ...

    def placed_by_content(self, item_ids: list[str]) -> list[bool]:
        """Per item: whether the model has no trained ID row for it (its vector is content alone)."""
        ...

    def trained_clicks(self, item_ids: list[str]) -> list[int]:
        """Per item: the clicks the model's ID row for it was trained on, for items the model
        learned after they arrived (0 for all others); the evidence `fade_by="trained"` counts."""
        ...

    def close(self) -> None:
        """Release what the model holds outside this process (its own process, when it has one)."""
        ...


class BaselineServingModel:
    """The content baseline: hashed title/category/brand tokens, a recency-weighted mean for users."""

    def __init__(self, model: ContentBaseline) -> None:
        self.model = model

    @property
    def version(self) -> str:
        return self.model.version

    @property
    def dim(self) -> int:
        return self.model.cfg.dim

    def encode_items(self, records: list[CatalogueRecord]) -> np.ndarray:
        ids = [self.model.token_ids(r.title, r.category_path, r.brand) for r in records]
        return self.model.encode_items(ids).numpy()

    def encode_users(
        self,
        histories: list[UserHistory],
        item_matrix: np.ndarray,
        explain: bool,
        changed_rows: np.ndarray | None = None,
    ) -> UserEncoding:
        n = self.model.cfg.history
        batch = np.zeros((len(histories), n, self.dim), dtype=np.float32)  # (B, L, D) right-aligned
        mask = np.zeros((len(histories), n), dtype=bool)  # (B, L)
        for b, h in enumerate(histories):
            recent = _latest_placed(h.rows, item_matrix, n)
            if recent:
                batch[b, n - len(recent) :] = item_matrix[recent]
                mask[b, n - len(recent) :] = True
        users = self.model.encode_users(torch.from_numpy(batch), torch.from_numpy(mask)).numpy()
        because = [h.rows[-1:] for h in histories] if explain else []
        return UserEncoding(users, because)

    def modality_weights(self, item_id: str) -> dict[str, float] | None:
        return None

    @property
    def history_window(self) -> int | None:
        return None  # the latest `history` rows with a vector: how far back they reach is not known

    @property
    def cold_start(self) -> ColdStartConfig:
        return ColdStartConfig(fit="none")  # every item is content alone here: nothing to calibrate

    def placed_by_content(self, item_ids: list[str]) -> list[bool]:
        return [False] * len(item_ids)

    def trained_clicks(self, item_ids: list[str]) -> list[int]:
        return [0] * len(item_ids)

    def close(self) -> None:
        """Nothing outside this process."""


def _latest_placed(rows: list[int], item_matrix: np.ndarray, n: int) -> list[int]:
    """The last n of `rows` whose vector is not all zero, oldest first; reads from the end and
    stops at n, so the cost follows n, not the length of the history."""
    found: list[int] = []
    for r in reversed(rows):
        if np.any(item_matrix[r]):
            found.append(r)
            if len(found) == n:
                break
    return found[::-1]
