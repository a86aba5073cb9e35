"""The one item schema and the one event schema every dataset loader produces.

Items carry their content (title, category path, brand, price) and any precomputed modality
vectors the dataset ships (e.g. audio features in lastfm-2k-mm). Events are clicks with a
deterministic id, so a replay that restarts publishes the very same ids and the worker can
de-duplicate them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Item:
    """One catalogue item. `category_path` runs from the top-level category downwards."""

    item_id: str
    title: str
    category_path: tuple[str, ...] = ()
    brand: str | None = None
    price: float | None = None
    # Precomputed modality vectors by modality name ("text", "audio_vggish", ...); absent = missing.
    vectors: dict[str, np.ndarray] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def top_category(self) -> str:
        """Top-level category ("genre" in MUFASA's sense); "unknown" when the item has none."""
        return self.category_path[0] if self.category_path else "unknown"


def make_event_id(dataset: str, user_id: str, item_id: str, timestamp: int, position: int) -> str:
    """Deterministic event id: the same dataset row always gets the same id."""
    raw = f"{dataset}|{user_id}|{item_id}|{timestamp}|{position}".encode()
    return hashlib.sha1(raw).hexdigest()[:20]


@dataclass(frozen=True)
class Event:
    """One click of a user on an item at `timestamp` (unix seconds, the dataset's own time)."""

    user_id: str
    item_id: str
    timestamp: int
    event_id: str


@dataclass
class Dataset:
    """A dataset: its catalogue and its clicks in global time order (ties keep per-user order)."""

    name: str
    items: list[Item]
    events: list[Event]
    # sha256 of the source files (datasets/own.py `fingerprint`); "" for datasets built in memory.
    fingerprint: str = ""

    def __post_init__(self) -> None:
        self._item_by_id = {it.item_id: it for it in self.items}
        assert len(self._item_by_id) == len(self.items), f"{self.name}: duplicate item ids"

    def item(self, item_id: str) -> Item:
        return self._item_by_id[item_id]

    def has_item(self, item_id: str) -> bool:
        return item_id in self._item_by_id

    def user_sequences(self) -> dict[str, list[str]]:
        """Each user's clicked item ids in time order."""
        seqs: dict[str, list[str]] = {}
        for ev in self.events:
            seqs.setdefault(ev.user_id, []).append(ev.item_id)
        return seqs

    @property
    def n_users(self) -> int:
        return len({ev.user_id for ev in self.events})


def build_events(dataset: str, rows: list[tuple[str, str, int]]) -> list[Event]:
    """Turn (user, item, timestamp) rows into events sorted by time.

    The sort is stable, so rows sharing a timestamp keep the order they had in the source
    (which is each user's own order in the files we read). Positions are per user.
    """
    order = sorted(range(len(rows)), key=lambda i: rows[i][2])
    positions: dict[str, int] = {}
    events = []
    for i in order:
        user, item, ts = rows[i]
        pos = positions.get(user, 0)
        positions[user] = pos + 1
        events.append(Event(user, item, ts, make_event_id(dataset, user, item, ts, pos)))
    return events
