"""The Kafka-free handling path: every message ends as an answer or a dead letter with a reason.

Real RocksDB stores and a real FAISS index under the content baseline; the batch journal on disk.
A "crash" is simulated by opening the journal again while a batch is still in flight, which is
exactly what a restarted process sees.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streamrec.models.content_baseline import ContentBaseline, ContentBaselineConfig
from streamrec.serving.recommender import Recommender
from streamrec.serving.serving_model import BaselineServingModel, UserEncoding, UserHistory
from streamrec.state.batch_journal import BatchJournal
from streamrec.state.catalogue_store import CatalogueStore
from streamrec.state.item_index import FaissItemIndex
from streamrec.state.model_store import ModelStore, ModelStoreError
from streamrec.state.sequence_store import RocksSequenceStore
from streamrec.stream.handling import (
    Message,
    encode_dead,
    handle_catalogue_messages,
    handle_click_messages,
    handle_model_messages,
)
from streamrec.stream.schemas import CatalogueRecord, RecordError, encode, now_ms

CFG = ContentBaselineConfig(dim=16, buckets=1024)
CLICKS = "clicks"
CATALOGUE = "catalogue"


class FlakyModel(BaselineServingModel):
    """The content baseline, except that it fails for chosen users and item titles."""

    def __init__(self) -> None:
        super().__init__(ContentBaseline(CFG))
        self.bad_users: set[str] = set()
        self.bad_titles: set[str] = set()

    def encode_users(
        self,
        histories: list[UserHistory],
        item_matrix: np.ndarray,
        explain: bool,
        changed_rows: np.ndarray | None = None,
    ) -> UserEncoding:
        for h in histories:
            if h.user_id in self.bad_users:
                raise FloatingPointError(f"cannot encode {h.user_id}")
        return super().encode_users(histories, item_matrix, explain, changed_rows)

    def encode_items(self, records: list[CatalogueRecord]) -> np.ndarray:
        for r in records:
            if r.title in self.bad_titles:
                raise MemoryError(f"cannot encode {r.title}")
        return super().encode_items(records)


def make_recommender(root: Path, n_items: int = 20) -> tuple[Recommender, FlakyModel]:
    model = FlakyModel()
    rec = Recommender(
        RocksSequenceStore(root / "seq", max_len=50),
        CatalogueStore(root / "cat", CFG.dim),
        FaissItemIndex(CFG.dim),
        model,
        top_k=5,
    )
    rec.apply_catalogue([CatalogueRecord(f"i{k}", "upsert", now_ms(), f"item {k}", ("A",)) for k in range(n_items)])
    return rec, model


def click_bytes(event: str, user: str, item: str) -> bytes:
    return json.dumps({"v": 1, "event_id": event, "user_id": user, "item_id": item, "event_time": now_ms()}).encode()


def messages(values: list[bytes], partition: int = 0, first: int = 0, topic: str = CLICKS) -> list[Message]:
    return [Message(topic, partition, first + k, v) for k, v in enumerate(values)]


# --- the journal -------------------------------------------------------------------------------


def test_journal_counts_crashes_names_poison_and_remembers_answers(tmp_path: Path) -> None:
    path = tmp_path / "journal.json"
    j = BatchJournal(path)
    j.begin(CLICKS, [(0, 5), (0, 6), (1, 2)])
    j.note_fatal("clicks stopped: SystemError")
    j = BatchJournal(path)  # the process crashed with the batch in flight
    assert j.crashed_at_start == 3 and "SystemError" in j.previous_fatal
    assert j.crashes(CLICKS, 0, 5) == 1 and not j.is_poison(CLICKS, 0, 5)
    j.begin(CLICKS, [(0, 6)])
    j.note_fatal("clicks stopped: SystemError")
    j = BatchJournal(path)  # crashed again, this time with one message alone in flight
    assert j.is_poison(CLICKS, 0, 6) and not j.is_poison(CLICKS, 0, 5)
    j.done(CLICKS, {0: 6, 1: 2}, [(0, 5), (0, 6), (1, 2)])
    j = BatchJournal(path)  # a clean run since
    assert j.crashed_at_start == 0
    assert j.crashes(CLICKS, 0, 6) == 0, "crash counts of handled messages are dropped"
    assert (j.answered(CLICKS, 0), j.answered(CLICKS, 1), j.answered(CLICKS, 2)) == (6, 2, -1)
    j.unanswer_from(CLICKS, 0, 4)
    assert BatchJournal(path).answered(CLICKS, 0) == 3
    j.unanswer_from(CLICKS, 0, 5)
    assert BatchJournal(path).answered(CLICKS, 0) == 3, "never moves forward"
    j.begin(CLICKS, [(0, 9)])
    j = BatchJournal(path)  # stopped without a fatal record: killed from outside, not a crash
    assert j.crashed_at_start == 0 and j.crashes(CLICKS, 0, 9) == 0


def test_a_torn_journal_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "journal.json"
    path.write_text('{"answered": {"clicks"')
    assert BatchJournal(path).answered(CLICKS, 0) == -1


def test_the_one_file_journal_of_earlier_versions_is_read(tmp_path: Path) -> None:
    path = tmp_path / "journal.json"
    path.write_text(json.dumps({"answered": {CLICKS: {"0": 41}}, "crashes": [[CLICKS, 0, 7, 1]], "inflight": []}))
    j = BatchJournal(path)
    assert j.answered(CLICKS, 0) == 41 and j.crashes(CLICKS, 0, 7) == 1
    j.done(CLICKS, {0: 42})
    j.close()
    assert BatchJournal(path).answered(CLICKS, 0) == 42, "saves after it win over the old file"


@settings(max_examples=150, deadline=None)
# A cut is a byte position (the header's first bytes, where sequence number and checksum are) or a
# fraction of the record.
@given(saves=st.integers(1, 6), cut=st.one_of(st.integers(0, 48), st.floats(0.0, 1.0)))
@example(saves=2, cut=6)  # the new sequence number over the old record: once read as the newest
def test_a_save_torn_by_a_crash_leaves_the_record_before_it_or_the_new_one(
    tmp_path_factory: pytest.TempPathFactory, saves: int, cut: float
) -> None:
    """A crash in the middle of a save leaves a prefix of the new bytes over the slot's old ones;
    the journal then reads either the save before it or, if the whole record made it, the new one."""
    path = tmp_path_factory.mktemp("journal") / "journal.json"
    j = BatchJournal(path)
    for k in range(saves):
        j.done(CLICKS, {0: k})
    slot = path if (j._seq + 1) % 2 == 0 else path.with_name(path.name + ".b")
    old = slot.read_bytes()
    j.done(CLICKS, {0: 1000}, [(0, k) for k in range(50)])  # the save the crash tears
    j.close()
    new = slot.read_bytes()
    torn = min(cut, len(new)) if isinstance(cut, int) else int(cut * len(new))
    slot.write_bytes(new[:torn] + old[torn:])
    answered = BatchJournal(path).answered(CLICKS, 0)
    assert answered in (saves - 1, 1000)
    assert answered == 1000 or torn < len(new), "a whole new record is read as the new one"


# --- clicks ------------------------------------------------------------------------------------


def test_a_record_that_fails_in_handling_is_isolated_and_the_rest_answered(tmp_path: Path) -> None:
    rec, model = make_recommender(tmp_path)
    model.bad_users = {"u-bad"}
    values = [click_bytes(f"e{k}", f"u{k % 3}", f"i{k}") for k in range(9)]
    values.insert(4, click_bytes("e-bad", "u-bad", "i1"))
    out = handle_click_messages(rec, messages(values))
    assert sorted(r.event_id for r in out.recommendations) == sorted(f"e{k}" for k in range(9))
    assert [(d.offset, d.reason) for d in out.dead] == [(4, "handling_failed")]
    assert "FloatingPointError" in out.dead[0].detail
    assert len(out.encoded) == 9 and all(json.loads(v)["event_id"] for _, v in out.encoded)
    assert rec.sequences.applied_offset(0) == 9, "the batch's offsets are recorded even when a record failed"


def test_a_message_that_crashes_twice_is_poison_and_the_others_are_answered(tmp_path: Path) -> None:
    rec, _ = make_recommender(tmp_path)
    path = tmp_path / "journal.json"
    batch = messages([click_bytes(f"e{k}", f"u{k}", f"i{k}") for k in range(4)])
    # First run: the whole batch was in flight when the process crashed.
    j = BatchJournal(path)
    j.begin(CLICKS, [(m.partition, m.offset) for m in batch])
    j.note_fatal("segfault")
    # Second run: suspects go one at a time; it crashed again on offset 2.
    j = BatchJournal(path)
    j.begin(CLICKS, [(0, 2)])
    j.note_fatal("segfault")
    # Third run: offset 2 is poison; the others are answered.
    j = BatchJournal(path)
    out = handle_click_messages(rec, batch, j)
    assert [(d.offset, d.reason) for d in out.dead] == [(2, "poison")]
    assert sorted(r.event_id for r in out.recommendations) == ["e0", "e1", "e3"]
    j.done(CLICKS, out.last, out.offsets)
    assert BatchJournal(path).crashed_at_start == 0


def five_answered(tmp_path: Path) -> tuple[Recommender, BatchJournal, list[Message]]:
    """A recommender and journal that answered clicks e0..e4 of user u1 at offsets 0..4."""
    rec, _ = make_recommender(tmp_path)
    j = BatchJournal(tmp_path / "journal.json")
    batch = messages([click_bytes(f"e{k}", "u1", f"i{k}") for k in range(5)])
    out = handle_click_messages(rec, batch, j)
    j.done(CLICKS, out.last, out.offsets)
    return rec, j, batch


def test_answered_clicks_are_not_answered_again_but_reused_offsets_are(tmp_path: Path) -> None:
    rec, j, batch = five_answered(tmp_path)
    # Redelivery after a restart: same offsets, same events.
    again = handle_click_messages(rec, batch, j)
    assert again.already_answered == 5 and not again.recommendations and not again.dead
    # Answers the broker lost are sent again on request.
    lost = handle_click_messages(rec, batch, j, answer_again=True)
    assert len(lost.recommendations) == 5 and lost.duplicates == 5
    # The broker lost messages 3-4 and reused their offsets for new clicks.
    reused = messages([click_bytes(f"new{k}", "u2", f"i{k}") for k in range(2)], first=3)
    out = handle_click_messages(rec, reused, j)
    assert out.reused_offsets == {0: 2}
    assert sorted(r.event_id for r in out.recommendations) == ["new0", "new1"]


def test_a_known_click_at_a_rewritten_offset_is_answered(tmp_path: Path) -> None:
    # After the broker lost data, a producer's retry can write a click this worker already handled
    # (and whose answer the broker lost) at another offset, one the journal says was answered.
    rec, j, _ = five_answered(tmp_path)
    moved = messages([click_bytes("e4", "u1", "i4"), click_bytes("e3", "u1", "i3")], first=3)
    kept = handle_click_messages(rec, moved, j)
    assert kept.already_answered == 2 and not kept.recommendations, "the journal alone cannot tell"
    out = handle_click_messages(rec, moved, j, rewritten={(0, 3), (0, 4)})
    assert sorted(r.event_id for r in out.recommendations) == ["e3", "e4"] and out.already_answered == 0
    assert out.duplicates == 2, "answered, not appended again"


def test_every_kind_of_poison_named_in_the_issue_is_dead_lettered(tmp_path: Path) -> None:
    rec, _ = make_recommender(tmp_path)
    good = {"v": 1, "event_id": "x", "user_id": "u", "item_id": "i1", "event_time": now_ms()}

    def with_field(name: str, raw: str) -> bytes:
        return json.dumps({**good, name: "@@"}).replace('"@@"', raw).encode()

    poison = [
        with_field("event_time", "9" * 30),  # overflow
        with_field("event_time", "9" * 5000),  # more digits than Python parses
        with_field("event_time", "1e400"),
        with_field("event_time", "NaN"),
        b"[" * 50_000 + b"]" * 50_000,  # too large (and too deep)
        with_field("item_id", "[" * 100 + "]" * 100),  # too deep
        with_field("user_id", '"\\ud800"'),  # lone surrogate
        with_field("user_id", '"\\udfff\\ud800"'),
        b"\xff\xfe",
        b"null",
        b"",
    ]
    values = [v for p in poison for v in (p, click_bytes(f"ok{len(p)}-{p[:8]!r}", "u", "i1"))]
    out = handle_click_messages(rec, messages(values))
    assert sorted(d.offset for d in out.dead) == list(range(0, len(values), 2))
    assert all(d.reason in RecordError.REASONS and d.detail for d in out.dead)
    assert len(out.recommendations) == len(poison)
    for d in out.dead:
        key, value = encode_dead(d)
        assert json.loads(value)["reason"] == d.reason and key == b"clicks"


# --- catalogue ---------------------------------------------------------------------------------


def test_a_catalogue_record_that_fails_in_handling_is_isolated(tmp_path: Path) -> None:
    rec, model = make_recommender(tmp_path, n_items=0)
    model.bad_titles = {"cursed"}
    values = [encode(CatalogueRecord(f"n{k}", "upsert", now_ms(), f"new {k}")) for k in range(5)]
    values.insert(2, encode(CatalogueRecord("c", "upsert", now_ms(), "cursed")))
    values.insert(0, b'{"item_id": "z", "event_time": 1e999, "title": "t"}')
    out = handle_catalogue_messages(rec, messages(values, topic=CATALOGUE))
    assert sorted((d.offset, d.reason) for d in out.dead) == [(0, "bad_value"), (3, "handling_failed")]
    assert sorted(r.item_id for r in out.applied) == [f"n{k}" for k in range(5)]
    assert len(rec.index) == 5


# --- model announcements -----------------------------------------------------------------------


def test_announcements_of_missing_broken_or_outside_versions_are_dead_letters(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    store.put("broken", lambda p: p.write_bytes(b"not a checkpoint"), {})
    store.put("fine", lambda p: p.write_bytes(b"weights"), {})

    def load(version: str) -> BaselineServingModel:
        path = store.get(version).path
        if path.read_bytes() != b"weights":
            raise ValueError(f"{path} is not a checkpoint")
        return BaselineServingModel(ContentBaseline(CFG))

    def announce(offset: int, version: str) -> Message:
        body = json.dumps({"v": 1, "version": version, "action": "promote"}).encode()
        return Message("models", 0, offset, body)

    def outcome(*versions: str) -> tuple[list[tuple[int, str]], str | None]:
        msgs = [announce(k, v) for k, v in enumerate(versions)]
        got = handle_model_messages(msgs, "content-v1", load, store.has)
        return [(d.offset, d.reason) for d in got.dead], (got.model.version if got.model is not None else None)

    assert outcome("nope") == ([(0, "unknown_version")], None)
    assert outcome("broken") == ([(0, "model_load_failed")], None)
    assert outcome("../../../../tmp", "/etc") == ([(0, "bad_value"), (1, "bad_value")], None)
    assert outcome("nope", "fine", "../x") == ([(0, "unknown_version"), (2, "bad_value")], "content-v1")
    assert outcome("content-v1") == ([], None), "the version being served is not loaded again"
    with pytest.raises(ModelStoreError):
        store.get("../../../../tmp")
    assert not store.has("../../../../tmp") and store.has("fine")


CRASHING_CHILD = """
import ctypes, faulthandler, os, signal, sys
from pathlib import Path
from streamrec.state.batch_journal import BatchJournal
journal = BatchJournal(Path(sys.argv[1]))
faulthandler.enable(file=journal.open_fatal_record())
journal.begin("clicks", [(0, 7), (1, 3)])
if sys.argv[2] == "segfault":
    ctypes.string_at(0)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("death", ["segfault", "sigkill"])
def test_a_hard_crash_is_told_from_a_kill(tmp_path: Path, death: str) -> None:
    """A segfault with a batch in flight makes its messages suspects; a SIGKILL from outside
    does not (no fatal record), so a deployment's kill can never make a good click poison."""
    path = tmp_path / "journal.json"
    proc = subprocess.run([sys.executable, "-c", CRASHING_CHILD, str(path), death], capture_output=True, timeout=60)
    assert proc.returncode == (-signal.SIGSEGV if death == "segfault" else -signal.SIGKILL)
    j = BatchJournal(path)
    if death == "segfault":
        assert j.crashed_at_start == 2 and "Segmentation fault" in j.previous_fatal
        assert j.crashes(CLICKS, 0, 7) == 1 and j.crashes(CLICKS, 1, 3) == 1
    else:
        assert j.crashed_at_start == 0 and j.previous_fatal == ""
        assert j.crashes(CLICKS, 0, 7) == 0
