"""The worker's plain core: state + model + index, with no Kafka in sight.

Faust agents hand decoded records to `Recommender.apply_catalogue` and
`Recommender.handle_clicks` and send what comes back. Everything here is testable with in-memory
stores and an exact index.

Choice written down: clicks of one user inside one micro-batch are all answered from the user's
state after the whole batch (the freshest state); each click still yields its own recommendation
record carrying its own event id and event time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from streamrec.models.content_baseline import ContentBaseline
from streamrec.state.catalogue_store import CatalogueEntry, CatalogueStore
from streamrec.state.item_index import ItemIndex
from streamrec.state.sequence_store import ClickToAppend, SequenceStore
from streamrec.stream.schemas import (
    CatalogueRecord,
    ClickRecord,
    RecommendationRecord,
    RecordError,
    ScoredItem,
    now_ms,
)


@dataclass
class ClickBatchResult:
    recommendations: list[RecommendationRecord] = field(default_factory=list)
    # (position of the click in the batch, why it was rejected)
    rejected: list[tuple[int, RecordError]] = field(default_factory=list)
    duplicates: int = 0
    # seconds spent in the "state", "encode" and "search" stages of this batch
    stage_seconds: dict[str, float] = field(default_factory=dict)


class Recommender:
    """Applies catalogue records and clicks; returns recommendations."""

    def __init__(
        self,
        sequences: SequenceStore,
        catalogue: CatalogueStore,
        index: ItemIndex,
        model: ContentBaseline,
        top_k: int = 10,
    ) -> None:
        assert index.dim == catalogue.dim, "index and catalogue must share the vector size"
        self.sequences = sequences
        self.catalogue = catalogue
        self.index = index
        self.model = model
        self.top_k = top_k
        self._vectors: dict[int, np.ndarray] = {}
        rows, vecs = catalogue.active_vectors()
        if len(rows):
            index.upsert(rows, vecs)
        for entry in catalogue.active_entries():
            self._vectors[entry.row] = catalogue.vector(entry.item_id)

    @property
    def model_version(self) -> str:
        return self.model.version

    def title_of(self, item_id: str) -> str:
        entry = self.catalogue.get(item_id)
        return entry.title if entry is not None else item_id

    def apply_catalogue(self, records: list[CatalogueRecord]) -> int:
        """Upsert or withdraw items; returns how many items changed."""
        # Last record per item wins inside a batch.
        latest: dict[str, CatalogueRecord] = {}
        for rec in records:
            latest[rec.item_id] = rec
        upserts = [r for r in latest.values() if r.op == "upsert"]
        withdrawn = [r for r in latest.values() if r.op == "withdraw"]
        changed = 0
        if upserts:
            ids = [self.model.token_ids(r.title, r.category_path, r.brand) for r in upserts]
            vecs = self.model.encode_items(ids).numpy()  # (N, D)
            entries = [
                CatalogueEntry(r.item_id, -1, r.title, tuple(r.category_path), r.brand, r.price) for r in upserts
            ]
            entries = self.catalogue.put(entries, vecs)
            rows = np.array([e.row for e in entries], dtype=np.int64)
            self.index.upsert(rows, vecs)
            for row, vec in zip(rows, vecs, strict=True):
                self._vectors[int(row)] = vec
            changed += len(entries)
        for rec in withdrawn:
            entry = self.catalogue.withdraw(rec.item_id)
            if entry is not None:
                self.index.remove(np.array([entry.row], dtype=np.int64))
                self._vectors.pop(entry.row, None)
                changed += 1
        return changed

    def _user_vectors(self, histories: list[list[int]]) -> np.ndarray:
        """histories: B lists of item rows, oldest first -> (B, D) user vectors."""
        n = self.model.cfg.history
        dim = self.index.dim
        batch = np.zeros((len(histories), n, dim), dtype=np.float32)  # (B, L, D) right-aligned
        mask = np.zeros((len(histories), n), dtype=bool)  # (B, L)
        for b, rows in enumerate(histories):
            recent = [r for r in rows if r in self._vectors][-n:]
            for j, row in enumerate(recent):
                batch[b, n - len(recent) + j] = self._vectors[row]
                mask[b, n - len(recent) + j] = True
        users = self.model.encode_users(torch.from_numpy(batch), torch.from_numpy(mask))
        return users.numpy()

    def handle_clicks(self, clicks: list[ClickRecord]) -> ClickBatchResult:
        result = ClickBatchResult()
        valid: list[ClickRecord] = []
        for pos, click in enumerate(clicks):
            if self.catalogue.get(click.item_id) is None:
                result.rejected.append(
                    (pos, RecordError("unknown_item", f"item {click.item_id!r} is not in the catalogue"))
                )
            else:
                valid.append(click)
        if not valid:
            return result
        t0 = time.perf_counter()
        applied = self.sequences.append_many(
            [ClickToAppend(c.user_id, c.item_id, c.event_id, c.event_time) for c in valid]
        )
        result.duplicates = applied.count(False)
        users = list(dict.fromkeys(c.user_id for c in valid))
        histories = []
        for user in users:
            rows = []
            for item_id in self.sequences.sequence(user):
                entry = self.catalogue.get(item_id)
                if entry is not None:
                    rows.append(entry.row)
            histories.append(rows)
        t1 = time.perf_counter()
        queries = self._user_vectors(histories)  # (U, D)
        t2 = time.perf_counter()
        scores, ids = self.index.search(queries, self.top_k, [set(h) for h in histories])
        result.stage_seconds = {"state": t1 - t0, "encode": t2 - t1, "search": time.perf_counter() - t2}
        ranked: dict[str, list[ScoredItem]] = {}
        for u, user in enumerate(users):
            ranked[user] = [
                ScoredItem(self.catalogue.item_id_of(int(i)), round(float(s), 6))
                for s, i in zip(scores[u], ids[u], strict=True)
                if i >= 0
            ]
        emitted = now_ms()
        for click in valid:
            result.recommendations.append(
                RecommendationRecord(
                    user_id=click.user_id,
                    items=ranked[click.user_id],
                    model_version=self.model_version,
                    event_id=click.event_id,
                    event_time=click.event_time,
                    emitted_at=emitted,
                )
            )
        return result

    def close(self) -> None:
        self.sequences.close()
        self.catalogue.close()
