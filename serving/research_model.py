"""A trained MUFASA / CAMMSR / SASRec checkpoint behind the worker's `ServingModel` interface.

Items: catalogue records become model features (title vector, attribute tokens, top-level
category) with the training vocabularies; items seen in training keep their ID embedding, new
items get the zero ID row and are placed by their content alone (the path `id_dropout` trains).
Users: one slot of a `LiveEncoder` arena per active user (least recently used evicted), refilled
on a miss and advanced by batched incremental steps on every click; the state
is rebuilt lazily from the stored sequence after a restart. No Kafka here: plain code.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from streamrec.model_bundle import ModelBundle, content_features, load_bundle
from streamrec.models.cold_start import ColdStartConfig
from streamrec.models.growth import untrained_id_rows
from streamrec.models.item_features import ItemFeatures
from streamrec.models.live_encoder import LiveEncoder, LiveEncoderConfig, window_start
from streamrec.models.sequence_encoder import SequenceEncoder
from streamrec.models.trainer import pick_device
from streamrec.serving.serving_model import UserEncoding, UserHistory
from streamrec.stream.schemas import CatalogueRecord


@dataclass(frozen=True)
class ResearchServingConfig:
    state_memory_mb: int = 256  # bound on cached user state; sets the number of slots
    max_slots: int = 65536
    explain_top: int = 3  # history items named per recommendation
    device: str = "auto"  # "auto" = CUDA when present, else CPU
    # Storage type of the cached keys, values and block summaries (float32, float16, bfloat16,
    # int8): computation stays in float32; `streamrec bench precision` measures what a narrower
    # cache costs. "auto": float32 when a user's whole-window state fits `state_budget_bytes`, else
    # int8. float32 skips int8's quantize and dequantize calls (about 15% of a Beauty micro-batch's
    # encode), and int8 keeps NDCG@10 within 1% of float32 (docs/models.md, "Stored precision").
    state_dtype: str = "auto"
    state_budget_bytes: int = 64 * 1024
    # Linear layers of the user encoder: "float32", or "int8" (dynamic quantization, CPU only).
    linear_dtype: str = "float32"
    # A micro-batch mixing users with one new click and users with several is encoded in one
    # batched extend (the former with a count of 1, padded to the longest run of new clicks) when
    # that padding costs at most this many positions, else in two calls: the fused one-click step
    # for the former, an extend for the latter. 0 = always two calls. A second call costs about
    # 2 ms on this CPU; a padded position far less (docs/operations.md, "Hot path").
    one_call_padding: int = 256

    def __post_init__(self) -> None:
        assert self.one_call_padding >= 0, "one_call_padding counts positions: 0 or more"


@dataclass
class _Slot:
    slot: int
    start: int  # absolute click position where the encoder window starts
    length: int  # positions of the window held in the slot
    vector: np.ndarray  # the user vector after the last step


class ResearchServingModel:
    """A `ModelBundle` served: per-user incremental state on top of the bundle's model."""

    def __init__(self, bundle: ModelBundle, cfg: ResearchServingConfig | None = None) -> None:
        self.cfg = cfg or ResearchServingConfig()
        self.device = pick_device(self.cfg.device)
        model = bundle.model
        self.model = model.to(self.device).eval()
        self.catalog = bundle.catalog
        self.titles = bundle.titles
        self._version = bundle.version
        self.text = bundle.text
        self.max_len = model.cfg.encoder.max_len
        self.state_dtype = self.cfg.state_dtype
        if self.state_dtype == "auto":
            wide = _slot_bytes(model.encoder, "float32", self.max_len)
            self.state_dtype = "float32" if wide <= self.cfg.state_budget_bytes else "int8"
        per_slot = _slot_bytes(model.encoder, self.state_dtype, self.max_len)
        slots = int(min(self.cfg.max_slots, max(16, self.cfg.state_memory_mb * 2**20 // per_slot)))
        live = LiveEncoderConfig(slots=slots, dtype=self.state_dtype, linear_dtype=self.cfg.linear_dtype)
        self.live = LiveEncoder(model.encoder, live)
        self.slot_bytes = per_slot
        self._users: OrderedDict[str, _Slot] = OrderedDict()
        self._free = list(range(slots - 1, -1, -1))
        self._weights: dict[str, np.ndarray] = {}
        if self.text == "minilm":
            # Load the sentence encoder now: a first catalogue event must not wait seconds for it.
            from streamrec.text_encoder import encode_texts

            encode_texts(["warm-up"])
        # Training-catalogue rows with a trained ID row; others (a row zeroed as held out, or an
        # item the checkpoint never saw) are placed by content alone.
        untrained = untrained_id_rows(model).tolist()  # (N+1,)
        self._trained_ids = {item for item, row in self.catalog.row_of.items() if not untrained[row]}
        # Clicks the online trainer learned new items' ID rows from (training/online_trainer.py).
        self._trained_clicks = bundle.trained_clicks
        names = self.catalog.features.modality_names
        self.modality_names = ["id", *names] if model.cfg.item_encoder == "cammsr" else names

    @property
    def version(self) -> str:
        return self._version

    @property
    def dim(self) -> int:
        return self.model.cfg.encoder.dim

    @property
    def history_window(self) -> int:
        return self.max_len  # the encoder window (`window_start`) never holds more

    # --- items -------------------------------------------------------------------------------

    def content_features(self, records: list[CatalogueRecord]) -> tuple[ItemFeatures, torch.Tensor]:
        return content_features(self.catalog, self.titles, self.text, records)

    @torch.no_grad()
    def encode_items(self, records: list[CatalogueRecord]) -> np.ndarray:
        feats, id_rows = self.content_features(records)
        table = self.model.item_table(feats.to(self.device), id_rows.to(self.device))
        vecs = table.vectors.float().cpu().numpy()
        if table.modality_weight is not None:
            w = table.modality_weight.float().cpu().numpy()
            for rec, row in zip(records, w, strict=True):
                self._weights[rec.item_id] = row
        return vecs

    @property
    def cold_start(self) -> ColdStartConfig:
        return self.model.cfg.cold

    def placed_by_content(self, item_ids: list[str]) -> list[bool]:
        return [item not in self._trained_ids for item in item_ids]

    def trained_clicks(self, item_ids: list[str]) -> list[int]:
        return [self._trained_clicks.get(item, 0) for item in item_ids]

    def modality_weights(self, item_id: str) -> dict[str, float] | None:
        w = self._weights.get(item_id)
        if w is None:
            return None
        return {name: round(float(x), 3) for name, x in zip(self.modality_names, w, strict=False)}

    # --- users -------------------------------------------------------------------------------

    def _slot_for(self, user: str, busy: set[str]) -> int:
        if self._free:
            return self._free.pop()
        for victim in self._users:  # least recently used first
            if victim not in busy:
                return self._users.pop(victim).slot
        raise RuntimeError("more users in one batch than state slots: raise state_memory_mb")

    @torch.inference_mode()
    def encode_users(
        self,
        histories: list[UserHistory],
        item_matrix: np.ndarray,
        explain: bool,
        changed_rows: np.ndarray | None = None,
    ) -> UserEncoding:
        busy = {h.user_id for h in histories}
        pending: dict[str, list[int]] = {}  # rows still to encode, per user
        windows: dict[str, list[int]] = {}
        refill: list[int] = []  # slots whose window is encoded again from its start
        for h in histories:
            assert h.rows, f"user {h.user_id} has no history"
            start = window_start(h.total, self.max_len)
            window = h.rows[-min(len(h.rows), h.total - start) :]
            windows[h.user_id] = window
            state = self._users.get(h.user_id)
            if state is not None and state.start == start and 1 <= state.length <= len(window):
                self._users.move_to_end(h.user_id)
                pending[h.user_id] = window[state.length :]
                continue
            if state is not None:
                self._users.pop(h.user_id)
                self._free.append(state.slot)
            state = _Slot(self._slot_for(h.user_id, busy), start, 0, np.zeros(self.dim, np.float32))
            self._users[h.user_id] = state
            refill.append(state.slot)
            pending[h.user_id] = window
        if refill:
            self.live.reset(torch.tensor(refill, device=self.device))
        matrix = torch.from_numpy(item_matrix).to(self.device)
        # Users with one new click take one batched step; all others (several new clicks, or a
        # window encoded again after a restart or an eviction) one batched extend from wherever
        # their slot stands. Each call costs about as much again in fixed overhead as in per-user
        # work at serving batch sizes, so a mixed batch whose padding is small is one extend
        # (`one_call_padding`).
        because: dict[str, list[int]] = {}
        top = self.cfg.explain_top if explain else 0
        single = [u for u, rows in pending.items() if len(rows) == 1]
        multi = [u for u, rows in pending.items() if len(rows) > 1]
        longest = max((len(pending[u]) for u in multi), default=0)
        if multi and len(single) * (longest - 1) <= self.cfg.one_call_padding:
            single, multi = [], single + multi  # one-click users join the extend with a count of 1
        for users in (single, multi):
            if not users:
                continue
            slots = torch.tensor([self._users[u].slot for u in users], device=self.device)
            if users is single:
                items = matrix[torch.tensor([pending[u][0] for u in users], device=self.device)]  # (B, D)
                vecs, why = self.live.step(slots, items, explain_top=top)
            else:
                counts = torch.tensor([len(pending[u]) for u in users], device=self.device)
                idx = torch.zeros(len(users), int(counts.max()), dtype=torch.long, device=self.device)
                for i, u in enumerate(users):
                    idx[i, : len(pending[u])] = torch.tensor(pending[u], dtype=torch.long)
                vecs, why = self.live.extend(slots, matrix[idx], counts, explain_top=top)  # items (B, P, D)
            out = vecs.float().cpu().numpy()
            for i, u in enumerate(users):
                st = self._users[u]
                st.length += len(pending[u])
                st.vector = out[i]
                if why is not None:
                    window = windows[u]
                    because[u] = [window[p] for p in why.positions[i].tolist() if 0 <= p < len(window)]
        vectors = np.stack([self._users[h.user_id].vector for h in histories])
        return UserEncoding(vectors, [because.get(h.user_id, []) for h in histories] if explain else [])

    def close(self) -> None:
        """Nothing outside this process."""

    def state_bytes_per_user(self, length: int) -> int:
        """Cached state of a user whose history has `length` clicks (the window part of it)."""
        return self.live.state_bytes(length - window_start(length, self.max_len))


def _slot_bytes(encoder: SequenceEncoder, dtype: str, length: int) -> int:
    """Cached state of one user whose window holds `length` positions, stored as `dtype`."""
    return LiveEncoder(encoder, LiveEncoderConfig(slots=1, dtype=dtype)).state_bytes(length)


def load_research_model(
    path: Path, data_dir: Path, features_dir: Path, cfg: ResearchServingConfig | None = None
) -> ResearchServingModel:
    """A checkpoint (model_bundle.load_bundle) ready to serve."""
    return ResearchServingModel(load_bundle(path, data_dir, features_dir), cfg)
