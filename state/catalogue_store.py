"""The catalogue as the worker knows it: item records, their vectors and stable int row ids.

Kept in RocksDB so a restarted worker rebuilds its in-memory item index without re-reading the
catalogue topic. Row ids are assigned once per item id and never reused, so an index, a sequence
or a model may refer to items by row id safely. Withdrawn items keep their row id and are marked
inactive.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rocksdict import Options, Rdict, WriteBatch

_ITEM = b"i\x00"
_VEC = b"v\x00"
_NEXT = b"#next_row"
_VERSION = b"#vectors_version"
_OFFSET = b"#offset\x00"


@dataclass
class CatalogueEntry:
    item_id: str
    row: int
    title: str
    category_path: tuple[str, ...]
    brand: str | None
    price: float | None
    active: bool = True
    first_seen_ms: int = 0  # wall time this store first held the item (kept across updates): its age
    # Whether the model serving when the item arrived had no ID row for it (kept across updates
    # and model swaps: its new-item calibration fades with clicks, not with a swap).
    arrived_unseen: bool = False


class CatalogueStore:
    """Items by id, with vectors, in a rocksdict database under `path`."""

    def __init__(self, path: Path, dim: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        self._db = Rdict(str(path), opts)
        self.dim = dim
        raw = self._db.get(_NEXT)
        self._next_row = int(raw) if raw is not None else 0
        self._entries: dict[str, CatalogueEntry] = {}
        self._by_row: dict[int, str] = {}
        for key, value in self._db.items(from_key=_ITEM):
            if not key.startswith(_ITEM):
                break
            d = json.loads(value)
            entry = CatalogueEntry(
                d["item_id"],
                d["row"],
                d["title"],
                tuple(d["category_path"]),
                d["brand"],
                d["price"],
                d["active"],
                d.get("first_seen_ms", 0),  # entries stored before ages were kept count as old
                d.get("arrived_unseen", False),
            )
            self._entries[entry.item_id] = entry
            self._by_row[entry.row] = entry.item_id

    def put(self, entries: list[CatalogueEntry], vectors: np.ndarray) -> list[CatalogueEntry]:
        """Insert or update items (row ids are filled in); vectors: (N, D) float32."""
        assert vectors.shape == (len(entries), self.dim), f"vectors must be ({len(entries)}, {self.dim})"
        batch = WriteBatch(raw_mode=True)
        for entry, vec in zip(entries, vectors, strict=True):
            known = self._entries.get(entry.item_id)
            if known is not None:
                entry.row = known.row
                entry.first_seen_ms = known.first_seen_ms
                entry.arrived_unseen = known.arrived_unseen
            else:
                entry.row = self._next_row
                self._next_row += 1
                entry.first_seen_ms = entry.first_seen_ms or int(time.time() * 1000)
            self._entries[entry.item_id] = entry
            self._by_row[entry.row] = entry.item_id
            key = entry.item_id.encode()
            batch.put(_ITEM + key, json.dumps(entry.__dict__).encode())
            batch.put(_VEC + key, np.asarray(vec, dtype=np.float32).tobytes())
        batch.put(_NEXT, str(self._next_row).encode())
        self._db.write(batch)
        return entries

    def withdraw(self, item_id: str) -> CatalogueEntry | None:
        entry = self._entries.get(item_id)
        if entry is None or not entry.active:
            return None
        entry.active = False
        self._db[_ITEM + item_id.encode()] = json.dumps(entry.__dict__).encode()
        return entry

    def get(self, item_id: str) -> CatalogueEntry | None:
        return self._entries.get(item_id)

    def item_id_of(self, row: int) -> str:
        return self._by_row[row]

    def vector(self, item_id: str) -> np.ndarray:
        raw = self._db.get(_VEC + item_id.encode())
        assert raw is not None, f"no vector for {item_id}"
        return np.frombuffer(raw, dtype=np.float32)

    def active_entries(self) -> Iterator[CatalogueEntry]:
        return (e for e in self._entries.values() if e.active)

    def active_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Row ids (N,) int64 and vectors (N, D) of every active item, to rebuild an index."""
        entries = list(self.active_entries())
        if not entries:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float32)
        rows = np.array([e.row for e in entries], dtype=np.int64)
        vecs = np.stack([self.vector(e.item_id) for e in entries])
        return rows, vecs

    def all_entries(self) -> list[CatalogueEntry]:
        """Every entry, withdrawn ones included (their rows stay valid in users' histories)."""
        return list(self._entries.values())

    def offset(self, partition: int) -> int:
        """Last catalogue-topic offset of `partition` applied here, -1 if none."""
        raw = self._db.get(_OFFSET + str(partition).encode())
        return int(raw) if raw is not None else -1

    def record_offsets(self, offsets: dict[int, int]) -> None:
        """Called after the records up to these offsets are applied (re-applying one is harmless)."""
        batch = WriteBatch(raw_mode=True)
        for part, offset in offsets.items():
            batch.put(_OFFSET + str(part).encode(), str(offset).encode())
        self._db.write(batch)

    @property
    def vectors_version(self) -> str:
        """The model version that computed the stored vectors ("" when none recorded)."""
        raw = self._db.get(_VERSION)
        return raw.decode() if raw is not None else ""

    @vectors_version.setter
    def vectors_version(self, version: str) -> None:
        self._db[_VERSION] = version.encode()

    def __len__(self) -> int:
        return sum(1 for e in self._entries.values() if e.active)

    def close(self) -> None:
        self._db.close()
