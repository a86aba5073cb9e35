"""The batch journal: what a worker was doing when it stopped, kept in two small slot files.

It records, per input topic and partition:
- the offsets of the batch in flight (written before a batch is handled, cleared once its outputs
  are acknowledged by the broker). If a process finds a batch still in flight when it opens the
  journal and the previous process left a fatal record (`fatal.log` beside the journal: Python's
  faulthandler writes into it on SIGSEGV, SIGABRT, SIGBUS, SIGFPE and SIGILL, and an agent that
  dies of an error writes its error), the previous process crashed while handling it: each of
  those offsets gets a crash count. A process that stopped without a fatal record was killed from
  outside (SIGKILL, the OOM killer, the host going away), and its batch is not suspected.
  An offset counted twice is a poison message (it crashed the worker twice) and is dead-lettered
  without being handled again; an offset counted once is a suspect and is handled on its own, so
  that a second crash names exactly one message.
- the last offset whose outputs were acknowledged ("answered"). After a restart the broker
  redelivers what was answered since its last offset commit; clicks at or below the answered
  offset whose event ids the state already holds are not answered twice.

Saving is on the path of every micro-batch (twice: `begin` and `done`), so it writes in place
instead of creating and renaming a file (measured on this machine: about 170 us for a new file and
a rename, 3 us for a write in place). Saves alternate between two slots, the journal's path and
that path with ".b" appended, each kept open; a save is a header (sequence number, CRC32, length)
and the JSON, written over its slot from the start. A save torn by a crash fails its check, and
the other slot, one save older, is read instead: a crash leaves either the new record or the one
before it, as a rename did. Slots are not fsynced: the journal guards against process crashes,
which keep the page cache. After a machine crash it may be older than the state; then clicks are
answered again (duplicates), never lost.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO

POISON_CRASHES = 2
FATAL_RECORD = "fatal.log"


class BatchJournal:
    """Crash counts, the batch in flight and answered offsets of one worker."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        slots = (self.path, self.path.with_name(self.path.name + ".b"))
        self._slots = [os.open(p, os.O_RDWR | os.O_CREAT, 0o644) for p in slots]
        self._closer = weakref.finalize(self, _close_all, list(self._slots))
        self._seq, data = self._load()
        self._answered: dict[str, dict[int, int]] = {
            t: {int(p): int(o) for p, o in parts.items()} for t, parts in data.get("answered", {}).items()
        }
        self._crashes: dict[tuple[str, int, int], int] = {
            (t, int(p), int(o)): int(n) for t, p, o, n in data.get("crashes", [])
        }
        self._inflight: list[tuple[str, int, int]] = []
        # `begin` runs in the worker's compute thread and `done` on its event loop (the next batch
        # is computed while the previous one's answers are acknowledged): one writer at a time.
        self._lock = threading.RLock()
        self.fatal_path = self.path.with_name(FATAL_RECORD)
        self.previous_fatal = self._take_fatal_record()
        # Only a process that left a fatal record crashed; one that stopped without one was killed
        # from outside (SIGKILL by an operator, a deployment, the host going away): its batch in
        # flight did not crash it, and suspecting it would risk calling a good message poison.
        died_in = [(t, int(p), int(o)) for t, p, o in data.get("inflight", [])] if self.previous_fatal else []
        # The previous process stopped with a batch in flight: it crashed (or was killed) in it.
        for key in died_in:
            self._crashes[key] = self._crashes.get(key, 0) + 1
        self.crashed_at_start = len(died_in)
        if data.get("inflight"):
            self._save()

    def _take_fatal_record(self) -> str:
        """What the previous process wrote as it crashed (empty if it did not crash), cleared."""
        try:
            text = self.fatal_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        self.fatal_path.write_text("")
        return text

    def open_fatal_record(self) -> IO[str]:
        """A file to write a crash into (kept open for `faulthandler`, which writes without Python)."""
        self._fatal = self.fatal_path.open("a")
        return self._fatal

    def note_fatal(self, text: str) -> None:
        """Record that this process is dying of an error (before it exits)."""
        with self.fatal_path.open("a") as fh:
            fh.write(text.rstrip() + "\n")

    def _load(self) -> tuple[int, dict]:
        """The newest slot that passes its check: (its sequence number, its record); (0, {}) if
        none does (a fresh journal, or torn or foreign files: start afresh; worst case some clicks
        are answered twice)."""
        best: tuple[int, dict] | None = None
        for fd in self._slots:
            found = _read_slot(os.pread(fd, os.fstat(fd).st_size, 0))
            if found is not None and (best is None or found[0] > best[0]):
                best = found
        return best or (0, {})

    def _save(self) -> None:
        data = {
            "answered": {t: {str(p): o for p, o in parts.items()} for t, parts in self._answered.items()},
            "crashes": [[t, p, o, n] for (t, p, o), n in self._crashes.items()],
            "inflight": [list(k) for k in self._inflight],
        }
        self._seq += 1
        body = json.dumps(data, separators=(",", ":")).encode()
        # Bytes past the record (a longer record saved there before) are ignored by the length.
        os.pwrite(self._slots[self._seq % 2], _slot_header(self._seq, body) + body, 0)

    def close(self) -> None:
        """Close the slot files (also done when the journal is garbage-collected)."""
        self._closer()

    # --- reading ---------------------------------------------------------------------------------

    def crashes(self, topic: str, partition: int, offset: int) -> int:
        """How often the worker died while this message was in flight."""
        return self._crashes.get((topic, partition, offset), 0)

    def is_poison(self, topic: str, partition: int, offset: int) -> bool:
        return self.crashes(topic, partition, offset) >= POISON_CRASHES

    def answered(self, topic: str, partition: int) -> int:
        """The last offset of `partition` whose outputs were acknowledged, -1 if none."""
        return self._answered.get(topic, {}).get(partition, -1)

    # --- writing ---------------------------------------------------------------------------------

    def begin(self, topic: str, offsets: Iterable[tuple[int, int]]) -> None:
        """Messages (partition, offset) of `topic` are about to be handled. They replace what was in
        flight: a batch whose handling finished is past what can crash the worker on its input."""
        with self._lock:
            self._inflight = [(topic, p, o) for p, o in offsets]
            self._save()

    def done(self, topic: str, last: Mapping[int, int], offsets: Iterable[tuple[int, int]] = ()) -> None:
        """Outputs of the batch are acknowledged: `last` is {partition: last offset} of the batch;
        `offsets` are all its (partition, offset) pairs, whose crash counts are no longer needed."""
        with self._lock:
            answered = self._answered.setdefault(topic, {})
            for part, offset in last.items():
                answered[part] = max(offset, answered.get(part, -1))
            for part, offset in offsets:
                self._crashes.pop((topic, part, offset), None)
            # Only this batch leaves the in-flight record: a later batch may already be in it.
            self._inflight = [(t, p, o) for t, p, o in self._inflight if t != topic or o > last.get(p, -1)]
            self._save()

    def unanswer_from(self, topic: str, partition: int, offset: int) -> None:
        """The partition's log went backwards (the broker lost data, offsets were reset): answers
        to messages from `offset` on may have been lost with it, so they count as unanswered."""
        with self._lock:
            answered = self._answered.setdefault(topic, {})
            answered[partition] = min(answered.get(partition, -1), offset - 1)
            self._save()


# A slot: b"SRJ1 <sequence> <crc32> <body length>\n" then the JSON body. The checksum covers the
# sequence number with the body: a save torn just after the new number would otherwise pair it
# with the old, intact body and checksum, and the old record would pass for the newest.
_MAGIC = b"SRJ1"


def _checksum(seq: int, body: bytes) -> int:
    return zlib.crc32(body, zlib.crc32(b"%d" % seq))


def _slot_header(seq: int, body: bytes) -> bytes:
    return b"%s %d %d %d\n" % (_MAGIC, seq, _checksum(seq, body), len(body))


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _read_slot(raw: bytes) -> tuple[int, dict] | None:
    """(sequence, record) of a slot's bytes, or None if they are not a whole, intact save. A plain
    JSON object is the one-file journal of earlier versions, read as sequence 0."""
    if raw.startswith(b"{"):
        try:
            legacy = json.loads(raw)
        except ValueError:
            return None
        return (0, legacy) if isinstance(legacy, dict) else None
    head, sep, rest = raw.partition(b"\n")
    parts = head.split(b" ")
    if not sep or len(parts) != 4 or parts[0] != _MAGIC:
        return None
    try:
        seq, crc, length = (int(x) for x in parts[1:])
    except ValueError:
        return None
    body = rest[:length]
    if len(body) != length or _checksum(seq, body) != crc:
        return None
    try:
        record = json.loads(body)
    except ValueError:
        return None
    return (seq, record) if isinstance(record, dict) else None
