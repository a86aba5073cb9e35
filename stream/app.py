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
from streamrec.stream.recommender import Recommender
from streamrec.stream.schemas import DeadLetterRecord, RecommendationRecord, RecordError, decode_click, now_ms
from streamrec.stream.serving_model import ServingModel

log = logging.getLogger(__name__)

# Exit status of a worker whose agent or task died (EX_SOFTWARE): restart me.
EXIT_AGENT_DIED = 70
# After a partition's log went backwards, how far before its end the worker reads it again: a
# multiple of what the broker lost of the input, since it lost the answers written in about the
# same window, plus a margin. Re-reading is safe: applied clicks are recognised by event id; the
# clicks re-read are answered again (duplicates rather than lost answers).
REWIND_FACTOR = 4
REWIND_MESSAGES = 1_000


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


def rewind_target(next_offset: int, highwater: int, low: int = 0) -> int | None:
    """Where to read a partition again when the worker is past its end (`next_offset` >
    `highwater`: the broker lost messages and will reuse their offsets), else None."""
    if next_offset <= highwater:
        return None
    return max(low, highwater - REWIND_FACTOR * (next_offset - highwater) - REWIND_MESSAGES)


def unanswer_window(expected: int, now_at: int) -> int:
    """After the consumer was moved back from `expected` to `now_at`, the first offset whose answer
    may have been lost with the broker's data: a window below where the worker was, bounded, since
    a reset to the log's start must not answer the whole partition again."""
    gap = max(0, expected - now_at)
    return max(0, expected - REWIND_MESSAGES - REWIND_FACTOR * min(gap, REWIND_MESSAGES))


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
) -> faust.App:
    """The worker's Faust app; `on_recommendations` sees every emitted batch (the dashboard page);
    `load_version` loads a model-store version named on the models topic (hot swap) and
    `has_version` says whether the store has one; `journal`
    records batches in flight and answered offsets (poison detection, no double answers);
    `on_fatal` records why an agent died before the worker exits."""
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
        """Offsets going backwards inside one process: the consumer was reset (e.g. the broker
        answered that its position was out of range)."""
        for m in messages:
            expected = next_offset.get(m.partition)
            if expected is not None and m.offset < expected - 1:
                metrics.discontinuities.labels(m.topic, str(m.partition), "rewind").inc()
                again = unanswer_window(expected, m.offset)
                if journal is not None:
                    journal.unanswer_from(m.topic, m.partition, again)
                log.warning(
                    "streamrec worker: %s[%d] went back from offset %d to %d; re-reading, and answering "
                    "again from offset %d (applied clicks are recognised by event id)",
                    m.topic,
                    m.partition,
                    expected,
                    m.offset,
                    again,
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

    async def answer_clicks(messages: list[Message]) -> None:
        started = time.monotonic()
        metrics.events_in.labels(topics.clicks).inc(len(messages))
        metrics.batch_size.observe(len(messages))
        oldest = min(m.timestamp_ms for m in messages)
        metrics.batch_wait.observe(max(0.0, time.time() - oldest / 1000.0))
        note_rewinds(messages)
        await catch_up_partitions(messages)
        outcome = handle_click_messages(recommender, messages, journal)
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
        for key, value in outcome.encoded:
            futures.append(await send_raw(topics.recommendations, key, value))
        if futures:
            await asyncio.gather(*futures)
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
        for tp in consumer.assignment():
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
            target = rewind_target(processed, highwater)
            if target is None:
                continue
            metrics.discontinuities.labels(tp.topic, str(tp.partition), "beyond_end").inc()
            log.warning(
                "streamrec worker: processed %s[%d] up to offset %d but the log ends at %d: the broker lost "
                "messages; answering again from offset %d (docs/operations.md, 'The log went backwards')",
                tp.topic,
                tp.partition,
                processed - 1,
                highwater,
                target,
            )
            next_offset[tp.partition] = target
            if journal is not None:
                journal.unanswer_from(tp.topic, tp.partition, target)
            await consumer.seek(tp, target)

    return app


def _message_of(event: EventT) -> Message:
    m = event.message
    return Message(m.topic, m.partition, m.offset, event.value, int(m.timestamp * 1000))
