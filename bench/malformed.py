"""Malformed payloads of every kind that has stopped a worker or that a producer could send.

Used by `streamrec bench reliability` (a burst of thousands between valid clicks) and by the
poison-pill integration test. Each kind is a function of a sequence number and a valid record, so
a burst can repeat kinds with distinct payloads. All are invalid for the topic they are made for.
"""

from __future__ import annotations

import json
from collections.abc import Callable

Maker = Callable[[int, dict], bytes]


def _with(obj: dict, name: str, raw: str) -> bytes:
    """obj as JSON with field `name` set to raw JSON text (which json.dumps cannot always make)."""
    return json.dumps({**obj, name: "\x00slot\x00"}).replace('"\\u0000slot\\u0000"', raw).encode()


def _drop(obj: dict, name: str) -> bytes:
    return json.dumps({k: v for k, v in obj.items() if k != name}).encode()


def _deep(n: int) -> str:
    return "[" * n + "]" * n


# Kinds that break any record: (name, maker).
COMMON: list[tuple[str, Maker]] = [
    ("invalid_utf8", lambda k, g: b"\xff\xfe" + str(k).encode()),
    ("binary_noise", lambda k, g: bytes((k * 7 + j * 13) % 256 for j in range(40))),
    ("empty", lambda k, g: b""),
    ("truncated_json", lambda k, g: json.dumps(g).encode()[:-3]),
    ("json_null", lambda k, g: b"null"),
    ("json_array", lambda k, g: json.dumps([g]).encode()),
    ("json_number", lambda k, g: str(k).encode()),
    ("json_string", lambda k, g: json.dumps(f"click {k}").encode()),
    ("deep_nesting", lambda k, g: _deep(5000 + k % 7).encode()),
    ("deep_nesting_in_field", lambda k, g: _with(g, "extra", '{"a":' * 200 + "1" + "}" * 200)),
    ("schema_version_2", lambda k, g: _with(g, "v", "2")),
    ("schema_version_true", lambda k, g: _with(g, "v", "true")),
    ("nan_literal", lambda k, g: _with(g, "event_time", "NaN")),
    ("infinity_literal", lambda k, g: _with(g, "event_time", "-Infinity")),
]

CLICK: list[tuple[str, Maker]] = [
    ("too_large", lambda k, g: _with(g, "pad", json.dumps("x" * (17_000 + k % 11)))),
    ("timestamp_overflow", lambda k, g: _with(g, "event_time", "9" * (25 + k % 5))),
    ("timestamp_4400_digits", lambda k, g: _with(g, "event_time", "9" * (4400 + k % 3))),
    ("timestamp_1e400", lambda k, g: _with(g, "event_time", "1e400")),
    ("timestamp_string", lambda k, g: _with(g, "event_time", '"yesterday"')),
    ("timestamp_bool", lambda k, g: _with(g, "event_time", "true")),
    ("timestamp_1970", lambda k, g: _with(g, "event_time", str(k))),
    ("timestamp_far_future", lambda k, g: _with(g, "event_time", str(10**15 + k))),
    ("user_surrogate", lambda k, g: _with(g, "user_id", '"\\ud800"')),
    ("user_surrogate_pair_reversed", lambda k, g: _with(g, "user_id", f'"u{k}\\udfff\\ud800"')),
    ("item_surrogate", lambda k, g: _with(g, "item_id", '"\\udc80"')),
    ("event_surrogate", lambda k, g: _with(g, "event_id", f'"e{k}\\ud83d"')),
    ("user_null", lambda k, g: _with(g, "user_id", "null")),
    ("user_missing", lambda k, g: _drop(g, "user_id")),
    ("item_missing", lambda k, g: _drop(g, "item_id")),
    ("event_missing", lambda k, g: _drop(g, "event_id")),
    ("time_missing", lambda k, g: _drop(g, "event_time")),
    ("user_list", lambda k, g: _with(g, "user_id", "[1, 2]")),
    ("user_object", lambda k, g: _with(g, "user_id", '{"id": 1}')),
    ("user_empty", lambda k, g: _with(g, "user_id", '""')),
    ("user_control_chars", lambda k, g: _with(g, "user_id", '"a\\u0000b"')),
    ("user_too_long", lambda k, g: _with(g, "user_id", json.dumps("u" * (201 + k % 50)))),
    ("user_huge_int", lambda k, g: _with(g, "user_id", "9" * (50 + k % 9))),
    ("item_unknown", lambda k, g: _with(g, "item_id", json.dumps(f"no-such-item-{k}"))),
    ("source_ts_huge", lambda k, g: _with(g, "source_ts", "9" * 60)),
    ("source_ts_string", lambda k, g: _with(g, "source_ts", '"x"')),
]

CATALOGUE: list[tuple[str, Maker]] = [
    ("too_large", lambda k, g: _with(g, "pad", json.dumps("x" * (600_000 + k % 11)))),
    ("null_value", lambda k, g: b"null"),
    ("price_1e400", lambda k, g: _with(g, "price", "1e400")),
    ("price_10_pow_400", lambda k, g: _with(g, "price", "1" + "0" * 400)),
    ("price_negative", lambda k, g: _with(g, "price", "-1")),
    ("item_surrogate", lambda k, g: _with(g, "item_id", '"\\ud800"')),
    ("title_surrogate", lambda k, g: _with(g, "title", '"t\\udfff"')),
    ("title_empty", lambda k, g: _with(g, "title", '"  "')),
    ("title_missing", lambda k, g: _drop(g, "title")),
    ("title_too_long", lambda k, g: _with(g, "title", json.dumps("t" * 10_001))),
    ("op_unknown", lambda k, g: _with(g, "op", '"delete"')),
    ("category_not_strings", lambda k, g: _with(g, "category_path", "[1, 2]")),
    ("category_surrogate", lambda k, g: _with(g, "category_path", '["\\ud800"]')),
    ("category_too_deep", lambda k, g: _with(g, "category_path", json.dumps(["c"] * 40))),
    ("vectors_not_numbers", lambda k, g: _with(g, "vectors", '{"img": ["a"]}')),
    ("vectors_huge", lambda k, g: _with(g, "vectors", json.dumps({"img": [0.5] * 4100}))),
    ("brand_object", lambda k, g: _with(g, "brand", '{"b": 1}')),
    ("time_overflow", lambda k, g: _with(g, "event_time", "9" * 30)),
]

MODELS: list[tuple[str, Maker]] = [
    ("too_large", lambda k, g: _with(g, "pad", json.dumps("x" * (17_000 + k % 11)))),
    ("version_missing_in_store", lambda k, g: _with(g, "version", json.dumps(f"no-such-version-{k}"))),
    ("version_path_escape", lambda k, g: _with(g, "version", '"../../../../tmp"')),
    ("version_absolute_path", lambda k, g: _with(g, "version", '"/etc"')),
    ("version_surrogate", lambda k, g: _with(g, "version", '"v\\ud800"')),
    ("version_number", lambda k, g: _with(g, "version", "12")),
    ("action_unknown", lambda k, g: _with(g, "action", '"delete"')),
    ("at_huge", lambda k, g: _with(g, "at", "9" * 80)),
]


def valid_click(k: int, item_id: str, now_ms: int) -> dict:
    return {"v": 1, "event_id": f"bad-{k}", "user_id": f"fuzz-{k % 97}", "item_id": item_id, "event_time": now_ms}


def valid_catalogue(k: int, now_ms: int) -> dict:
    return {"v": 1, "item_id": f"fuzz-item-{k}", "op": "upsert", "event_time": now_ms, "title": f"fuzz {k}"}


def valid_announcement(k: int, now_ms: int) -> dict:
    return {"v": 1, "version": f"fuzz-{k}", "action": "promote", "at": now_ms}


def kinds_for(topic_kind: str) -> list[tuple[str, Maker]]:
    """Every malformed kind for "click", "catalogue" or "models" records."""
    own = {"click": CLICK, "catalogue": CATALOGUE, "models": MODELS}[topic_kind]
    return COMMON + own
