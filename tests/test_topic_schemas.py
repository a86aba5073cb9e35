"""The JSON Schema files in schemas/ (one per topic and version) against the records the system
writes and reads: everything the producers of this project encode validates, and every payload the
worker's decoders accept validates too (a property over generated inputs), so a consumer or
producer in another language can rely on the files."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from streamrec.settings import PROJECT_ROOT, TopicNames
from streamrec.stream.schemas import (
    SCHEMA_VERSION,
    CatalogueRecord,
    ClickRecord,
    DeadLetterRecord,
    Explanation,
    ModelAnnouncement,
    RecommendationRecord,
    RecordError,
    ScoredItem,
    decode_catalogue,
    decode_click,
    decode_model_announcement,
    encode,
)

SCHEMAS = PROJECT_ROOT / "schemas"
NOW = 1_800_000_000_000


def validator(topic: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{topic}.v{SCHEMA_VERSION}.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def test_one_schema_file_per_topic_and_version() -> None:
    topics = TopicNames()
    wanted = {f"{t}.v{SCHEMA_VERSION}.json" for t in (topics.clicks, topics.catalogue, topics.recommendations,
                                                      topics.dead_letters, topics.models)}  # fmt: skip
    assert wanted <= {p.name for p in SCHEMAS.glob("*.json")}
    for name in wanted:
        validator(name.split(".v")[0])


def records() -> list[tuple[str, Any]]:
    why = Explanation(["i1", "i2"], {"id": 0.2, "title": 0.5, "attr": 0.3})
    rec = RecommendationRecord("u1", [ScoredItem("i3", 0.91), ScoredItem("i4", -2.5)], "content-v1", "e1", NOW, NOW + 5)
    return [
        ("clicks", ClickRecord("e1", "u1", "i1", NOW)),
        ("clicks", ClickRecord("e2", "u1", "i1", NOW, source_ts=881250949)),
        ("catalogue", CatalogueRecord("i1", "upsert", NOW, "A title", ("Beauty", "Face"), "Acme", 4.5, {"a": [1.0]})),
        ("catalogue", CatalogueRecord("i1", "withdraw", NOW)),
        ("recommendations", rec),
        ("recommendations", RecommendationRecord("u1", [], "v1", "e1", NOW, NOW, why)),
        ("dead-letters", DeadLetterRecord("clicks", 0, 12, "bad_unicode", "lone surrogate", "\ud800", NOW)),
        ("models", ModelAnnouncement("ml-100k-mufasa-ft1-20261202", "promote", NOW)),
    ]


@pytest.mark.parametrize(("topic", "record"), records())
def test_what_the_project_writes_validates(topic: str, record: Any) -> None:
    errors = list(validator(topic).iter_errors(json.loads(encode(record))))
    assert not errors, [e.message for e in errors]


ids = st.one_of(st.text(max_size=210), st.integers(), st.none(), st.floats(allow_nan=False), st.booleans())
times = st.one_of(st.integers(min_value=0, max_value=2 * NOW), st.floats(allow_nan=False), st.text(max_size=3))
maybe = st.one_of(st.none(), st.text(max_size=20), st.integers(), st.lists(st.text(max_size=5), max_size=3))


def _fields(draw: st.DrawFn, spec: dict[str, st.SearchStrategy[Any]]) -> dict[str, Any]:
    return {k: draw(s) for k, s in spec.items() if draw(st.booleans()) or k in ("item_id", "event_time")}


@st.composite
def click_payloads(draw: st.DrawFn) -> dict[str, Any]:
    return _fields(draw, {"event_id": ids, "user_id": ids, "item_id": ids, "event_time": times, "source_ts": maybe,
                          "v": st.sampled_from([1, 2, True])})  # fmt: skip


@st.composite
def catalogue_payloads(draw: st.DrawFn) -> dict[str, Any]:
    spec = {
        "item_id": ids,
        "event_time": times,
        "op": st.sampled_from(["upsert", "withdraw", "delete", None]),
        "title": st.one_of(st.text(max_size=20), st.just("  "), st.integers()),
        "category_path": st.one_of(st.none(), st.lists(st.text(max_size=10), max_size=4), st.text(max_size=4)),
        "brand": maybe,
        "price": st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False), st.integers(-5, 5)),
        "vectors": st.one_of(st.none(), st.dictionaries(st.text(max_size=4), st.lists(st.floats(-1, 1), max_size=3))),
    }
    return _fields(draw, spec)


def _accepted(decode: Any, payload: dict[str, Any]) -> bool:
    try:
        decode(json.dumps(payload).encode(), now=NOW)
    except RecordError:
        return False
    return True


@settings(max_examples=400, deadline=None)
@given(click_payloads())
def test_every_click_the_worker_accepts_validates(payload: dict[str, Any]) -> None:
    if _accepted(decode_click, payload):
        assert validator("clicks").is_valid(payload), payload


@settings(max_examples=400, deadline=None)
@given(catalogue_payloads())
def test_every_catalogue_record_the_worker_accepts_validates(payload: dict[str, Any]) -> None:
    if _accepted(decode_catalogue, payload):
        assert validator("catalogue").is_valid(payload), payload


@pytest.mark.parametrize(
    "payload",
    [
        {"version": "v1", "action": "promote"},
        {"version": "v1", "action": "rollback", "at": NOW, "v": 1},
    ],
)
def test_announcements_the_worker_accepts_validate(payload: dict[str, Any]) -> None:
    decode_model_announcement(json.dumps(payload).encode())
    assert validator("models").is_valid(payload)


def test_schemas_and_docs_agree_on_the_files() -> None:
    doc = (PROJECT_ROOT / "docs" / "topics.md").read_text()
    for path in sorted(SCHEMAS.glob("*.json")):
        assert f"schemas/{path.name}" in doc, f"docs/topics.md does not point at {path.name}"


def test_schema_files_have_ids() -> None:
    for path in SCHEMAS.glob("*.json"):
        assert json.loads(path.read_text())["$id"].startswith("urn:streamrec:schema:")
