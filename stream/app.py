"""The Faust app: thin agents over the `Recommender` core.

Each agent takes a micro-batch of events (bounded by size and wait), decodes them, makes one call
into plain code, sends what comes back, waits for the broker to acknowledge those sends, and
records metrics. Only then does Faust acknowledge the input events, so a crash replays at most the
unacknowledged batch; the sequence store recognises those clicks by event id (at-least-once
delivery, idempotent effect), and the batch journal keeps clicks answered before a crash from being
answered twice. What happens to each message is decided in `stream/handling.py`, which never
raises: bad input goes to the dead-letter topic with its reason.

Every agent and task runs supervised: if one dies anyway, the worker does not stay up doing
nothing. It logs one line saying why, counts it, and exits with status 70 so that its supervisor
(systemd, Kubernetes, compose `restart:`) starts it again; the batch journal then knows which
messages were in flight, and a message that kills the worker twice is dead-lettered as poison.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from faust.tables import TableManager
from faust.types import EventT
from kafka.errors import KafkaError as KafkaPythonError

from streamrec.ops.metrics import Metrics
from streamrec.settings import Settings
from streamrec.state.batch_journal import BatchJournal
from streamrec.stream.click_log import ClickLogReader
from streamrec.stream.handling import (
    Message,
    encode_dead,
    handle_catalogue_messages,
    handle_click_messages,
    handle_model_messages,
)
from streamrec.stream.log_check import Checkpoints, PartitionLog, Repair
from streamrec.stream.recommender import Recommender
from streamrec.stream.schemas import DeadLetterRecord, RecommendationRecord, RecordError, decode_click, now_ms
from streamrec.stream.serving_model import ServingModel

log = logging.getLogger(__name__)

# Exit status of a worker whose agent or task died (EX_SOFTWARE): restart me.
EXIT_AGENT_DIED = 70
# After the log went backwards, this many clicks of the partition before the divergence are
# answered again: the broker loses the last seconds of every topic, answers included (noida-db
# lost about 5 s, up to 1,200 clicks per partition, in `streamrec bench reliability`).
ANSWER_AGAIN_MESSAGES = 3_000
# How often each clicks partition's log is checked against what the worker handled since the
# last check (a re-read of those records); a divergence is found however late, within the last
# log_check.DEFAULT_KEEP records of the partition.
VERIFY_EVERY_S = 10.0
# Each check re-reads what no check at least this many seconds later has found intact, because a
# broker may acknowledge records it loses at an unclean stop a few seconds later.
VERIFY_MARGIN_S = 30.0


def exit_for_restart(name: str, exc: BaseException, on_fatal: Callable[[str], None] | None = None) -> None:
    """Leave at once with EXIT_AGENT_DIED. No clean shutdown on purpose: the batch in flight stays
    in the journal (with `on_fatal`'s record, so a poison message can be recognised), RocksDB
    recovers from its log, and uncommitted offsets are redelivered."""
    why = f"{name} stopped: {type(exc).__name__}: {str(exc)[:300]}"
    if on_fatal is not None:
        on_fatal(why)
    log.critical(
        "streamrec worker: %s; exiting with status %d so that it is restarted "
        "(docs/operations.md, 'Failures, what they look like, what to do')",
        why,
        EXIT_AGENT_DIED,
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_AGENT_DIED)


async def supervised(
    name: str,
    metrics: Metrics,
    body: Callable[[], Awaitable[None]],
    on_fatal: Callable[[str], None] | None = None,
) -> None:
    """Run an agent's or task's body; `streamrec_worker_agent_running_info{agent=name}` says whether it runs."""
    metrics.agent_up.labels(name).set(1)
    metrics.agent_crashes.labels(name)  # the series exists (at 0) from the start, for alerting on increase
    try:
        await body()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - the last line of defence: die loudly, never idle
        metrics.agent_up.labels(name).set(0)
        metrics.agent_crashes.labels(name).inc()
        exit_for_restart(name, exc, on_fatal)
    finally:
        metrics.agent_up.labels(name).set(0)


def faust_settings(settings: Settings) -> dict[str, Any]:
    """Faust/aiokafka settings; the throughput figures behind them are in the README. Creates the
    parent of Faust's data directory (Faust creates only the last level)."""
    (settings.state_dir / "faust").mkdir(parents=True, exist_ok=True)
    return {
        "broker": ",".join(f"kafka://{h}" for h in settings.kafka_bootstrap.split(",")),
        "store": "memory://",
        # Faust's default data directory is "<app id>-data" in the working directory; keep it
        # with the rest of the state so that tests and benchmarks leave nothing behind.
        "datadir": str(settings.state_dir / "faust" / settings.app_id),
        "value_serializer": "raw",
        "key_serializer": "raw",
        "consumer_auto_offset_reset": "earliest",
        "broker_session_timeout": 10.0,
        # A worker restarted after a crash rejoins under the same static member id and gets its
        # partitions back at once, instead of the group waiting a whole rebalance timeout for
        # the dead member. Measured on noida-db: 60 s stall without it.
        "consumer_group_instance_id": settings.worker_id,
        "broker_rebalance_timeout": 20.0,
        "broker_commit_interval": settings.commit_interval_s,
        "producer_linger": settings.producer_linger_ms / 1000.0,
        "topic_disable_leader": True,
        "TableManager": PromptTableManager,
        # The worker's own web server is not used; metrics have their own exporter.
        "web_enabled": False,
        "web_host": "127.0.0.1",
    }


async def _wait_for_partitions(consumer: AIOKafkaConsumer, topic: str, timeout_s: float = 60.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return sorted(parts)
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {topic} has no partitions: run `streamrec topics` first")
        await consumer.topics()  # refreshes metadata
        await asyncio.sleep(0.5)


async def _assigned_consumer(bootstrap: str, topic: str) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    """A started consumer outside any group, assigned every partition of `topic` (the caller seeks
    and stops it)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = await _wait_for_partitions(consumer, topic)
    except BaseException:
        await consumer.stop()
        raise
    tps = [TopicPartition(topic, p) for p in parts]
    consumer.assign(tps)
    return consumer, tps


class PromptTableManager(TableManager):
    """Faust's table manager that starts without its fixed one-second wait.

    faust-streaming 0.15.3's `TableManager.on_start` sleeps 1.0 s so that tables declared late can
    register before recovery starts. This app declares no Faust tables (its state is in RocksDB
    stores of its own), so the wait only delays every start and restart: measured as 1.0 s of a
    restart's 4 s to the first answer. The rest of `on_start` is Faust's own, unchanged."""

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


class StreamrecApp(faust.App):
    """Faust app that hands its partitions over at once when stopped on purpose.

    Workers join with a static member id so that a crashed worker, restarted, gets its partitions
    back without a rebalance. But a static member does not leave the group on a clean stop
    (KIP-345), so its partitions would stay unowned until the broker expires it (never, on
    noida-db). On SIGTERM we therefore leave like a dynamic member: the other workers take the
    partitions immediately (STREAMREC_LEAVE_GROUP_ON_STOP=0 keeps the static behaviour, e.g. for
    rolling restarts on Apache Kafka)."""

    leave_group_on_stop = True

    async def on_stop(self) -> None:
        if self.leave_group_on_stop:
            # aiokafka sends LeaveGroup on close only when no group instance id is set; pinned
            # versions (aiokafka 0.14, faust-streaming 0.15) keep the consumer here.
            inner = getattr(getattr(self.consumer, "_thread", None), "_consumer", None)
            if inner is not None:
                inner._coordinator._group_instance_id = None
        await super().on_stop()


def build_app(
    settings: Settings,
    recommender: Recommender,
    metrics: Metrics,
    on_recommendations: Callable[[list[RecommendationRecord]], None] | None = None,
    load_version: Callable[[str], ServingModel] | None = None,
    journal: BatchJournal | None = None,
    has_version: Callable[[str], bool] = lambda version: True,
    on_fatal: Callable[[str], None] | None = None,
    on_assignment: Callable[[set[int]], None] | None = None,
) -> faust.App:
    """The worker's Faust app; `on_recommendations` sees every emitted batch (the dashboard page);
    `load_version` loads a model-store version named on the models topic (hot swap) and
    `has_version` says whether the store has one; `journal`
    records batches in flight and answered offsets (poison detection, no double answers);
    `on_fatal` records why an agent died before the worker exits; `on_assignment` hears the clicks
    partitions this worker holds, once a second (the lookup endpoint's "held elsewhere" answer)."""
    app = StreamrecApp(settings.app_id, **faust_settings(settings))
    app.leave_group_on_stop = settings.leave_group_on_stop
    topics = settings.topics
    clicks_topic = app.topic(topics.clicks, value_type=bytes, key_type=bytes)
    batch_size = settings.batch_size
    batch_wait = settings.batch_wait_ms / 1000.0
    idle_s = settings.catalogue_idle_ms / 1000.0
    metrics.model_info.labels(recommender.model_version).set(1)
    metrics.model_loaded.set(time.time())
    metrics.index_size.set(len(recommender.index))
    metrics.users.set(recommender.sequences.n_users())
    # Next offset to process per clicks partition, from what was handled (the fetch position runs
    # ahead of it by whatever Faust has buffered): the base of the lag metric and of the check
    # that the log did not go backwards.
    next_offset: dict[int, int] = {}
    # Checksums of the records handled per clicks partition, and ranges being answered again after
    # the log went backwards (stream/log_check.py).
    handled: dict[int, PartitionLog] = {}
    repairs: dict[int, Repair] = {}
    verified_at: dict[int, float] = {}
    # Partitions where the log went backwards, with the offset Faust resumed at: the log check
    # finds where it diverged and answers up to there (Faust answers from there on).
    suspect: dict[int, tuple[str, int]] = {}  # {partition: (kind, offset where it was seen)}
    verified: dict[int, Checkpoints] = {}  # {partition: how far the log was handled, when}
    # The same for the answers: {recommendations partition: answers written, tagged with their click}.
    written: dict[int, PartitionLog] = {}
    answers_verified: dict[int, Checkpoints] = {}
    answers_verified_at: dict[int, float] = {}
    answer_log = ClickLogReader(settings.kafka_bootstrap, topics.recommendations)
    # The click agent and the log check both answer clicks; one batch at a time keeps the batch
    # journal's record of what is in flight exact.
    answering = asyncio.Lock()

    async def send_raw(topic: str, key: bytes, value: bytes) -> Any:
        # The producer directly, with bytes already encoded: Faust's topic.send adds per-message
        # codec and callback work that measured as the largest cost per recommendation.
        return await app.producer.send(topic, key, value, None, None, None)

    async def send_dead(dead: list[DeadLetterRecord]) -> list[Any]:
        futures = []
        for d in dead:
            metrics.dead_letters.labels(d.reason).inc()
            key, value = encode_dead(d)
            futures.append(await send_raw(topics.dead_letters, key, value))
        return futures

    # Set once the catalogue reader has caught up with the catalogue as it stood at start: clicks
    # wait for it, so a fresh worker does not reject clicks on items it has not read yet.
    catalogue_ready = asyncio.Event()

    @app.task
    async def read_catalogue() -> None:
        await supervised("catalogue", metrics, catalogue_loop, on_fatal)

    async def catalogue_loop() -> None:
        """Every worker reads every catalogue partition (no consumer group): each holds the whole
        catalogue and its own index, while users are partitioned. Resumes from the offsets its
        catalogue store recorded; re-applying an upsert or withdrawal is harmless."""
        consumer, tps = await _assigned_consumer(settings.kafka_bootstrap, topics.catalogue)
        try:
            for tp in tps:
                stored = recommender.catalogue.offset(tp.partition)
                if stored >= 0:
                    consumer.seek(tp, stored + 1)
                else:
                    await consumer.seek_to_beginning(tp)
            ends = await consumer.end_offsets(tps)
            while True:
                if not catalogue_ready.is_set():
                    positions = {tp: await consumer.position(tp) for tp in tps}
                    if all(positions[tp] >= ends[tp] for tp in tps):
                        catalogue_ready.set()
                        log.info("streamrec worker: catalogue read up to its end (%d items)", len(recommender.index))
                batches = await consumer.getmany(timeout_ms=int(1000 * batch_wait), max_records=batch_size)
                for tp, messages in batches.items():
                    metrics.events_in.labels(topics.catalogue).inc(len(messages))
                    await apply_catalogue_messages(
                        [Message(tp.topic, tp.partition, m.offset, m.value, m.timestamp) for m in messages]
                    )
                if not batches:
                    # Nothing new: stop fetching for a moment. A broker that answers empty fetches
                    # at once (noida-db) would otherwise keep this loop, which the click agent
                    # shares, busy; it bounds the added catalogue latency by catalogue_idle_ms.
                    consumer.pause(*tps)
                    await asyncio.sleep(idle_s)
                    consumer.resume(*tps)
        finally:
            await consumer.stop()

    async def apply_catalogue_messages(messages: list[Message]) -> None:
        outcome = handle_catalogue_messages(recommender, messages, journal)
        if outcome.applied:
            searchable = now_ms()
            for rec in outcome.applied:
                metrics.catalogue_latency.observe(max(0, searchable - rec.event_time) / 1000.0)
            metrics.index_updated.set(time.time())
        futures = await send_dead(outcome.dead)
        if futures:
            await asyncio.gather(*futures)
        # The offset is saved once every record of the batch is applied or dead-lettered, so a
        # restart never meets the same bad record again.
        recommender.catalogue.record_offsets(outcome.last)
        if journal is not None:
            journal.done(messages[0].topic, outcome.last, outcome.offsets)
        metrics.index_size.set(len(recommender.index))

    @app.task
    async def watch_models() -> None:
        if load_version is not None:
            await supervised("models", metrics, models_loop, on_fatal)

    async def models_loop() -> None:
        """Switch models without a restart when the trainer (or `streamrec model rollback`)
        announces a version: load it and encode the catalogue into a second index in a thread
        while batches keep being answered, then switch between two batches. An announcement that
        names a version the store lacks, or one that does not load, is a dead letter."""
        assert load_version is not None, "models_loop needs load_version"
        consumer, tps = await _assigned_consumer(settings.kafka_bootstrap, topics.models)
        try:
            # Only announcements made from now on: at start the worker loaded the store's current version.
            await consumer.seek_to_end(*tps)
            loop = asyncio.get_running_loop()
            while True:
                batches = await consumer.getmany(timeout_ms=1000)
                if not batches:
                    consumer.pause(*tps)
                    await asyncio.sleep(idle_s)
                    consumer.resume(*tps)
                    continue
                messages = [
                    Message(m.topic, m.partition, m.offset, m.value, m.timestamp)
                    for msgs in batches.values()
                    for m in msgs
                ]
                started = time.perf_counter()
                old = recommender.model_version
                announced = await loop.run_in_executor(
                    None, handle_model_messages, messages, old, load_version, has_version
                )
                if announced.dead:
                    await asyncio.gather(*await send_dead(announced.dead))
                if announced.model is None:
                    continue
                prepared = await loop.run_in_executor(None, recommender.prepare_model, announced.model)
                # Batches are answered synchronously on this loop, so the switch falls between two.
                recommender.swap_model(prepared)
                metrics.model_info.labels(old).set(0)
                metrics.model_info.labels(recommender.model_version).set(1)
                metrics.model_loaded.set(time.time())
                metrics.model_swap.observe(time.perf_counter() - started)
                metrics.index_size.set(len(recommender.index))
                metrics.index_updated.set(time.time())
        finally:
            await consumer.stop()

    click_log = ClickLogReader(settings.kafka_bootstrap, topics.clicks)

    async def catch_up_partitions(messages: list[Message]) -> None:
        """Apply clicks of this batch's partitions that another worker answered since this
        worker's state last saw them."""
        first: dict[int, int] = {}
        for m in messages:
            first[m.partition] = min(first.get(m.partition, m.offset), m.offset)
        for part, offset in first.items():
            applied = recommender.sequences.applied_offset(part)
            if offset <= applied + 1:
                continue
            loop = asyncio.get_running_loop()
            raw = await loop.run_in_executor(None, click_log.read, part, applied + 1, offset)
            missed = []
            for _, value in raw:
                try:
                    missed.append(decode_click(value))
                except RecordError:
                    continue  # the worker that read it first sent it to dead letters
            metrics.caught_up.inc(recommender.catch_up(missed, {part: offset - 1}))

    def note_rewinds(messages: list[Message]) -> None:
        """Offsets going backwards inside one process: the consumer was moved back (a rebalance
        after the broker came back, an out-of-range reset). The log check looks at the partition."""
        for m in messages:
            expected = next_offset.get(m.partition)
            if expected is not None and m.offset < expected - 1:
                metrics.discontinuities.labels(m.topic, str(m.partition), "rewind").inc()
                suspect.setdefault(m.partition, ("rewind", m.offset))
                log.warning(
                    "streamrec worker: %s[%d] went back from offset %d to %d; checking the log",
                    m.topic,
                    m.partition,
                    expected,
                    m.offset,
                )
            next_offset[m.partition] = m.offset + 1

    @app.agent(clicks_topic, name=f"{settings.app_id}-clicks")
    async def on_clicks(stream: faust.StreamT) -> None:
        async def body() -> None:
            await catalogue_ready.wait()
            log.info("streamrec worker: answering clicks")
            async for events in stream.take_events(batch_size, within=batch_wait):
                await answer_clicks([_message_of(e) for e in events])

        await supervised("clicks", metrics, body, on_fatal)

    async def answer_clicks(messages: list[Message], repair: bool = False) -> None:
        async with answering:
            await answer_clicks_locked(messages, repair)

    async def answer_clicks_locked(messages: list[Message], repair: bool) -> None:
        started = time.monotonic()
        metrics.events_in.labels(topics.clicks).inc(len(messages))
        metrics.batch_size.observe(len(messages))
        if not repair:
            oldest = min(m.timestamp_ms for m in messages)
            metrics.batch_wait.observe(max(0.0, time.time() - oldest / 1000.0))
            note_rewinds(messages)
            await catch_up_partitions(messages)
        for m in messages:
            if not handled.setdefault(m.partition, PartitionLog()).note(m.offset, m.value) and not repair:
                # Another record than the one handled at this offset: the log was rewritten.
                metrics.discontinuities.labels(m.topic, str(m.partition), "rewritten").inc()
                suspect.setdefault(m.partition, ("rewritten", m.offset))
        outcome = handle_click_messages(recommender, messages, journal, answer_again=repair)
        for stage, seconds in outcome.stage_seconds.items():
            metrics.stage_latency.labels(stage).observe(seconds)
        for part, n in outcome.reused_offsets.items():
            metrics.discontinuities.labels(topics.clicks, str(part), "reused_offset").inc()
            log.warning(
                "streamrec worker: %d clicks at already-answered offsets of %s[%d] carry new event ids: "
                "the broker reused offsets after losing data; answering them",
                n,
                topics.clicks,
                part,
            )
        t_send = time.perf_counter()
        metrics.duplicates.inc(outcome.duplicates)
        metrics.already_answered.inc(outcome.already_answered)
        futures = await send_dead(outcome.dead)
        sent = [await send_raw(topics.recommendations, key, value) for key, value in outcome.encoded]
        if futures:
            await asyncio.gather(*futures)
        overwritten: list[tuple[int, int]] = []
        results = await asyncio.gather(*sent)
        for meta, (_, value), source in zip(results, outcome.encoded, outcome.sources, strict=True):
            out_log = written.setdefault(meta.partition, PartitionLog())
            before = out_log.tag_at(meta.offset)
            if not out_log.note(meta.offset, value, tag=source) and before is not None:
                # This offset held an answer the broker had acknowledged: it lost that answer.
                overwritten.append(before)
        if overwritten:
            answer_again(overwritten, "answers_lost")
        if journal is not None:
            journal.done(topics.clicks, outcome.last, outcome.offsets)
        metrics.stage_latency.labels("send").observe(time.perf_counter() - t_send)
        if on_recommendations is not None:
            on_recommendations(outcome.recommendations)
        for rec in outcome.recommendations:
            metrics.freshness.observe(max(0, rec.emitted_at - rec.event_time) / 1000.0)
        metrics.recommendations.inc(len(outcome.recommendations))
        metrics.users.set(recommender.sequences.n_users())
        metrics.processing_latency.observe(time.monotonic() - started)

    @app.timer(interval=1.0)
    async def check_log() -> None:
        """Lag from what was processed, and a check that no partition's log went backwards."""
        consumer = app.consumer
        assigned = consumer.assignment()
        if on_assignment is not None:
            on_assignment({tp.partition for tp in assigned if tp.topic == topics.clicks})
        for tp in assigned:
            if tp.topic != topics.clicks:
                continue
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            processed = next_offset.get(tp.partition)
            if processed is None:
                try:
                    position = await consumer.position(tp)
                except KafkaError:
                    continue  # being reassigned; the next tick reads it
                processed = position if position is not None else highwater
            metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, highwater - processed))
            try:
                await verify_log(tp.partition, highwater)
                await continue_repair(tp.partition, highwater)
            except KafkaPythonError as exc:
                # The broker is unreachable or the partition moving: the next tick tries again.
                log.info("streamrec worker: log check of %s deferred: %s", tp, exc)
        for part in list(written):
            try:
                await verify_answers(part)
            except KafkaPythonError as exc:
                log.info("streamrec worker: answer check of partition %d deferred: %s", part, exc)

    async def verify_log(part: int, highwater: int) -> None:
        """Does the broker still hold the records handled since the last check (every
        VERIFY_EVERY_S, or at once after a rewind or a rewritten offset)? If not, answer (again)
        the range that differs, with ANSWER_AGAIN_MESSAGES before it."""
        log_of = handled.get(part)
        last = log_of.last() if log_of is not None else None
        first = log_of.first() if log_of is not None else None
        if log_of is None or last is None or first is None or part in repairs:
            return
        kind, seen_at = suspect.get(part, (None, last + 1))
        if kind is None and time.monotonic() - verified_at.get(part, 0.0) < VERIFY_EVERY_S and highwater > last:
            return
        verified_at[part] = time.monotonic()
        # From what is confirmed durable (a suspect partition: the whole window).
        marks = verified.setdefault(part, Checkpoints(VERIFY_MARGIN_S))
        settled = marks.settled()
        scan_from = first if kind is not None or settled is None else max(first, settled)
        loop = asyncio.get_running_loop()
        held = await loop.run_in_executor(None, click_log.read, part, scan_from, last + 1, 30.0)
        suspect.pop(part, None)
        diverged = log_of.diverged_range(held, scan_from, last + 1)
        if diverged is None and kind == "rewritten":
            # Faust delivered the rewritten offsets itself (their records were noted as handled);
            # the answers before them may still have been lost.
            diverged = (seen_at, seen_at)
        marks.mark(time.monotonic(), last)
        if diverged is None:
            return
        lo, hi = diverged
        kind = kind or ("beyond_end" if highwater <= last else "rewritten")
        metrics.discontinuities.labels(topics.clicks, str(part), kind).inc()
        start = max(first, lo - ANSWER_AGAIN_MESSAGES)
        log.warning(
            "streamrec worker: %s[%d] (%s) no longer holds the records handled at offsets %d to %d (the log "
            "ends at %d): the broker lost messages; answering offsets %d to %d (again) "
            "(docs/operations.md, 'Failures, what they look like, what to do')",
            topics.clicks,
            part,
            kind,
            lo,
            hi - 1,
            highwater,
            start,
            hi - 1,
        )
        if journal is not None:
            journal.unanswer_from(topics.clicks, part, start)
        log_of.forget(start, hi)
        marks.reset()
        repairs[part] = Repair(start, hi)

    async def verify_answers(part: int) -> None:
        """Does the recommendations topic still hold the answers this worker wrote to partition
        `part` since the last check? Clicks whose answers it lost are answered again."""
        log_of = written.get(part)
        last = log_of.last() if log_of is not None else None
        first = log_of.first() if log_of is not None else None
        if log_of is None or last is None or first is None:
            return
        if time.monotonic() - answers_verified_at.get(part, 0.0) < VERIFY_EVERY_S and not suspect:
            return
        answers_verified_at[part] = time.monotonic()
        marks = answers_verified.setdefault(part, Checkpoints(VERIFY_MARGIN_S))
        settled = marks.settled()
        scan_from = first if settled is None else max(first, settled)
        loop = asyncio.get_running_loop()
        held = await loop.run_in_executor(None, answer_log.read, part, scan_from, last + 1, 30.0)
        diverged = log_of.diverged_range(held, scan_from, last + 1)
        marks.mark(time.monotonic(), last)
        if diverged is None:
            return
        lo, hi = diverged
        lost = log_of.tags(lo, hi)
        log_of.forget(lo, hi)
        answer_again(lost, "answers_lost")

    def answer_again(clicks: list[tuple[int, int]], kind: str) -> None:
        """Schedule the clicks (partition, offset) whose answers the broker lost to be answered again."""
        by_click_partition: dict[int, list[int]] = {}
        for click_part, offset in clicks:
            by_click_partition.setdefault(click_part, []).append(offset)
        for click_part, offsets in by_click_partition.items():
            metrics.discontinuities.labels(topics.recommendations, str(click_part), kind).inc()
            start, end = min(offsets), max(offsets) + 1
            log.warning(
                "streamrec worker: the broker lost %d answers it had acknowledged; answering %s[%d] offsets %d to %d "
                "again",
                len(offsets),
                topics.clicks,
                click_part,
                start,
                end - 1,
            )
            current = repairs.get(click_part)
            repairs[click_part] = (
                Repair(min(start, current.cursor), max(end, current.end)) if current else Repair(start, end)
            )

    async def continue_repair(part: int, highwater: int) -> None:
        """Answer what the broker holds of a repaired range, as far as its log has grown back."""
        repair = repairs.get(part)
        if repair is None:
            return
        upto = min(repair.end, highwater)
        if upto > repair.cursor:
            loop = asyncio.get_running_loop()
            raw = await loop.run_in_executor(None, click_log.read, part, repair.cursor, upto, 30.0)
            if raw:
                await answer_clicks([Message(topics.clicks, part, o, v) for o, v in raw], repair=True)
            repair.cursor = upto
        if repair.done:
            del repairs[part]
            log.warning("streamrec worker: %s[%d] answered again up to offset %d", topics.clicks, part, repair.end - 1)

    return app


def _message_of(event: EventT) -> Message:
    m = event.message
    return Message(m.topic, m.partition, m.offset, event.value, int(m.timestamp * 1000))
