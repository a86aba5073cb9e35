"""The Faust app: thin agents over the `Recommender` core.

Each agent takes a micro-batch of events (bounded by size and wait), decodes them, makes one call
into plain code, sends what comes back, waits for the broker to acknowledge those sends, and
records metrics. Only then does Faust acknowledge the input events, so a crash replays at most the
unacknowledged batch; the sequence store recognises those clicks by event id (at-least-once
delivery, idempotent effect). Bad input never raises out of an agent: it goes to the dead-letter
topic with its reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import EventT

from streamrec.ops.metrics import Metrics
from streamrec.settings import Settings
from streamrec.stream.click_log import ClickLogReader
from streamrec.stream.recommender import Recommender
from streamrec.stream.schemas import (
    DeadLetterRecord,
    RecommendationRecord,
    RecordError,
    decode_catalogue,
    decode_click,
    decode_model_announcement,
    encode,
    now_ms,
)
from streamrec.stream.serving_model import ServingModel


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
        # The worker's own web server is not used; metrics have their own exporter.
        "web_enabled": False,
        "web_host": "127.0.0.1",
    }


def dead_letter_of(topic: str, partition: int, offset: int, value: object, error: RecordError) -> DeadLetterRecord:
    """The dead letter of one input message, with its payload (truncated) for replaying it."""
    raw = value if isinstance(value, bytes) else bytes(str(value or ""), "utf-8")
    return DeadLetterRecord(
        source_topic=topic,
        partition=partition,
        offset=offset,
        reason=error.reason,
        detail=error.detail,
        payload=raw[:10_000].decode("utf-8", errors="replace"),
        at=now_ms(),
    )


def dead_letter(event: EventT, error: RecordError) -> DeadLetterRecord:
    m = event.message
    return dead_letter_of(m.topic, m.partition, m.offset, event.value, error)


def decode_events(
    events: list[EventT], decode: Callable[[bytes], Any]
) -> tuple[list[Any], list[EventT], list[DeadLetterRecord]]:
    """Decoded records with their events, and dead letters for those that failed."""
    records, kept, dead = [], [], []
    for event in events:
        try:
            raw = event.value
            if not isinstance(raw, bytes):
                raise RecordError("undecodable", f"value of type {type(raw).__name__}")
            records.append(decode(raw))
            kept.append(event)
        except RecordError as err:
            dead.append(dead_letter(event, err))
    return records, kept, dead


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
) -> faust.App:
    """The worker's Faust app; `on_recommendations` sees every emitted batch (the dashboard page);
    `load_version` loads a model-store version named on the models topic (hot swap)."""
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

    async def send_raw(topic: str, key: bytes, value: bytes) -> Any:
        # The producer directly, with bytes already encoded: Faust's topic.send adds per-message
        # codec and callback work that measured as the largest cost per recommendation.
        return await app.producer.send(topic, key, value, None, None, None)

    async def send_dead(dead: list[DeadLetterRecord]) -> list[Any]:
        futures = []
        for d in dead:
            metrics.dead_letters.labels(d.reason).inc()
            futures.append(await send_raw(topics.dead_letters, d.source_topic.encode(), encode(d)))
        return futures

    # Set once the catalogue reader has caught up with the catalogue as it stood at start: clicks
    # wait for it, so a fresh worker does not reject clicks on items it has not read yet.
    catalogue_ready = asyncio.Event()

    @app.task
    async def read_catalogue() -> None:
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
                batches = await consumer.getmany(timeout_ms=int(1000 * batch_wait), max_records=batch_size)
                for tp, messages in batches.items():
                    metrics.events_in.labels(topics.catalogue).inc(len(messages))
                    await apply_catalogue_messages(tp, messages)
                if not batches:
                    # Nothing new: stop fetching for a moment. A broker that answers empty fetches
                    # at once (noida-db) would otherwise keep this loop, which the click agent
                    # shares, busy; it bounds the added catalogue latency by catalogue_idle_ms.
                    consumer.pause(*tps)
                    await asyncio.sleep(idle_s)
                    consumer.resume(*tps)
        finally:
            await consumer.stop()

    async def apply_catalogue_messages(tp: TopicPartition, messages: list[Any]) -> None:
        records, dead = [], []
        for msg in messages:
            try:
                records.append(decode_catalogue(msg.value))
            except RecordError as err:
                dead.append(dead_letter_of(tp.topic, tp.partition, msg.offset, msg.value, err))
        if records:
            recommender.apply_catalogue(records)
            searchable = now_ms()
            for rec in records:
                metrics.catalogue_latency.observe(max(0, searchable - rec.event_time) / 1000.0)
            metrics.index_updated.set(time.time())
        futures = await send_dead(dead)
        if futures:
            await asyncio.gather(*futures)
        recommender.catalogue.record_offsets({tp.partition: messages[-1].offset})
        metrics.index_size.set(len(recommender.index))

    @app.task
    async def watch_models() -> None:
        """Switch models without a restart when the trainer (or `streamrec model rollback`)
        announces a version: load it and encode the catalogue into a second index in a thread
        while batches keep being answered, then switch between two batches."""
        if load_version is None:
            return
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
                messages = [m for msgs in batches.values() for m in msgs]
                last = messages[-1]
                try:
                    announcement = decode_model_announcement(last.value)  # the latest wins
                except RecordError as err:
                    dead = dead_letter_of(topics.models, last.partition, last.offset, last.value, err)
                    await asyncio.gather(*await send_dead([dead]))
                    continue
                if announcement.version == recommender.model_version:
                    continue
                started = time.perf_counter()
                old = recommender.model_version
                model = await loop.run_in_executor(None, load_version, announcement.version)
                prepared = await loop.run_in_executor(None, recommender.prepare_model, model)
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

    async def catch_up_partitions(events: list[EventT]) -> dict[int, int]:
        """Apply clicks of this batch's partitions that another worker answered since this
        worker's state last saw them; returns {partition: last offset} of the batch."""
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for e in events:
            part, offset = e.message.partition, e.message.offset
            first[part] = min(first.get(part, offset), offset)
            last[part] = max(last.get(part, offset), offset)
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
        return last

    @app.agent(clicks_topic, name=f"{settings.app_id}-clicks")
    async def on_clicks(stream: faust.StreamT) -> None:
        await catalogue_ready.wait()
        async for events in stream.take_events(batch_size, within=batch_wait):
            started = time.monotonic()
            events = list(events)
            metrics.events_in.labels(topics.clicks).inc(len(events))
            metrics.batch_size.observe(len(events))
            oldest = min(e.message.timestamp for e in events)
            metrics.batch_wait.observe(max(0.0, time.time() - oldest))
            positions = await catch_up_partitions(events)
            t_decode = time.perf_counter()
            records, kept, dead = decode_events(events, decode_click)
            metrics.stage_latency.labels("decode").observe(time.perf_counter() - t_decode)
            result = recommender.handle_clicks(records, positions)
            for stage, seconds in result.stage_seconds.items():
                metrics.stage_latency.labels(stage).observe(seconds)
            t_send = time.perf_counter()
            dead += [dead_letter(kept[pos], err) for pos, err in result.rejected]
            metrics.duplicates.inc(result.duplicates)
            futures = await send_dead(dead)
            for rec in result.recommendations:
                futures.append(await send_raw(topics.recommendations, rec.user_id.encode(), encode(rec)))
            if futures:
                await asyncio.gather(*futures)
            metrics.stage_latency.labels("send").observe(time.perf_counter() - t_send)
            if on_recommendations is not None:
                on_recommendations(result.recommendations)
            for rec in result.recommendations:
                metrics.freshness.observe(max(0, rec.emitted_at - rec.event_time) / 1000.0)
            metrics.recommendations.inc(len(result.recommendations))
            metrics.users.set(recommender.sequences.n_users())
            metrics.processing_latency.observe(time.monotonic() - started)

    @app.timer(interval=5.0)
    async def report_lag() -> None:
        consumer = app.consumer
        for tp in consumer.assignment():
            position = await consumer.position(tp)
            highwater = consumer.highwater(tp)
            if position is not None and highwater is not None:
                metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, highwater - position))

    return app
