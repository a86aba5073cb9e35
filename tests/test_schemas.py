"""Topic records round-trip, and every kind of bad input is refused with its reason."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.stream.schemas import (
    CatalogueRecord,
    ClickRecord,
    Explanation,
    ModelAnnouncement,
    RecommendationRecord,
    RecordError,
    ScoredItem,
    decode_catalogue,
    decode_click,
    decode_model_announcement,
    decode_recommendation,
    encode,
    now_ms,
)

NOW = 1_800_000_000_000


def click(**over: object) -> bytes:
    base = {"v": 1, "event_id": "e1", "user_id": "u1", "item_id": "i1", "event_time": NOW - 5}
    base.update(over)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def test_click_round_trip() -> None:
    rec = ClickRecord("e1", "u1", "i1", NOW - 5, source_ts=881250949)
    assert decode_click(encode(rec), now=NOW) == rec


def test_ids_may_be_numbers() -> None:
    assert decode_click(click(user_id=42), now=NOW).user_id == "42"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe not utf8", "undecodable"),
        (b"{not json", "undecodable"),
        (b"[1, 2]", "not_an_object"),
        (click(v=2), "bad_version"),
        (click(user_id=...), "missing_field"),
        (click(item_id=None), "missing_field"),
        (click(event_time="yesterday"), "bad_type"),
        (click(event_time=True), "bad_type"),
        (click(user_id=[1]), "bad_type"),
        (click(user_id=""), "bad_value"),
        (click(user_id="a\x00b"), "bad_value"),
        (click(event_time=12), "bad_timestamp"),
        (click(event_time=NOW + 10 * 86_400_000), "bad_timestamp"),
    ],
)
def test_bad_clicks_are_refused_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(RecordError) as err:
        decode_click(raw, now=NOW)
    assert err.value.reason == reason
    assert err.value.detail


def test_catalogue_round_trip_and_withdraw() -> None:
    rec = CatalogueRecord("i1", "upsert", NOW, "Lipstick", ("Makeup", "Lips"), "Acme", 9.5)
    assert decode_catalogue(encode(rec), now=NOW) == rec
    gone = decode_catalogue(json.dumps({"item_id": "i1", "op": "withdraw", "event_time": NOW}).encode(), now=NOW)
    assert gone.op == "withdraw"


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ({"item_id": "i", "event_time": NOW}, "missing_field"),
        ({"item_id": "i", "event_time": NOW, "title": "  "}, "bad_value"),
        ({"item_id": "i", "event_time": NOW, "title": "t", "op": "delete"}, "bad_value"),
        ({"item_id": "i", "event_time": NOW, "title": "t", "price": -1}, "bad_value"),
        ({"item_id": "i", "event_time": NOW, "title": "t", "category_path": [1]}, "bad_type"),
        ({"item_id": "i", "event_time": NOW, "title": "t", "vectors": {"img": "x"}}, "bad_type"),
    ],
)
def test_bad_catalogue_records(obj: dict, reason: str) -> None:
    with pytest.raises(RecordError) as err:
        decode_catalogue(json.dumps(obj).encode(), now=NOW)
    assert err.value.reason == reason


def test_recommendation_round_trip() -> None:
    rec = RecommendationRecord("u1", [ScoredItem("a", 0.5), ScoredItem("b", 0.25)], "content-v1", "e1", NOW - 9, NOW)
    back = decode_recommendation(encode(rec))
    assert back == rec
    assert json.loads(encode(rec))["v"] == 1


@pytest.mark.parametrize("explained", [False, True])
def test_hand_built_recommendation_json_equals_the_generic_encoding(explained: bool) -> None:
    why = Explanation(["x", "y"], {"title": 0.7, "attr": 0.3}) if explained else None
    items = [ScoredItem("a", 0.5), ScoredItem("b", 0.4, new=True), ScoredItem("c", 0.1, explore=True)]
    rec = RecommendationRecord("u1", items, "m-v2", "e1", NOW - 9, NOW, why)
    generic = asdict(rec)
    for item in generic["items"]:  # the flags are written only when set
        for flag in ("new", "explore"):
            if not item[flag]:
                del item[flag]
    assert encode(rec) == json.dumps(generic, separators=(",", ":"), ensure_ascii=False).encode()
    assert decode_recommendation(encode(rec)) == rec


def test_model_announcements_round_trip_and_bad_ones_are_refused() -> None:
    good = ModelAnnouncement("ml-100k-mufasa-ft3", "rollback", NOW)
    assert decode_model_announcement(encode(good)) == good
    for raw, reason in [
        (b'{"v": 1, "action": "promote"}', "missing_field"),
        (b'{"v": 1, "version": "x", "action": "delete"}', "bad_value"),
        (b"not json", "undecodable"),
    ]:
        with pytest.raises(RecordError) as err:
            decode_model_announcement(raw)
        assert err.value.reason == reason


@settings(max_examples=300, deadline=None)
@given(user=st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=40))
def test_an_id_is_refused_exactly_when_it_holds_a_control_character_or_is_empty(user: str) -> None:
    raw = json.dumps({"event_id": "e1", "user_id": user, "item_id": "i1", "event_time": now_ms()}).encode()
    refused = not user or any(ord(ch) < 32 for ch in user)  # the rule, one character at a time
    try:
        assert decode_click(raw).user_id == user
        assert not refused, f"{user!r} was accepted"
    except RecordError as exc:
        assert refused and exc.reason == "bad_value", f"{user!r} was refused: {exc.reason}"
