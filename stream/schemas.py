"""Versioned JSON records of every topic, their encoders, and validating decoders.

Decoding is total: whatever bytes a producer sends, a decoder returns a record or raises
`RecordError`, never anything else. Its `reason` is a short code (the label of the dead-letter
counter) and its `detail` says what exactly was wrong. Parsing is bounded before anything reaches
state, the index, the model or the producer: payload size, nesting depth, digits of a number,
length of a string, and valid Unicode (JSON's `\\ud800` escapes give Python strings that cannot be
encoded again). See docs/topics.md.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from streamrec.state.model_store import valid_version_name

SCHEMA_VERSION = 1
# Event times outside [2000-01-01, now + 1 day] are absurd for a live stream.
MIN_EVENT_TIME_MS = 946_684_800_000
MAX_FUTURE_MS = 86_400_000
MAX_ID_LEN = 200
# Bounds of bounded parsing. A click is ~150 bytes and a catalogue record a few hundred; the
# limits leave room for precomputed modality vectors while refusing what would cost the worker
# memory or time (deep nesting makes `json.loads` recurse until RecursionError; Python refuses
# integers of more than 4,300 digits with ValueError, and a 400-digit one overflows float()).
# The catalogue bound stays under brokers' default message limit (about 1 MB) so that it is the
# worker, not the broker, that names an oversized record; 8 vectors of 4,096 numbers fit in it.
MAX_PAYLOAD_BYTES = {"click": 16 * 1024, "catalogue": 512 * 1024, "announcement": 16 * 1024}
MAX_DEPTH = 16
MAX_NUMBER_CHARS = 40
MAX_TEXT_LEN = 10_000
MAX_CATEGORY_DEPTH = 32
MAX_VECTORS = 8
MAX_VECTOR_DIM = 4096


class RecordError(ValueError):
    """A record that cannot be used; `reason` is one of the codes below."""

    REASONS = (
        "undecodable",
        "not_an_object",
        "bad_version",
        "missing_field",
        "bad_type",
        "bad_value",
        "bad_timestamp",
        "unknown_item",
        "too_large",
        "too_deep",
        "bad_unicode",
        "invalid",
        "unknown_version",
        "model_load_failed",
        "handling_failed",
        "poison",
    )

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in self.REASONS, f"unknown reason {reason}"
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class ClickRecord:
    """`clicks` topic, keyed by user id."""

    event_id: str
    user_id: str
    item_id: str
    event_time: int  # ms since epoch, when the click happened (replay: when it was published)
    source_ts: int | None = None  # the dataset's own timestamp, seconds, when replayed
    v: int = SCHEMA_VERSION


@dataclass(frozen=True)
class CatalogueRecord:
    """`catalogue` topic, keyed by item id. op "upsert" adds or replaces; "withdraw" removes."""

    item_id: str
    op: str
    event_time: int
    title: str = ""
    category_path: tuple[str, ...] = ()
    brand: str | None = None
    price: float | None = None
    vectors: dict[str, list[float]] = field(default_factory=dict)
    v: int = SCHEMA_VERSION


@dataclass(frozen=True)
class ScoredItem:
    item_id: str
    score: float
    new: bool = False  # placed by content alone and scored through the new-item calibration
    explore: bool = False  # the slot was given by the exploration quota (STREAMREC_EXPLORE_SLOTS)


@dataclass(frozen=True)
class Explanation:
    """Why: the history items that weighed most (the model's attention), and how the gate weighed
    the top item's modalities (empty for models without a gate)."""

    because: list[str]
    modality_weights: dict[str, float]


@dataclass(frozen=True)
class RecommendationRecord:
    """`recommendations` topic, keyed by user id."""

    user_id: str
    items: list[ScoredItem]
    model_version: str
    event_id: str  # the triggering click
    event_time: int  # the triggering click's event time, ms
    emitted_at: int  # ms
    explanation: Explanation | None = None  # optional; STREAMREC_EXPLAIN=0 leaves it out
    v: int = SCHEMA_VERSION


@dataclass(frozen=True)
class ModelAnnouncement:
    """`models` topic: the model store's current version changed (promotion or rollback)."""

    version: str
    action: str  # "promote" or "rollback"
    at: int  # ms
    v: int = SCHEMA_VERSION


@dataclass(frozen=True)
class DeadLetterRecord:
    """`dead-letters` topic: what was wrong and the original bytes (UTF-8 with replacement)."""

    source_topic: str
    partition: int
    offset: int
    reason: str
    detail: str
    payload: str
    at: int
    v: int = SCHEMA_VERSION


def encode(record: Any) -> bytes:
    if isinstance(record, RecommendationRecord):
        return encode_recommendation(record)
    if isinstance(record, DeadLetterRecord):
        # A dead letter quotes what was wrong, which may hold text that is not valid Unicode (a
        # lone surrogate from a JSON escape): ASCII escapes keep its encoding total.
        return json.dumps(asdict(record), separators=(",", ":"), ensure_ascii=True).encode()
    return json.dumps(asdict(record), separators=(",", ":"), ensure_ascii=False).encode()


def encode_recommendation(rec: RecommendationRecord) -> bytes:
    """The same JSON as `asdict`, built by hand: `asdict` deep-copies every nested item, which
    measured as a tenth of the worker's time per recommendation."""
    why = rec.explanation
    obj = {
        "user_id": rec.user_id,
        "items": [_item_json(i) for i in rec.items],
        "model_version": rec.model_version,
        "event_id": rec.event_id,
        "event_time": rec.event_time,
        "emitted_at": rec.emitted_at,
        "explanation": None
        if why is None
        else {"because": list(why.because), "modality_weights": dict(why.modality_weights)},
        "v": rec.v,
    }
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _item_json(item: ScoredItem) -> dict[str, Any]:
    """The flags are written only when set: most slots carry neither."""
    out: dict[str, Any] = {"item_id": item.item_id, "score": item.score}
    if item.new:
        out["new"] = True
    if item.explore:
        out["explore"] = True
    return out


# --- bounded parsing ---------------------------------------------------------------------------


def _bounded_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise RecordError("bad_value", f"a number of {len(text)} digits (at most {MAX_NUMBER_CHARS})")
    return int(text)


def _bounded_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise RecordError("bad_value", f"a number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
    value = float(text)
    if not math.isfinite(value):
        raise RecordError("bad_value", f"number {text} is out of range")
    return value


def _no_constant(name: str) -> float:
    raise RecordError("bad_value", f"{name} is not a JSON number")


def _nesting_depth(text: str) -> int:
    """Deepest nesting of arrays and objects, brackets inside strings not counted."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _load_object(raw: object, kind: str) -> dict[str, Any]:
    if not isinstance(raw, bytes | bytearray):
        raise RecordError("undecodable", f"value of type {type(raw).__name__}, expected bytes")
    limit = MAX_PAYLOAD_BYTES[kind]
    if len(raw) > limit:
        raise RecordError("too_large", f"{len(raw)} bytes, a {kind} record may have {limit}")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError("undecodable", f"not UTF-8: {exc}") from exc
    # The scan runs only when there are enough brackets to exceed the bound (str.count is cheap).
    if text.count("[") + text.count("{") > MAX_DEPTH and _nesting_depth(text) > MAX_DEPTH:
        raise RecordError("too_deep", f"nesting deeper than {MAX_DEPTH} levels")
    try:
        obj = json.loads(text, parse_int=_bounded_int, parse_float=_bounded_float, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise RecordError("undecodable", f"not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise RecordError("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
    version = obj.get("v", SCHEMA_VERSION)
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise RecordError("bad_version", f"schema version {_show(version)}, this worker reads {SCHEMA_VERSION}")
    return obj


def _show(value: object, limit: int = 80) -> str:
    """A short, always-encodable rendering of a value for a dead letter's detail."""
    text = repr(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _text(value: str, name: str, limit: int = MAX_TEXT_LEN) -> str:
    if len(value) > limit:
        raise RecordError("bad_value", f"field {name!r} has {len(value)} characters (at most {limit})")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RecordError("bad_unicode", f"field {name!r} is not valid Unicode: {exc.reason}") from exc
    return value


def _field(obj: dict[str, Any], name: str, kinds: type | tuple[type, ...], required: bool = True) -> Any:
    if name not in obj or obj[name] is None:
        if required:
            raise RecordError("missing_field", f"field {name!r} is missing")
        return None
    value = obj[name]
    # bool is an int in Python; a JSON true is never a valid id or time here.
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise RecordError("bad_type", f"field {name!r} has type {type(value).__name__}")
    if isinstance(value, str):
        _text(value, name)
    return value


# ASCII control characters, which no id may hold (one regex scan instead of a loop per character).
_CONTROL = re.compile("[\x00-\x1f]")


def _ident(obj: dict[str, Any], name: str) -> str:
    value = _field(obj, name, (str, int))
    text = str(value)
    if not text or len(text) > MAX_ID_LEN or _CONTROL.search(text):
        raise RecordError("bad_value", f"field {name!r} is empty, too long or has control characters")
    return text


def _event_time(obj: dict[str, Any], now: int) -> int:
    value = _field(obj, "event_time", (int, float))
    # Numbers are already bounded in digits and finite; compare before any float conversion.
    if value < MIN_EVENT_TIME_MS or value > now + MAX_FUTURE_MS:
        raise RecordError("bad_timestamp", f"event_time {_show(value)} is not a plausible ms timestamp")
    return int(value)


def total(decode: Callable[[bytes], Any]) -> Callable[..., Any]:
    """`decode` made total: any failure a payload can cause becomes a `RecordError`.

    This is the edge where bad input turns into a dead letter, so it catches broadly on purpose:
    a payload must never be able to raise anything else into an agent (RecursionError, MemoryError,
    OverflowError, UnicodeError and whatever a bug in a validator might throw)."""

    def decode_total(raw: bytes, *args: Any, **kwargs: Any) -> Any:
        try:
            return decode(raw, *args, **kwargs)
        except RecordError:
            raise
        except Exception as exc:  # noqa: BLE001 - the dead-letter edge, see the docstring
            raise RecordError("invalid", f"{type(exc).__name__}: {_show(str(exc), 200)}") from exc

    decode_total.__doc__ = decode.__doc__
    decode_total.__name__ = decode.__name__
    return decode_total


@total
def decode_click(raw: bytes, now: int | None = None) -> ClickRecord:
    obj = _load_object(raw, "click")
    now = now_ms() if now is None else now
    source_ts = _field(obj, "source_ts", int, required=False)
    return ClickRecord(
        event_id=_ident(obj, "event_id"),
        user_id=_ident(obj, "user_id"),
        item_id=_ident(obj, "item_id"),
        event_time=_event_time(obj, now),
        source_ts=source_ts,
    )


def _vectors(obj: dict[str, Any]) -> dict[str, list[float]]:
    vectors = _field(obj, "vectors", dict, required=False) or {}
    if len(vectors) > MAX_VECTORS:
        raise RecordError("bad_value", f"{len(vectors)} vectors (at most {MAX_VECTORS})")
    for name, vec in vectors.items():
        _text(name, "vectors", MAX_ID_LEN)
        if not isinstance(vec, list) or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in vec):
            raise RecordError("bad_type", f"vector {_show(name)} must be a list of numbers")
        if len(vec) > MAX_VECTOR_DIM:
            raise RecordError("bad_value", f"vector {_show(name)} has {len(vec)} numbers (at most {MAX_VECTOR_DIM})")
    return vectors


@total
def decode_catalogue(raw: bytes, now: int | None = None) -> CatalogueRecord:
    obj = _load_object(raw, "catalogue")
    now = now_ms() if now is None else now
    op = _field(obj, "op", str, required=False) or "upsert"
    if op not in ("upsert", "withdraw"):
        raise RecordError("bad_value", f"op {_show(op)} is neither 'upsert' nor 'withdraw'")
    item_id = _ident(obj, "item_id")
    event_time = _event_time(obj, now)
    if op == "withdraw":
        return CatalogueRecord(item_id=item_id, op=op, event_time=event_time)
    title = _field(obj, "title", str)
    if not title.strip():
        raise RecordError("bad_value", "field 'title' is empty")
    path = _field(obj, "category_path", list, required=False) or []
    if not all(isinstance(p, str) for p in path):
        raise RecordError("bad_type", "field 'category_path' must be a list of strings")
    if len(path) > MAX_CATEGORY_DEPTH:
        raise RecordError("bad_value", f"category_path has {len(path)} levels (at most {MAX_CATEGORY_DEPTH})")
    for p in path:
        _text(p, "category_path", MAX_ID_LEN)
    price = _field(obj, "price", (int, float), required=False)
    if price is not None and not 0 <= price <= 1e12:
        raise RecordError("bad_value", f"price {_show(price)} is negative or absurd")
    return CatalogueRecord(
        item_id=item_id,
        op=op,
        event_time=event_time,
        title=title,
        category_path=tuple(path),
        brand=_field(obj, "brand", str, required=False),
        price=None if price is None else float(price),
        vectors=_vectors(obj),
    )


def decode_recommendation(raw: bytes) -> RecommendationRecord:
    """For consumers (tests, the demo tail, benchmarks)."""
    obj = json.loads(raw)
    items = [
        ScoredItem(str(i["item_id"]), float(i["score"]), bool(i.get("new")), bool(i.get("explore")))
        for i in obj["items"]
    ]
    why = obj.get("explanation")
    return RecommendationRecord(
        user_id=obj["user_id"],
        items=items,
        model_version=obj["model_version"],
        event_id=obj["event_id"],
        event_time=obj["event_time"],
        emitted_at=obj["emitted_at"],
        explanation=Explanation(list(why["because"]), dict(why["modality_weights"])) if why else None,
    )


def check_version_name(version: object) -> str:
    """`version` if it is a valid model-store version name, else RecordError("bad_value")."""
    if not valid_version_name(version):
        raise RecordError("bad_value", f"version {_show(version)} is not a model-store version name")
    return version


@total
def decode_model_announcement(raw: bytes) -> ModelAnnouncement:
    obj = _load_object(raw, "announcement")
    version = _field(obj, "version", str)
    action = _field(obj, "action", str)
    if action not in ("promote", "rollback"):
        raise RecordError("bad_value", f"action must be promote or rollback, got {_show(action)}")
    at = _field(obj, "at", int, required=False) or 0
    return ModelAnnouncement(check_version_name(version), action, int(at))
