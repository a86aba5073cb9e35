"""Replays a dataset as live events: the catalogue first, then clicks in time order at a chosen rate.

Each click is stamped with the time it is published (`event_time`, ms) and keeps the dataset's own
timestamp in `source_ts`; freshness is measured against the former. Event ids are the dataset's
deterministic ids, so restarting from an offset (`start`) republishes the same ids and the worker
de-duplicates anything it had already applied.

Every send's result is checked: a message the broker did not acknowledge is counted, and the
publishing functions raise `DeliveryError` after flushing if any was lost, so nothing reports
"published" for messages that never reached the topic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kafka import KafkaProducer
from kafka.errors import KafkaError
from tqdm import tqdm

from streamrec.datasets.schema import Dataset, Event, Item
from streamrec.settings import TopicNames
from streamrec.stream.schemas import CatalogueRecord, ClickRecord, encode, now_ms


def catalogue_record(item: Item, event_time: int) -> CatalogueRecord:
    return CatalogueRecord(
        item_id=item.item_id,
        op="upsert",
        event_time=event_time,
        title=item.title,
        category_path=tuple(item.category_path),
        brand=item.brand,
        price=item.price,
        # Precomputed modality vectors travel with the item, so a worker can place an item it
        # has no training-time vector for (models use them as the `pre_<name>` modalities).
        vectors={name: [float(x) for x in vec] for name, vec in item.vectors.items()},
    )


def click_record(event: Event, event_time: int) -> ClickRecord:
    return ClickRecord(
        event_id=event.event_id,
        user_id=event.user_id,
        item_id=event.item_id,
        event_time=event_time,
        source_ts=event.timestamp,
    )


@dataclass
class ReplayReport:
    items: int
    clicks: int
    first_offset: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.clicks / self.seconds if self.seconds > 0 else 0.0


class DeliveryError(RuntimeError):
    """Some messages were not acknowledged by the broker."""

    def __init__(self, topic: str, failed: int, acknowledged: int, first: BaseException | None) -> None:
        super().__init__(
            f"{failed} of {failed + acknowledged} messages to {topic} were not acknowledged by the broker "
            f"(first error: {type(first).__name__ if first else '?'}: {first}); publishing again is safe, "
            "the worker recognises clicks it has seen by event id"
        )
        self.topic = topic
        self.failed = failed
        self.acknowledged = acknowledged


class Delivery:
    """Counts the broker's answers to sends (kafka-python calls the callbacks from its I/O thread)."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.sent = 0
        self.failed = 0
        self.first_error: BaseException | None = None

    def send(self, producer: KafkaProducer, key: bytes, value: bytes) -> None:
        self.sent += 1
        try:
            producer.send(self.topic, key=key, value=value).add_errback(self._fail)
        except KafkaError as exc:  # e.g. no metadata within max_block_ms while the broker is down
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self.failed += 1
        if self.first_error is None:
            self.first_error = exc

    def check(self, producer: KafkaProducer) -> int:
        """Flush, then the number acknowledged; raises DeliveryError if any send failed."""
        producer.flush()
        if self.failed:
            raise DeliveryError(self.topic, self.failed, self.sent - self.failed, self.first_error)
        return self.sent


def make_producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, acks=1, enable_idempotence=False, batch_size=256 * 1024
    )


class Paced:
    """Sleeps so that the i-th call happens no earlier than start + i / rate (rate <= 0: no pacing)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.count = 0

    def wait(self) -> None:
        if self.rate > 0:
            due = self.start + self.count / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        self.count += 1


def publish_catalogue(producer: KafkaProducer, topics: TopicNames, items: Iterable[Item]) -> int:
    """Publish every item; returns how many the broker acknowledged (DeliveryError if not all)."""
    delivery = Delivery(topics.catalogue)
    stamp = now_ms()
    for item in items:
        delivery.send(producer, item.item_id.encode(), encode(catalogue_record(item, stamp)))
    return delivery.check(producer)


def publish_clicks(
    producer: KafkaProducer,
    topics: TopicNames,
    events: list[Event],
    rate: float,
    progress: bool = True,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Publish clicks at `rate` per second; returns how many the broker acknowledged (DeliveryError
    if not all)."""
    pacer = Paced(rate)
    delivery = Delivery(topics.clicks)
    sent = 0
    bar = tqdm(total=len(events), unit="click", disable=not progress, desc="replay", leave=False)
    for event in events:
        if should_stop():
            break
        pacer.wait()
        delivery.send(producer, event.user_id.encode(), encode(click_record(event, now_ms())))
        sent += 1
        if sent % 500 == 0:
            bar.update(500)
    bar.update(sent % 500)
    bar.close()
    return delivery.check(producer)


def replay(
    dataset: Dataset,
    bootstrap: str,
    topics: TopicNames,
    rate: float = 0.0,
    start: int = 0,
    limit: int = 0,
    catalogue: bool = True,
    progress: bool = True,
    after_catalogue: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Publish the catalogue (unless `catalogue` is False), then clicks[start : start + limit]."""
    assert start >= 0 and limit >= 0, "start and limit must not be negative"
    producer = make_producer(bootstrap)
    try:
        n_items = publish_catalogue(producer, topics, dataset.items) if catalogue else 0
        if after_catalogue is not None:
            after_catalogue(n_items)
        end = len(dataset.events) if limit == 0 else min(len(dataset.events), start + limit)
        began = time.monotonic()
        sent = publish_clicks(producer, topics, dataset.events[start:end], rate, progress)
        return ReplayReport(n_items, sent, start, time.monotonic() - began)
    finally:
        producer.close()
