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
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from streamrec.serving.new_items import ExploreConfig, FadeConfig, NewItems
from streamrec.serving.serving_model import ServingModel, UserHistory
from streamrec.state.catalogue_store import CatalogueEntry, CatalogueStore
from streamrec.state.item_index import ItemIndex
from streamrec.state.sequence_store import ClickToAppend, SequenceStore
from streamrec.stream.schemas import (
    CatalogueRecord,
    ClickRecord,
    Explanation,
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


@dataclass
class PreparedModel:
    """A new model with every catalogue item's vector computed and a second index filled."""

    model: ServingModel
    index: ItemIndex
    matrix: np.ndarray  # (rows, D)
    entries: list[CatalogueEntry]
    vectors: np.ndarray  # (N, D), one per entry
    seconds: float
    new_items: NewItems  # the rows this model scores apart from its index


class Recommender:
    """Applies catalogue records and clicks; returns recommendations."""

    def __init__(
        self,
        sequences: SequenceStore,
        catalogue: CatalogueStore,
        index: ItemIndex,
        model: ServingModel,
        top_k: int = 10,
        explain: bool = True,
        explore: ExploreConfig | None = None,
        clock: Callable[[], float] = time.time,
        fade: FadeConfig | None = None,
    ) -> None:
        assert index.dim == catalogue.dim == model.dim, "index, catalogue and model must share the vector size"
        self.sequences = sequences
        self.catalogue = catalogue
        self.index = index
        self.model = model
        self.top_k = top_k
        self.explain = explain
        self.explore = explore or ExploreConfig()
        self.fade = fade or FadeConfig()  # how new items' calibration fades (ColdStartConfig)
        self.clock = clock  # wall seconds: new items' ages (tests pass their own)
        self._matrix = np.zeros((1024, model.dim), dtype=np.float32)  # (rows, D): every catalogue row's vector
        self._written: set[int] = set()  # rows of the matrix set since the model last encoded users
        # Items changed while a new model is being prepared (None when no swap is under way).
        self._changed_during_swap: set[str] | None = None
        entries = catalogue.all_entries()
        if entries and catalogue.vectors_version != model.version:
            # Stored vectors came from another model: recompute them from the stored content.
            records = [_record_of(e) for e in entries]
            catalogue.put(entries, self._encode(records))
        catalogue.vectors_version = model.version
        for e in entries:
            self._set_row(e.row, catalogue.vector(e.item_id))
        self.new_items = self._new_items_for(model, [e for e in entries if e.active])
        rows, vecs = catalogue.active_vectors()
        searchable = np.linalg.norm(vecs, axis=1) > 0 if len(rows) else np.zeros(0, dtype=bool)
        searchable &= np.array([int(r) not in self.new_items for r in rows], dtype=bool)
        if searchable.any():
            index.upsert(rows[searchable], vecs[searchable])

    def _new_items_for(self, model: ServingModel, entries: list[CatalogueEntry]) -> NewItems:
        """The items `model` scores apart from its index, with their evidence from the state."""
        held = NewItems(self.fade.apply(model.cold_start), self.explore)
        if entries:
            now = self.clock()
            ids = [e.item_id for e in entries]
            by_content = model.placed_by_content(ids)
            trained = model.trained_clicks(ids)
            for e, content, n in zip(entries, by_content, trained, strict=True):
                self._offer(held, e, content, now, n)
        return held

    def _offer(self, held: NewItems, e: CatalogueEntry, by_content: bool, now: float, trained: int) -> bool:
        """Offer an entry to `held` with its evidence; an item that arrived unseen stays calibrated
        under any later model. Returns whether it is held."""
        clicks = self.sequences.item_clicks(e.item_id)
        shown = self.sequences.item_impressions(e.item_id)
        first_seen = e.first_seen_ms / 1000
        return held.offer(e.row, e.item_id, by_content or e.arrived_unseen, first_seen, clicks, now, shown, trained)

    @property
    def model_version(self) -> str:
        return self.model.version

    def _encode(self, records: list[CatalogueRecord]) -> np.ndarray:
        out = []
        for start in range(0, len(records), 1024):
            out.append(self.model.encode_items(records[start : start + 1024]))
        return np.concatenate(out).astype(np.float32)

    def _set_row(self, row: int, vec: np.ndarray) -> None:
        self._matrix = _set_row(self._matrix, row, vec)
        self._written.add(row)

    # --- model swap ----------------------------------------------------------------------------

    def prepare_model(self, model: ServingModel) -> PreparedModel:
        """Every catalogue item encoded by `model` into a second index, without touching what is
        served. Safe to run in a worker thread while the event loop keeps serving; items changed
        meanwhile are recorded and redone by `swap_model`."""
        assert model.dim == self.index.dim, "a swapped-in model must keep the vector size"
        started = time.perf_counter()
        self._changed_during_swap = set()
        entries = self.catalogue.all_entries()
        records = [_record_of(e) for e in entries]
        vecs = np.zeros((0, model.dim), dtype=np.float32)
        if records:
            vecs = np.concatenate(
                [model.encode_items(records[i : i + 1024]) for i in range(0, len(records), 1024)]
            ).astype(np.float32)  # (N, D)
        matrix = np.zeros((max(1024, len(self._matrix)), model.dim), dtype=np.float32)
        index = self.index.empty_like()
        held = self._new_items_for(model, [e for e in entries if e.active])
        keep = [i for i, e in enumerate(entries) if e.active and np.linalg.norm(vecs[i]) > 0 and e.row not in held]
        for e, v in zip(entries, vecs, strict=True):
            matrix = _set_row(matrix, e.row, v)
        if keep:
            index.upsert(np.array([entries[i].row for i in keep], dtype=np.int64), vecs[keep])
        return PreparedModel(model, index, matrix, entries, vecs, time.perf_counter() - started, held)

    def swap_model(self, prepared: PreparedModel) -> int:
        """Serve `prepared` from the next batch on (call between batches, in the serving thread).
        Returns how many items changed during preparation and were re-encoded here."""
        changed = sorted(self._changed_during_swap or ())
        self._changed_during_swap = None
        model, index, matrix, held = prepared.model, prepared.index, prepared.matrix, prepared.new_items
        redo = [e for e in (self.catalogue.get(i) for i in changed) if e is not None]
        if redo:
            records = [_record_of(e) for e in redo]
            vecs = model.encode_items(records)
            by_content = model.placed_by_content([e.item_id for e in redo])
            trained = model.trained_clicks([e.item_id for e in redo])
            now = self.clock()
            for e, v, content, n in zip(redo, vecs, by_content, trained, strict=True):
                matrix = _set_row(matrix, e.row, v)
                rows = np.array([e.row], dtype=np.int64)
                if e.active and self._offer(held, e, content, now, n):
                    index.remove(rows)
                elif e.active and np.linalg.norm(v) > 0:
                    index.upsert(rows, v[None])
                else:
                    held.remove(e.row)
                    index.remove(rows)
        old = self.model
        self.model, self.index, self._matrix, self.new_items = model, index, matrix, held
        self._written.clear()  # the new model has not seen any matrix: its first call takes it whole
        old.close()
        # Stored vectors follow the served model, so a restart does not recompute them.
        if prepared.entries:
            self.catalogue.put(prepared.entries, prepared.vectors)
        if redo:
            self.catalogue.put(redo, np.stack([matrix[e.row] for e in redo]))
        self.catalogue.vectors_version = model.version
        return len(redo)

    def title_of(self, item_id: str) -> str:
        entry = self.catalogue.get(item_id)
        return entry.title if entry is not None else item_id

    def apply_catalogue(self, records: list[CatalogueRecord]) -> int:
        """Upsert or withdraw items; returns how many items changed."""
        # Last record per item wins inside a batch.
        latest: dict[str, CatalogueRecord] = {}
        for rec in records:
            latest[rec.item_id] = rec
        if self._changed_during_swap is not None:
            self._changed_during_swap.update(latest)
        upserts = [r for r in latest.values() if r.op == "upsert"]
        withdrawn = [r for r in latest.values() if r.op == "withdraw"]
        changed = 0
        if upserts:
            now = self.clock()
            vecs = self._encode(upserts)  # (N, D)
            unseen = self.model.placed_by_content([r.item_id for r in upserts])
            trained = self.model.trained_clicks([r.item_id for r in upserts])
            entries = [
                CatalogueEntry(
                    r.item_id,
                    -1,
                    r.title,
                    tuple(r.category_path),
                    r.brand,
                    r.price,
                    first_seen_ms=int(now * 1000),
                    arrived_unseen=content,
                )
                for r, content in zip(upserts, unseen, strict=True)
            ]
            entries = self.catalogue.put(entries, vecs)  # an item already known keeps its arrival
            rows = np.array([e.row for e in entries], dtype=np.int64)
            for row, vec in zip(rows, vecs, strict=True):
                self._set_row(int(row), vec)
            # A model that cannot place an item (an ID-only model and an unseen item) gives it a
            # zero vector: such items are kept in the catalogue but are not searchable.
            placed = np.linalg.norm(vecs, axis=1) > 0
            # New items (short of evidence, or young enough to explore) are scored apart.
            for i, (e, content, n) in enumerate(zip(entries, unseen, trained, strict=True)):
                if placed[i] and self._offer(self.new_items, e, content, now, n):
                    placed[i] = False
            if placed.any():
                self.index.upsert(rows[placed], vecs[placed])
            if (~placed).any():
                self.index.remove(rows[~placed])
            changed += len(entries)
        for rec in withdrawn:
            entry = self.catalogue.withdraw(rec.item_id)
            if entry is not None:
                self.new_items.remove(entry.row)
                self.index.remove(np.array([entry.row], dtype=np.int64))
                changed += 1
        return changed

    def catch_up(self, clicks: list[ClickRecord], positions: dict[int, int]) -> int:
        """Apply clicks another worker already answered (after a partition move): state only, no
        recommendations. Returns how many were new."""
        known = [c for c in clicks if self.catalogue.get(c.item_id) is not None]
        applied = self.sequences.append_many(
            [ClickToAppend(c.user_id, c.item_id, c.event_id, c.event_time) for c in known], positions
        )
        return sum(applied)

    def handle_clicks(self, clicks: list[ClickRecord], positions: dict[int, int] | None = None) -> ClickBatchResult:
        """positions: {partition: last offset} of the batch's input, recorded with the state."""
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
            if positions:
                self.sequences.append_many([], positions)
            return result
        t0 = time.perf_counter()
        applied = self.sequences.append_many(
            [ClickToAppend(c.user_id, c.item_id, c.event_id, c.event_time) for c in valid], positions
        )
        result.duplicates = applied.count(False)
        if len(self.new_items):
            self._update_evidence(valid, applied)
        users = list(dict.fromkeys(c.user_id for c in valid))
        histories: list[UserHistory] = []
        exclude: list[set[int]] = []  # per user, every row of the history: not recommended again
        window = self.model.history_window
        get = self.catalogue.get
        for user in users:
            # Only the clicks the model reads are mapped to rows one by one; the rest only as the
            # set of distinct items to leave out of the ranking. Mapping a whole history (up to
            # the sequence cap, 2,048) cost 0.27 ms per user, and grew with every click.
            sequence = self.sequences.sequence(user)
            recent = sequence if window is None else sequence[-window:]
            rows = [e.row for e in map(get, recent) if e is not None]
            histories.append(UserHistory(user, rows, self.sequences.total(user)))
            exclude.append({e.row for e in map(get, set(sequence)) if e is not None})
        t1 = time.perf_counter()
        written = np.fromiter(sorted(self._written), dtype=np.int64, count=len(self._written))
        encoded = self.model.encode_users(histories, self._matrix, self.explain, written)
        self._written.clear()
        t2 = time.perf_counter()
        scores, ids = self.index.search(encoded.vectors, self.top_k, exclude)
        merged = self.new_items.rank(encoded.vectors, scores, ids, self._matrix, exclude, self.top_k, self.clock())
        if self.fade.impressions_per_click and len(self.new_items):
            self._count_impressions(merged.ids, users, valid, applied)
        result.stage_seconds = {"state": t1 - t0, "encode": t2 - t1, "search": time.perf_counter() - t2}
        ranked: dict[str, list[ScoredItem]] = {}
        why: dict[str, Explanation | None] = {}
        # Whole arrays to Python lists in one call each: element by element, numpy makes a scalar
        # object per value, and this loop runs in the compute thread, holding the GIL the event
        # loop needs (it showed as 8% of the worker's samples at 1,000 clicks/s).
        scores_l, ids_l = merged.scores.tolist(), merged.ids.tolist()
        new_l, explore_l = merged.new.tolist(), merged.explore.tolist()
        for u, user in enumerate(users):
            ranked[user] = [
                ScoredItem(self.catalogue.item_id_of(i), round(s, 6), n, x)
                for s, i, n, x in zip(scores_l[u], ids_l[u], new_l[u], explore_l[u], strict=True)
                if i >= 0
            ]
            why[user] = None
            if self.explain:
                because = [self.catalogue.item_id_of(r) for r in dict.fromkeys(encoded.because_rows[u])]
                top = ranked[user][0].item_id if ranked[user] else None
                weights = self.model.modality_weights(top) if top is not None else None
                why[user] = Explanation(because, weights or {})
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
                    explanation=why[click.user_id],
                )
            )
        return result

    def _update_evidence(self, clicks: list[ClickRecord], applied: list[bool]) -> None:
        """New clicks on held items raise their evidence; items that no longer need holding (enough
        clicks, or too old to explore) join the main index."""
        for click, new in zip(clicks, applied, strict=True):
            entry = self.catalogue.get(click.item_id) if new else None
            if entry is not None and entry.row in self.new_items:
                self.new_items.set_clicks(entry.row, self.sequences.item_clicks(click.item_id))
        self._release_spent()

    def _count_impressions(
        self, ids: np.ndarray, users: list[str], clicks: list[ClickRecord], applied: list[bool]
    ) -> None:
        """ids (U, k) each user's list: every list emitted for a click applied now (not for a
        redelivery) counts as an impression of the held items in it; stored as their evidence."""
        position = {user: u for u, user in enumerate(users)}
        emitted = [position[c.user_id] for c, new in zip(clicks, applied, strict=True) if new]
        if not emitted:
            return
        counts = self.new_items.add_impressions(ids[emitted])  # (E, k) rows shown
        self.sequences.add_impressions(counts)
        self._release_spent()

    def _release_spent(self) -> None:
        """Held items whose calibration is spent (or too old to explore) join the main index."""
        released = [r for r in self.new_items.release(self.clock()) if np.linalg.norm(self._matrix[r]) > 0]
        if released:
            rows = np.array(released, dtype=np.int64)
            self.index.upsert(rows, self._matrix[rows])
            if self._changed_during_swap is not None:
                self._changed_during_swap.update(self.catalogue.item_id_of(r) for r in released)

    def close(self) -> None:
        self.sequences.close()
        self.catalogue.close()
        self.model.close()


def _set_row(matrix: np.ndarray, row: int, vec: np.ndarray) -> np.ndarray:
    """matrix (rows, D) with `row` set to vec, grown (doubled) when too small."""
    if row >= len(matrix):
        grown = np.zeros((max(row + 1, 2 * len(matrix)), matrix.shape[1]), dtype=np.float32)
        grown[: len(matrix)] = matrix
        matrix = grown
    matrix[row] = vec
    return matrix


def _record_of(entry: CatalogueEntry) -> CatalogueRecord:
    """A stored entry as the catalogue record that would (re)create it, to encode it again."""
    return CatalogueRecord(entry.item_id, "upsert", 0, entry.title, entry.category_path, entry.brand, entry.price)
