"""Fuzz: generated malformed clicks and catalogue records through the real decode-and-handle path.

Property: whatever a producer sends, each message ends as exactly one answer (a recommendation for
a click, an applied change for a catalogue record) or exactly one dead letter with a known reason,
and every output encodes to JSON. Real RocksDB stores, a real FAISS index, the content baseline.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamrec.models.content_baseline import ContentBaseline, ContentBaselineConfig
from streamrec.serving.recommender import Recommender
from streamrec.serving.serving_model import BaselineServingModel
from streamrec.state.batch_journal import BatchJournal
from streamrec.state.catalogue_store import CatalogueStore
from streamrec.state.item_index import FaissItemIndex
from streamrec.state.sequence_store import RocksSequenceStore
from streamrec.stream.handling import Message, encode_dead, handle_catalogue_messages, handle_click_messages
from streamrec.stream.schemas import CatalogueRecord, RecordError, decode_click, now_ms

CFG = ContentBaselineConfig(dim=16, buckets=1024)
ITEMS = [f"i{k}" for k in range(30)]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
any_json = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
)
# Values that have stopped workers before: huge and long numbers, deep nesting, lone surrogates.
nasty_raw = st.sampled_from(
    [
        "9" * 25,
        "-" + "9" * 25,
        "9" * 4400,
        "1e400",
        "-1e400",
        "NaN",
        "Infinity",
        "[" * 64 + "]" * 64,
        '{"a":' * 40 + "1" + "}" * 40,
        '"\\ud800"',
        '"a\\udfffb"',
        '"\\u0000"',
        '""',
        "true",
        "[]",
        "{}",
        '"' + "x" * 20_000 + '"',
    ]
)
surrogate_text = st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
field_value = any_json.map(lambda v: json.dumps(v)) | nasty_raw | surrogate_text.map(json.dumps)


def _with(obj: dict, name: str, raw: str) -> bytes:
    """obj as JSON with field `name` set to the raw JSON text `raw` (which json.dumps could not
    always produce: NaN, 4,400-digit integers)."""
    return json.dumps({**obj, name: "\x00slot\x00"}).replace('"\\u0000slot\\u0000"', raw).encode()


@st.composite
def click_payload(draw: st.DrawFn, offset: int) -> bytes:
    good = {
        "v": 1,
        "event_id": f"e{offset}",
        "user_id": f"u{draw(st.integers(0, 5))}",
        "item_id": draw(st.sampled_from([*ITEMS, "unknown"])),
        "event_time": now_ms(),
    }
    kind = draw(st.sampled_from(["valid", "field", "drop", "bytes", "json"]))
    if kind == "valid":
        return json.dumps(good).encode()
    if kind == "field":
        name = draw(st.sampled_from(["v", "event_id", "user_id", "item_id", "event_time", "source_ts"]))
        return _with(good, name, draw(field_value))
    if kind == "drop":
        name = draw(st.sampled_from(sorted(good)))
        return json.dumps({k: v for k, v in good.items() if k != name}).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    return json.dumps(draw(any_json)).encode()


@st.composite
def catalogue_payload(draw: st.DrawFn, offset: int) -> bytes:
    good = {"v": 1, "item_id": f"n{offset}", "event_time": now_ms(), "title": "a title", "op": "upsert"}
    kind = draw(st.sampled_from(["valid", "field", "bytes", "json"]))
    if kind == "valid":
        return json.dumps(good).encode()
    if kind == "field":
        name = draw(
            st.sampled_from(["item_id", "event_time", "title", "op", "category_path", "brand", "price", "vectors"])
        )
        return _with(good, name, draw(field_value))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    return json.dumps(draw(any_json)).encode()


@st.composite
def batches(draw: st.DrawFn, payload: st.SearchStrategy, topic: str) -> list[Message]:
    n = draw(st.integers(1, 12))
    start = draw(st.integers(0, 10**9))
    return [Message(topic, draw(st.integers(0, 3)), start + k, draw(payload(start + k))) for k in range(n)]


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[Recommender, Path]]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rec = Recommender(
            RocksSequenceStore(root / "seq", max_len=20),
            CatalogueStore(root / "cat", CFG.dim),
            FaissItemIndex(CFG.dim),
            BaselineServingModel(ContentBaseline(CFG)),
            top_k=5,
        )
        rec.apply_catalogue([CatalogueRecord(i, "upsert", now_ms(), f"title {i}") for i in ITEMS])
        yield rec, root
        rec.close()


FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(batch=batches(click_payload, "clicks"))
def test_every_click_message_ends_as_one_answer_or_one_dead_letter(
    world: tuple[Recommender, Path], batch: list[Message]
) -> None:
    rec, root = world
    # A journal of its own per example: offsets drawn again in another example are not redeliveries.
    journal = BatchJournal(root / f"journal-{uuid.uuid4().hex}.json")
    out = handle_click_messages(rec, batch, journal)
    journal.done("clicks", out.last, out.offsets)
    answered = Counter(r.event_id for r in out.recommendations)
    dead = Counter(d.offset for d in out.dead)
    # Messages that decode, by event id (generated payloads may share one).
    decoded: dict[str, list[int]] = {}
    for msg in batch:
        try:
            decoded.setdefault(decode_click(msg.value).event_id, []).append(msg.offset)
        except RecordError:
            assert dead[msg.offset] == 1, f"offset {msg.offset}: undecodable {msg.value[:80]!r} not dead-lettered once"
    for event_id, offsets in decoded.items():
        outcomes = answered[event_id] + sum(dead[o] for o in offsets)
        assert outcomes == len(offsets), f"event {event_id!r}: {outcomes} outcomes for {len(offsets)} messages"
    assert set(answered) <= set(decoded), "no answer without a message"
    for d in out.dead:
        assert d.reason in RecordError.REASONS and d.detail
        json.loads(encode_dead(d)[1])
    for key, value in out.encoded:
        assert json.loads(value)["user_id"] == key.decode()


@FUZZ
@given(batch=batches(catalogue_payload, "catalogue"))
def test_every_catalogue_message_is_applied_or_one_dead_letter(
    world: tuple[Recommender, Path], batch: list[Message]
) -> None:
    rec, root = world
    journal = BatchJournal(root / f"journal-{uuid.uuid4().hex}.json")
    out = handle_catalogue_messages(rec, batch, journal)
    assert len(out.applied) + len(out.dead) == len(batch)
    assert len({d.offset for d in out.dead}) == len(out.dead)
    for d in out.dead:
        assert d.reason in RecordError.REASONS and d.detail
        json.loads(encode_dead(d)[1])
