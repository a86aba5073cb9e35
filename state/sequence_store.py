"""Per-user click sequences: the interface, the RocksDB store (rocksdict) and an in-memory twin.

Layout in RocksDB (raw bytes, one small record per click so an event never rewrites a whole
sequence):

    m<0>{user}                -> "{start} {end}"          positions [start, end) are live
    s<0>{user}<0>{pos:012d}   -> "{item}<1f>{event_id}<1f>{event_time_ms}"
    e<0>{user}<0>{event_id}   -> "{pos}"                  de-duplication of redelivered events
    o<0>{partition}           -> "{offset}"               last clicks-topic offset applied, per partition
    c<0>{item}                -> "{clicks}"               clicks ever applied on the item (its evidence)
    i<0>{item}                -> "{impressions}"          times the item was recommended (new items only)

A user's sequence is capped at `max_len`: appending past the cap deletes the oldest record and its
event key in the same write batch. The store keeps the item ids of the most recently used users'
sequences in memory as well (`cache_users`, least recently used evicted), updated by the same
`append_many` that writes them: every click makes the worker read its user's whole sequence (the
model's window and the items to exclude), and reading 2,048 records back from RocksDB took about
3 ms per user. Redelivery of an event still inside the cap is recognised by
its event id and appends nothing, which makes at-least-once delivery safe to apply. Item click
counts (the evidence that fades a new item's calibration, models/cold_start.py) are written in the
same batch as the clicks, so a restart or a redelivery neither loses nor double-counts them.
Impressions are counted after a batch is ranked and written in a batch of their own: a crash
between the two loses at most that batch's impressions, and the caller counts none for redelivered
clicks, so they are never counted twice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rocksdict import Options, Rdict, WriteBatch

SEP = b"\x00"
FIELD = "\x1f"


@dataclass(frozen=True)
class StoredClick:
    """One click as kept in a user's sequence."""

    item_id: str
    event_id: str
    event_time_ms: int


@dataclass(frozen=True)
class ClickToAppend:
    user_id: str
    item_id: str
    event_id: str
    event_time_ms: int


class SequenceStore(ABC):
    """What the worker needs from sequence state."""

    max_len: int

    @abstractmethod
    def append_many(self, clicks: Sequence[ClickToAppend], positions: Mapping[int, int] | None = None) -> list[bool]:
        """Append clicks in order; returns, per click, whether it was new (False = duplicate).

        positions: {source partition: offset of the last click of that partition in this call},
        recorded atomically with the clicks, so a worker knows exactly what its state holds of
        each input partition (see `applied_offset`)."""

    @abstractmethod
    def applied_offset(self, partition: int) -> int:
        """The last source offset of `partition` applied to this store, -1 if none."""

    @abstractmethod
    def has_event(self, user_id: str, event_id: str) -> bool:
        """Whether the user's live sequence holds this event (an evicted one no longer counts)."""

    @abstractmethod
    def records(self, user_id: str) -> list[StoredClick]:
        """The user's live clicks, oldest first (empty for an unknown user)."""

    @abstractmethod
    def length(self, user_id: str) -> int: ...

    @abstractmethod
    def total(self, user_id: str) -> int:
        """Clicks ever appended for the user (duplicates excluded), including those the cap evicted."""

    @abstractmethod
    def item_clicks(self, item_id: str) -> int:
        """Clicks ever applied on the item, by any user (duplicates excluded)."""

    @abstractmethod
    def item_impressions(self, item_id: str) -> int:
        """Impressions recorded for the item by `add_impressions`."""

    @abstractmethod
    def add_impressions(self, counts: Mapping[str, int]) -> None:
        """Add impressions per item (the evidence that fades a new item's calibration)."""

    @abstractmethod
    def users(self) -> Iterator[str]: ...

    @abstractmethod
    def n_users(self) -> int: ...

    def close(self) -> None:  # noqa: B027 - optional hook, the twin has nothing to release
        """Release resources."""

    def append(self, click: ClickToAppend) -> bool:
        return self.append_many([click])[0]

    def sequence(self, user_id: str) -> list[str]:
        return [r.item_id for r in self.records(user_id)]


class InMemorySequenceStore(SequenceStore):
    """Dict-of-deques twin for pure-logic tests; same contract as the RocksDB store."""

    def __init__(self, max_len: int = 2048) -> None:
        assert max_len >= 1, "max_len must be positive"
        self.max_len = max_len
        self._seqs: dict[str, deque[StoredClick]] = {}
        self._events: dict[str, set[str]] = {}
        self._totals: dict[str, int] = {}
        self._offsets: dict[int, int] = {}
        self._item_clicks: dict[str, int] = {}
        self._impressions: dict[str, int] = {}

    def applied_offset(self, partition: int) -> int:
        return self._offsets.get(partition, -1)

    def item_clicks(self, item_id: str) -> int:
        return self._item_clicks.get(item_id, 0)

    def item_impressions(self, item_id: str) -> int:
        return self._impressions.get(item_id, 0)

    def add_impressions(self, counts: Mapping[str, int]) -> None:
        for item, n in counts.items():
            assert n >= 0, f"impressions of {item!r} must not be negative"
            self._impressions[item] = self._impressions.get(item, 0) + n

    def append_many(self, clicks: Sequence[ClickToAppend], positions: Mapping[int, int] | None = None) -> list[bool]:
        for part, offset in (positions or {}).items():
            self._offsets[part] = max(offset, self._offsets.get(part, -1))
        applied = []
        for c in clicks:
            seen = self._events.setdefault(c.user_id, set())
            if c.event_id in seen:
                applied.append(False)
                continue
            seq = self._seqs.setdefault(c.user_id, deque())
            seq.append(StoredClick(c.item_id, c.event_id, c.event_time_ms))
            seen.add(c.event_id)
            self._totals[c.user_id] = self._totals.get(c.user_id, 0) + 1
            self._item_clicks[c.item_id] = self._item_clicks.get(c.item_id, 0) + 1
            if len(seq) > self.max_len:
                seen.discard(seq.popleft().event_id)
            applied.append(True)
        return applied

    def has_event(self, user_id: str, event_id: str) -> bool:
        return event_id in self._events.get(user_id, ())

    def records(self, user_id: str) -> list[StoredClick]:
        return list(self._seqs.get(user_id, ()))

    def length(self, user_id: str) -> int:
        return len(self._seqs.get(user_id, ()))

    def total(self, user_id: str) -> int:
        return self._totals.get(user_id, 0)

    def users(self) -> Iterator[str]:
        return iter(list(self._seqs))

    def n_users(self) -> int:
        return len(self._seqs)


def _meta_key(user: str) -> bytes:
    return b"m" + SEP + user.encode()


def _pos_key(user: str, pos: int) -> bytes:
    return b"s" + SEP + user.encode() + SEP + f"{pos:012d}".encode()


def _event_key(user: str, event_id: str) -> bytes:
    return b"e" + SEP + user.encode() + SEP + event_id.encode()


def _offset_key(partition: int) -> bytes:
    return b"o" + SEP + str(partition).encode()


def _item_key(item_id: str) -> bytes:
    return b"c" + SEP + item_id.encode()


def _impressions_key(item_id: str) -> bytes:
    return b"i" + SEP + item_id.encode()


def _encode_click(c: ClickToAppend | StoredClick) -> bytes:
    return f"{c.item_id}{FIELD}{c.event_id}{FIELD}{c.event_time_ms}".encode()


def _decode_click(raw: bytes) -> StoredClick:
    item, event_id, ts = raw.decode().split(FIELD)
    return StoredClick(item, event_id, int(ts))


class RocksSequenceStore(SequenceStore):
    """Sequences in RocksDB through rocksdict; every `append_many` is one atomic write batch."""

    def __init__(self, path: Path, max_len: int = 2048, cache_users: int = 4096) -> None:
        assert max_len >= 1, "max_len must be positive"
        assert cache_users >= 0, "cache_users must not be negative"
        self.max_len = max_len
        self.cache_users = cache_users
        # Item ids of recently used users' sequences, oldest click first (see the module docstring);
        # ids are shared through `_names`, so a cached sequence costs a pointer per click.
        self._cached: OrderedDict[str, deque[str]] = OrderedDict()
        self._names: dict[str, str] = {}
        path.mkdir(parents=True, exist_ok=True)
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        self._db = Rdict(str(path), opts)
        self._n_users = sum(1 for _ in self._meta_keys())
        self._item_clicks: dict[str, int] = {}  # read-through cache of the c<0>{item} counts
        self._impressions: dict[str, int] = {}  # read-through cache of the i<0>{item} counts

    def _meta_keys(self) -> Iterable[bytes]:
        prefix = b"m" + SEP
        for key in self._db.keys(from_key=prefix):
            if not key.startswith(prefix):
                break
            yield key

    def _bounds(self, user: str, pending: dict[str, tuple[int, int]]) -> tuple[int, int] | None:
        if user in pending:
            return pending[user]
        raw = self._db.get(_meta_key(user))
        if raw is None:
            return None
        start, end = raw.split()
        return int(start), int(end)

    def compact(self) -> None:
        """Compact the whole database (for measuring its size on disk)."""
        self._db.compact_range(None, None)

    def applied_offset(self, partition: int) -> int:
        raw = self._db.get(_offset_key(partition))
        return int(raw) if raw is not None else -1

    def _count(self, cache: dict[str, int], key: bytes, item_id: str) -> int:
        """A per-item count read through `cache` (0 when the database holds none)."""
        count = cache.get(item_id)
        if count is None:
            raw = self._db.get(key)
            count = cache[item_id] = int(raw) if raw is not None else 0
        return count

    def item_clicks(self, item_id: str) -> int:
        return self._count(self._item_clicks, _item_key(item_id), item_id)

    def item_impressions(self, item_id: str) -> int:
        return self._count(self._impressions, _impressions_key(item_id), item_id)

    def add_impressions(self, counts: Mapping[str, int]) -> None:
        if not counts:
            return
        batch = WriteBatch(raw_mode=True)
        totals = {}
        for item, n in counts.items():
            assert n >= 0, f"impressions of {item!r} must not be negative"
            totals[item] = self.item_impressions(item) + n
            batch.put(_impressions_key(item), str(totals[item]).encode())
        self._db.write(batch)
        self._impressions.update(totals)

    def append_many(self, clicks: Sequence[ClickToAppend], positions: Mapping[int, int] | None = None) -> list[bool]:
        batch = WriteBatch(raw_mode=True)
        for part, offset in (positions or {}).items():
            if offset > self.applied_offset(part):
                batch.put(_offset_key(part), str(offset).encode())
        pending: dict[str, tuple[int, int]] = {}
        # Event keys added or dropped inside this batch, which the database cannot see yet.
        added: set[bytes] = set()
        dropped: set[bytes] = set()
        # Records written inside this batch, needed when the cap evicts one of them at once.
        written: dict[bytes, bytes] = {}
        applied = []
        new_users = 0
        counts: dict[str, int] = {}  # item click counts after this batch, cached once it is written
        for c in clicks:
            ekey = _event_key(c.user_id, c.event_id)
            if ekey in added or (ekey not in dropped and self._db.get(ekey) is not None):
                applied.append(False)
                continue
            bounds = self._bounds(c.user_id, pending)
            if bounds is None:
                new_users += 1
                bounds = (0, 0)
            start, end = bounds
            record = _encode_click(c)
            pkey = _pos_key(c.user_id, end)
            batch.put(pkey, record)
            written[pkey] = record
            batch.put(ekey, str(end).encode())
            added.add(ekey)
            dropped.discard(ekey)
            end += 1
            if end - start > self.max_len:
                old_key = _pos_key(c.user_id, start)
                old_raw = written.get(old_key) or self._db.get(old_key)
                assert old_raw is not None, f"sequence of {c.user_id} lacks position {start}"
                old_ekey = _event_key(c.user_id, _decode_click(old_raw).event_id)
                batch.delete(old_key)
                batch.delete(old_ekey)
                added.discard(old_ekey)
                dropped.add(old_ekey)
                start += 1
            pending[c.user_id] = (start, end)
            batch.put(_meta_key(c.user_id), f"{start} {end}".encode())
            counts[c.item_id] = counts.get(c.item_id, self.item_clicks(c.item_id)) + 1
            applied.append(True)
        for item, count in counts.items():
            batch.put(_item_key(item), str(count).encode())
        if pending or positions:
            self._db.write(batch)
        # Only once the batch is written: cached sequences follow what the database holds.
        for c, new in zip(clicks, applied, strict=True):
            if new and c.user_id in self._cached:
                self._cached[c.user_id].append(self._names.setdefault(c.item_id, c.item_id))
        self._item_clicks.update(counts)
        self._n_users += new_users
        return applied

    def has_event(self, user_id: str, event_id: str) -> bool:
        return self._db.get(_event_key(user_id, event_id)) is not None

    def records(self, user_id: str) -> list[StoredClick]:
        bounds = self._bounds(user_id, {})
        if bounds is None:
            return []
        start, end = bounds
        out = []
        first = _pos_key(user_id, start)
        prefix = b"s" + SEP + user_id.encode() + SEP
        for key, value in self._db.items(from_key=first):
            if not key.startswith(prefix) or len(out) >= end - start:
                break
            out.append(_decode_click(value))
        assert len(out) == end - start, f"sequence of {user_id}: {len(out)} records for {end - start}"
        return out

    def sequence(self, user_id: str) -> list[str]:
        cached = self._cached.get(user_id)
        if cached is None:
            cached = deque((self._names.setdefault(r.item_id, r.item_id) for r in self.records(user_id)), self.max_len)
            if not cached or not self.cache_users:
                return list(cached)  # unknown users are not cached: most never come back
            self._cached[user_id] = cached
            if len(self._cached) > self.cache_users:
                self._cached.popitem(last=False)
        else:
            self._cached.move_to_end(user_id)
        return list(cached)

    def length(self, user_id: str) -> int:
        bounds = self._bounds(user_id, {})
        return 0 if bounds is None else bounds[1] - bounds[0]

    def total(self, user_id: str) -> int:
        bounds = self._bounds(user_id, {})
        return 0 if bounds is None else bounds[1]

    def users(self) -> Iterator[str]:
        for key in self._meta_keys():
            yield key[2:].decode()

    def n_users(self) -> int:
        return self._n_users

    def close(self) -> None:
        self._db.close()
