"""From input messages to outputs, with no Kafka in sight: every message ends as a recommendation
(or an applied catalogue change, or a model swap) or as a dead letter with its reason.

The Faust agents in `stream/app.py` turn broker messages into `Message`s, make one call here, send
what comes back and record metrics. This is the edge where bad input becomes a dead letter, so it
is the one place that catches broadly:
- decoding is total (`stream/schemas.py`): any payload yields a record or a `RecordError`;
- a record that fails later, while being handled or encoded, is isolated: the batch is retried in
  halves until the failing record stands alone, and it alone is dead-lettered ("handling_failed")
  while the rest of its micro-batch is answered;
- a message that killed the worker twice (a hard crash that no `except` sees: a segfault, an
  abort, the OOM killer) is dead-lettered as "poison" without being handled again, using the
  batch journal (`state/batch_journal.py`); a message in flight at one crash is a suspect and is
  handled on its own so that a second crash names it alone.
Clicks that the journal says were answered before a restart, and whose event ids the state holds,
are not answered twice; a click at an answered offset with an event id the state does not hold
means the partition's log went backwards (offsets reused after data loss on the broker) and is
counted as a discontinuity and answered.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamrec.serving.recommender import ClickBatchResult, Recommender
from streamrec.serving.serving_model import ServingModel
from streamrec.state.batch_journal import BatchJournal
from streamrec.state.model_store import ModelStoreError
from streamrec.stream.schemas import (
    CatalogueRecord,
    ClickRecord,
    DeadLetterRecord,
    ModelAnnouncement,
    RecommendationRecord,
    RecordError,
    decode_catalogue,
    decode_click,
    decode_model_announcement,
    encode,
    now_ms,
)

# How much of an offending payload a dead letter keeps (enough to replay it by hand).
DEAD_LETTER_PAYLOAD_BYTES = 10_000


@dataclass(frozen=True)
class Message:
    """One input message as read from the broker."""

    topic: str
    partition: int
    offset: int
    value: object  # bytes from the broker; anything else is dead-lettered
    timestamp_ms: int = 0


def failure(exc: BaseException) -> RecordError:
    """A dead-letter reason for an exception raised while handling a record."""
    return RecordError("handling_failed", f"{type(exc).__name__}: {str(exc)[:300]}")


def dead_letter_of(msg: Message, error: RecordError) -> DeadLetterRecord:
    """The dead letter of one input message, with its payload (truncated) for replaying it."""
    value = msg.value
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
    else:
        raw = str(value).encode("utf-8", "backslashreplace")
    return DeadLetterRecord(
        source_topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        reason=error.reason,
        detail=error.detail,
        payload=raw[:DEAD_LETTER_PAYLOAD_BYTES].decode("utf-8", errors="replace"),
        at=now_ms(),
    )


def last_offsets(messages: Sequence[Message]) -> dict[int, int]:
    """{partition: last offset} of the messages."""
    last: dict[int, int] = {}
    for m in messages:
        last[m.partition] = max(m.offset, last.get(m.partition, -1))
    return last


def _decode_or_dead(
    msg: Message, decode: Callable[[object], Any], journal: BatchJournal | None, dead: list[DeadLetterRecord]
) -> Any:
    """The message's record, or None with its dead letter added (poison, or a decoding error)."""
    if journal is not None and journal.is_poison(msg.topic, msg.partition, msg.offset):
        dead.append(dead_letter_of(msg, RecordError("poison", "the worker died twice while handling it")))
        return None
    try:
        return decode(msg.value)
    except RecordError as err:
        dead.append(dead_letter_of(msg, err))
        return None


def _groups(items: list[tuple[Message, Any]], journal: BatchJournal | None) -> list[list[tuple[Message, Any]]]:
    """Suspects of an earlier crash one at a time, then the rest together."""
    suspects: list[list[tuple[Message, Any]]] = []
    normal: list[tuple[Message, Any]] = []
    for item in items:
        msg = item[0]
        if journal is not None and journal.crashes(msg.topic, msg.partition, msg.offset):
            suspects.append([item])
        else:
            normal.append(item)
    return suspects + ([normal] if normal else [])


def _run_isolated(
    items: list[tuple[Message, Any]],
    journal: BatchJournal | None,
    run: Callable[[list[tuple[Message, Any]]], None],
    dead: list[DeadLetterRecord],
) -> None:
    """Call `run` on each group (`_groups`), recorded in the journal as in flight. If `run` raises,
    call it on the group's halves, down to the record that fails alone, which is dead-lettered."""

    def isolate(group: list[tuple[Message, Any]]) -> None:
        try:
            run(group)
        except Exception as exc:  # noqa: BLE001 - the dead-letter edge (module docstring)
            if len(group) == 1:
                dead.append(dead_letter_of(group[0][0], failure(exc)))
                return
            half = len(group) // 2
            isolate(group[:half])
            isolate(group[half:])

    for group in _groups(items, journal):
        if journal is not None:
            journal.begin(group[0][0].topic, [(m.partition, m.offset) for m, _ in group])
        isolate(group)


# --- clicks ------------------------------------------------------------------------------------


@dataclass
class ClickOutcome:
    recommendations: list[RecommendationRecord] = field(default_factory=list)
    encoded: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, value) per recommendation
    sources: list[tuple[int, int]] = field(default_factory=list)  # (partition, offset) of each one's click
    dead: list[DeadLetterRecord] = field(default_factory=list)
    duplicates: int = 0  # clicks the state already held, answered again
    already_answered: int = 0  # clicks answered before a restart, not answered again
    reused_offsets: dict[int, int] = field(default_factory=dict)  # {partition: clicks at reused offsets}
    stage_seconds: dict[str, float] = field(default_factory=dict)
    last: dict[int, int] = field(default_factory=dict)  # {partition: last offset} of the batch
    offsets: list[tuple[int, int]] = field(default_factory=list)  # every (partition, offset)


def handle_click_messages(
    recommender: Recommender,
    messages: Sequence[Message],
    journal: BatchJournal | None = None,
    answer_again: bool = False,
    rewritten: Collection[tuple[int, int]] = frozenset(),
) -> ClickOutcome:
    """Answer a micro-batch of click messages; see the module docstring for what can happen to
    each. The caller sends `encoded` and `dead`, waits for the broker's acknowledgements, then
    calls `journal.done(topic, outcome.last, outcome.offsets)`. `answer_again`: answer clicks the
    journal says were answered (their answers were lost). `rewritten`: (partition, offset) of
    messages that are not the record this process handled at that offset before, so the journal's
    word that the offset was answered is about another record: they are answered even when the
    state holds their event id (a producer's retry can move a click to another offset after the
    broker lost data, and its first answer may have been lost with it)."""
    out = ClickOutcome(last=last_offsets(messages), offsets=[(m.partition, m.offset) for m in messages])
    if not messages:
        return out
    topic = messages[0].topic
    t0 = time.perf_counter()
    kept: list[tuple[Message, ClickRecord]] = []
    for msg in messages:
        click = _decode_or_dead(msg, decode_click, journal, out.dead)
        if click is None:
            continue
        trust_journal = not answer_again and (msg.partition, msg.offset) not in rewritten
        if journal is not None and trust_journal and msg.offset <= journal.answered(topic, msg.partition):
            if recommender.sequences.has_event(click.user_id, click.event_id):
                out.already_answered += 1
                continue
            out.reused_offsets[msg.partition] = out.reused_offsets.get(msg.partition, 0) + 1
        kept.append((msg, click))
    out.stage_seconds["decode"] = time.perf_counter() - t0
    _run_isolated(kept, journal, lambda group: _answer(recommender, group, out), out.dead)
    # Record how far the state has read each partition, even where every click was refused.
    recommender.sequences.append_many([], out.last)
    return out


def _answer(recommender: Recommender, group: list[tuple[Message, ClickRecord]], out: ClickOutcome) -> None:
    """Answer `group` into `out`; raises, leaving `out` untouched, if handling or encoding fails."""
    result = recommender.handle_clicks([c for _, c in group])
    encoded = _encode_answers(result)
    rejected = {pos for pos, _ in result.rejected}
    for pos, err in result.rejected:
        out.dead.append(dead_letter_of(group[pos][0], err))
    out.recommendations += result.recommendations
    out.encoded += encoded
    out.sources += [(m.partition, m.offset) for pos, (m, _) in enumerate(group) if pos not in rejected]
    out.duplicates += result.duplicates
    for stage, seconds in result.stage_seconds.items():
        out.stage_seconds[stage] = out.stage_seconds.get(stage, 0.0) + seconds


def _encode_answers(result: ClickBatchResult) -> list[tuple[bytes, bytes]]:
    return [(rec.user_id.encode(), encode(rec)) for rec in result.recommendations]


# --- catalogue ---------------------------------------------------------------------------------


@dataclass
class CatalogueOutcome:
    applied: list[CatalogueRecord] = field(default_factory=list)
    dead: list[DeadLetterRecord] = field(default_factory=list)
    last: dict[int, int] = field(default_factory=dict)
    offsets: list[tuple[int, int]] = field(default_factory=list)


def handle_catalogue_messages(
    recommender: Recommender, messages: Sequence[Message], journal: BatchJournal | None = None
) -> CatalogueOutcome:
    """Apply catalogue messages (decode, encode items, update the index), isolating failures like
    `handle_click_messages`. The caller records the catalogue offsets once dead letters are sent."""
    out = CatalogueOutcome(last=last_offsets(messages), offsets=[(m.partition, m.offset) for m in messages])
    if not messages:
        return out
    kept = [(m, r) for m in messages if (r := _decode_or_dead(m, decode_catalogue, journal, out.dead)) is not None]

    def apply(group: list[tuple[Message, CatalogueRecord]]) -> None:
        recommender.apply_catalogue([r for _, r in group])
        out.applied.extend(r for _, r in group)

    _run_isolated(kept, journal, apply, out.dead)
    return out


# --- model announcements -----------------------------------------------------------------------


@dataclass
class AnnouncedModel:
    announcement: ModelAnnouncement | None = None  # the latest valid announcement, if any
    model: ServingModel | None = None  # None: nothing to swap (same version, or it failed)
    dead: list[DeadLetterRecord] = field(default_factory=list)


def handle_model_messages(
    messages: Sequence[Message],
    current_version: str,
    load_version: Callable[[str], ServingModel],
    has_version: Callable[[str], bool],
) -> AnnouncedModel:
    """Decode announcements and load the version the latest valid one names (blocking: run it in
    a thread). Every message is accounted for: malformed ones, and ones naming a version the
    model store does not have, are dead letters; a version that fails to load is a dead letter
    and the worker serves on with the model it has. Earlier valid announcements of the same poll
    are superseded by the latest and not loaded."""
    out = AnnouncedModel()
    valid: list[tuple[Message, ModelAnnouncement]] = []
    for msg in messages:
        try:
            announcement = decode_model_announcement(msg.value)
        except RecordError as err:
            out.dead.append(dead_letter_of(msg, err))
            continue
        if announcement.version != current_version and not has_version(announcement.version):
            error = RecordError("unknown_version", f"the model store has no version {announcement.version!r}")
            out.dead.append(dead_letter_of(msg, error))
            continue
        valid.append((msg, announcement))
    if not valid:
        return out
    msg, out.announcement = valid[-1]
    if out.announcement.version == current_version:
        return out
    try:
        out.model = load_version(out.announcement.version)
    except ModelStoreError as exc:
        out.dead.append(dead_letter_of(msg, RecordError("unknown_version", str(exc))))
    except Exception as exc:  # noqa: BLE001 - a broken checkpoint must not stop serving (dead-letter edge)
        out.dead.append(dead_letter_of(msg, RecordError("model_load_failed", f"{type(exc).__name__}: {exc}")))
    return out


def encode_dead(dead: DeadLetterRecord) -> tuple[bytes, bytes]:
    """(key, value) of a dead letter; total, since its text is escaped to ASCII."""
    return dead.source_topic.encode("utf-8", "backslashreplace"), encode(dead)
