"""Online fine-tuning from the stream: recent sequences, a warm-start fine-tune, a gate, promotion.

Plain code with no Kafka in sight: `training/trainer_process.py` feeds it from the topics, and the
drift benchmark replays a dataset through it directly, so both run the same rounds.

A round (every `every_events` clicks or `every_minutes`, whichever comes first):
  1. the catalogue grows: items that arrived since the serving version get feature rows and zero
     ID rows (`models/growth.py`), so before fine-tuning they sit where live serving put them;
  2. the recent window is split leave-one-out by time: each user's latest click is the held-out
     slice (the gate's), the one before it the validation target (early stopping), the rest trains;
  3. the candidate is the serving model fine-tuned from a warm start by the offline training loop;
  4. the gate ranks every held-out click against the whole current catalogue with both models
     (history excluded, as offline) and promotes the candidate only if its NDCG@10 is not worse than
     the serving model's by more than `tolerance` (relative);
  5. a promoted candidate is written to the model store (atomically) and becomes current; the
     caller announces it. Nothing touches the store before the gate has passed, so a crash during a
     round leaves the serving version and the store as they were.
"""

from __future__ import annotations

import shutil
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from streamrec.model_bundle import ModelBundle, grown_catalog
from streamrec.models.checkpoint import load_checkpoint, save_checkpoint
from streamrec.models.growth import grow_items, new_item_clicks, unclicked_new_rows
from streamrec.models.seqrec import SeqRec
from streamrec.models.sequence_data import item_clicks, leave_one_out
from streamrec.models.trainer import TrainConfig, evaluate, pick_device, train
from streamrec.state.model_store import ModelStore, ModelStoreError, StoredVersion
from streamrec.stream.schemas import CatalogueRecord


@dataclass(frozen=True)
class OnlineTrainerConfig:
    every_events: int = 5000  # a round after this many new clicks ...
    every_minutes: float = 10.0  # ... or this long after the last round (with at least min_events)
    min_events: int = 100
    window_users: int = 20_000  # most recently active users kept
    window_len: int = 200  # latest clicks kept per user
    epochs: int = 2
    max_minutes: float = 5.0
    lr: float = 5e-4  # half the offline rate: a warm start should move, not forget
    batch_size: int = 128
    tolerance: float = 0.02  # promote when candidate NDCG@10 >= serving NDCG@10 * (1 - tolerance)
    min_eval_users: int = 30
    seed: int = 0


class RecentWindow:
    """The latest `max_len` clicks of the `max_users` most recently active users."""

    def __init__(self, max_users: int, max_len: int) -> None:
        self.max_users, self.max_len = max_users, max_len
        self._users: OrderedDict[str, deque[str]] = OrderedDict()

    def add(self, user: str, item_id: str) -> None:
        seq = self._users.pop(user, None)
        if seq is None:
            seq = deque(maxlen=self.max_len)
            if len(self._users) >= self.max_users:
                self._users.popitem(last=False)
        seq.append(item_id)
        self._users[user] = seq

    def sequences(self) -> dict[str, list[str]]:
        return {u: list(s) for u, s in self._users.items()}

    def __len__(self) -> int:
        return len(self._users)


@dataclass
class RoundResult:
    decision: str  # "promoted", "refused" or "skipped"
    reason: str
    serving_version: str
    candidate_version: str | None = None
    serving_ndcg10: float = 0.0
    candidate_ndcg10: float = 0.0
    serving_hr10: float = 0.0
    candidate_hr10: float = 0.0
    eval_users: int = 0
    train_sequences: int = 0
    new_items: int = 0
    fine_tune_seconds: float = 0.0
    sequences_per_s: float = 0.0


class OnlineTrainer:
    def __init__(
        self,
        cfg: OnlineTrainerConfig,
        store: ModelStore,
        current: ModelBundle,
        device: torch.device | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.current = current  # the version being served: the next round starts from it
        self.device = device or pick_device()
        self.clock = clock
        self.window = RecentWindow(cfg.window_users, cfg.window_len)
        self.new_items: dict[str, CatalogueRecord] = {}  # items the serving model has no row for
        self.events_since = 0
        self.last_round = clock()
        self.rounds = 0

    # --- the stream ----------------------------------------------------------------------------

    def observe_click(self, user_id: str, item_id: str) -> None:
        self.window.add(user_id, item_id)
        self.events_since += 1

    def observe_catalogue(self, rec: CatalogueRecord) -> None:
        if rec.item_id in self.current.catalog.row_of:
            return  # the model has a row for it; its content changes are handled by serving
        if rec.op == "withdraw":
            self.new_items.pop(rec.item_id, None)
        else:
            self.new_items[rec.item_id] = rec

    def due(self) -> bool:
        if self.events_since >= self.cfg.every_events:
            return True
        waited = (self.clock() - self.last_round) / 60.0
        return waited >= self.cfg.every_minutes and self.events_since >= self.cfg.min_events

    # --- a round -------------------------------------------------------------------------------

    def run_round(self, after_fine_tune: Callable[[SeqRec], None] | None = None) -> RoundResult:
        """One fine-tune, gate and (maybe) promotion. `after_fine_tune` sees the candidate before
        the gate (tests use it to make a deliberately worse candidate, or to crash mid-round)."""
        self.rounds += 1
        self.events_since = 0
        self.last_round = self.clock()
        serving = self.current
        base = serving.catalog
        new = [r for r in self.new_items.values() if r.item_id not in base.row_of]
        grown = [_record_dict(r) for r in new]
        catalog = grown_catalog(base, serving.titles, serving.text, grown)
        row_of = catalog.row_of
        seqs = [[row_of[i] for i in s if i in row_of] for s in self.window.sequences().values()]
        split = leave_one_out([s for s in seqs if len(s) >= 3], len(catalog.item_ids))
        result = RoundResult("skipped", "", serving.version, new_items=len(new), eval_users=len(split.test))
        if len(split.test) < self.cfg.min_eval_users:
            result.reason = f"{len(split.test)} users with 3+ recent clicks, fewer than {self.cfg.min_eval_users}"
            return result
        before = grow_items(serving.model, catalog.features).to(self.device)
        serving_metrics = evaluate(before, split.test, 512, self.device)["excl_history"]
        candidate = grow_items(serving.model, catalog.features).to(self.device)
        window = item_clicks(split.train, split.n_items)  # (N+1,) clicks this round trains on
        if candidate.item_clicks is not None:
            # `id_evidence`: the clicks the window trains each item on count as evidence, so a new
            # item's ID vector is weighted in as its clicks arrive; old items keep at least theirs.
            candidate.set_item_clicks(torch.maximum(candidate.item_clicks, window.to(candidate.item_clicks)))
        # New items nobody clicked yet stay placed by content alone: not negatives of this round.
        candidate.excluded_rows = unclicked_new_rows(candidate, window)
        trained_clicks = new_item_clicks(serving.trained_clicks, candidate, row_of, window)
        tcfg = TrainConfig(
            epochs=self.cfg.epochs,
            batch_size=self.cfg.batch_size,
            lr=self.cfg.lr,
            patience=self.cfg.epochs,
            seed=self.cfg.seed + self.rounds,
            max_minutes=self.cfg.max_minutes,
        )
        started = time.perf_counter()
        trained = train(candidate, split, tcfg, self.device, progress=False)
        candidate.excluded_rows = None
        result.fine_tune_seconds = time.perf_counter() - started
        result.train_sequences = len(split.train)
        result.sequences_per_s = len(split.train) * trained.epochs_run / max(result.fine_tune_seconds, 1e-9)
        if after_fine_tune is not None:
            after_fine_tune(candidate)
        candidate_metrics = evaluate(candidate, split.test, 512, self.device)["excl_history"]
        result.serving_ndcg10, result.serving_hr10 = serving_metrics["NDCG@10"], serving_metrics["HR@10"]
        result.candidate_ndcg10, result.candidate_hr10 = candidate_metrics["NDCG@10"], candidate_metrics["HR@10"]
        if result.candidate_ndcg10 < result.serving_ndcg10 * (1.0 - self.cfg.tolerance):
            result.decision = "refused"
            result.reason = (
                f"candidate NDCG@10 {result.candidate_ndcg10:.4f} < serving {result.serving_ndcg10:.4f} "
                f"x (1 - {self.cfg.tolerance})"
            )
            return result
        all_grown = [*serving.grown_items, *grown]
        stamp = time.strftime("%Y%m%d%H%M%S")
        family = f"{serving.meta.get('dataset', 'model')}-{serving.meta.get('model', 'seqrec')}"
        version = f"{family}-ft{self.rounds}-{stamp}"
        meta = {
            **serving.meta,
            "parent": serving.version,
            "grown_items": all_grown,
            "trained_clicks": trained_clicks,
            "gate": {
                "serving_ndcg10": result.serving_ndcg10,
                "candidate_ndcg10": result.candidate_ndcg10,
                "eval_users": result.eval_users,
            },
            "fine_tune": {
                "seconds": result.fine_tune_seconds,
                "sequences_per_s": result.sequences_per_s,
                "train_sequences": result.train_sequences,
                "epochs": trained.epochs_run,
            },
        }
        stored = self.store.put(
            version,
            lambda path: save_checkpoint(path, candidate, candidate.cfg, version, meta, serving.base_catalogue),
            {k: v for k, v in meta.items() if k != "grown_items"} | {"grown_items": len(all_grown)},
        )
        self.store.promote(version)
        titles = {**serving.titles, **{g["item_id"]: g["title"] for g in grown}}
        self.current = ModelBundle(candidate, catalog, titles, version, serving.text, meta, serving.base_catalogue)
        self.new_items = {k: v for k, v in self.new_items.items() if k not in catalog.row_of}
        result.decision, result.candidate_version = "promoted", stored.version
        result.reason = f"candidate NDCG@10 {result.candidate_ndcg10:.4f} vs serving {result.serving_ndcg10:.4f}"
        return result

    def adopt(self, stored: StoredVersion, load: Callable[[StoredVersion], ModelBundle]) -> None:
        """Continue from another version (after a rollback): later rounds start from it."""
        self.current = load(stored)


def _record_dict(rec: CatalogueRecord) -> dict:
    d = asdict(rec)
    d["category_path"] = list(d["category_path"])
    return d


def import_checkpoint(store: ModelStore, path: Path, promote: bool = True) -> StoredVersion:
    """Put a checkpoint file made by `streamrec train` into the store under its own version."""
    _, _, version, meta = load_checkpoint(path)
    try:
        stored = store.get(version)
    except ModelStoreError:
        stored = store.put(version, lambda dst: shutil.copyfile(path, dst), {**meta, "imported_from": str(path)})
    if promote and (store.current() is None or store.current().version != version):
        store.promote(version)
    return stored
