"""The worker's agent, tasks and log watch are plain functions over a `WorkerContext`: each runs
here on its own, without Faust or a broker, with real stores and a `send` that records what the
broker would receive (and acknowledges it with a partition and offset, as aiokafka does)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from pathlib import Path

from prometheus_client import CollectorRegistry

from streamrec.models.content_baseline import ContentBaseline, ContentBaselineConfig
from streamrec.ops.metrics import create_metrics
from streamrec.serving.recommender import Recommender
from streamrec.serving.serving_model import BaselineServingModel
from streamrec.settings import Settings, TopicNames
from streamrec.state.batch_journal import BatchJournal
from streamrec.state.catalogue_store import CatalogueStore
from streamrec.state.item_index import FaissItemIndex
from streamrec.state.sequence_store import RocksSequenceStore
from streamrec.stream.catalogue_task import apply_catalogue_messages
from streamrec.stream.click_agent import answer_clicks
from streamrec.stream.handling import Message
from streamrec.stream.schemas import CatalogueRecord, decode_recommendation, encode, now_ms
from streamrec.stream.worker_context import WorkerContext, WorkerHooks

CFG = ContentBaselineConfig(dim=16, buckets=1024)


@dataclass
class Meta:
    partition: int
    offset: int


class FakeBroker:
    """Records sends per topic and acknowledges each with the next offset of partition 0."""

    def __init__(self) -> None:
        self.sent: dict[str, list[bytes]] = {}

    async def send(self, topic: str, key: bytes, value: bytes) -> asyncio.Future:
        log = self.sent.setdefault(topic, [])
        log.append(value)
        done = asyncio.get_running_loop().create_future()
        done.set_result(Meta(0, len(log) - 1))
        return done


def context(tmp_path: Path, broker: FakeBroker, emitted: list) -> WorkerContext:
    settings = replace(Settings(), topics=TopicNames("t-"), state_dir=tmp_path, kafka_bootstrap="127.0.0.1:9")
    rec = Recommender(
        RocksSequenceStore(tmp_path / "seq", max_len=50),
        CatalogueStore(tmp_path / "cat", CFG.dim),
        FaissItemIndex(CFG.dim),
        BaselineServingModel(ContentBaseline(CFG)),
        top_k=3,
    )
    metrics = create_metrics(CollectorRegistry())
    journal = BatchJournal(tmp_path / "journal.json")
    return WorkerContext(settings, rec, metrics, broker.send, journal, WorkerHooks(on_recommendations=emitted.extend))


def catalogue_messages(n: int) -> list[Message]:
    records = [CatalogueRecord(f"i{k}", "upsert", now_ms(), f"item number {k}", ("A",)) for k in range(n)]
    return [Message("t-catalogue", 0, k, encode(r)) for k, r in enumerate(records)]


def click(event: str, user: str, item: str) -> bytes:
    return json.dumps({"event_id": event, "user_id": user, "item_id": item, "event_time": now_ms()}).encode()


def test_catalogue_task_and_click_agent_without_a_broker(tmp_path: Path) -> None:
    broker, emitted = FakeBroker(), []
    ctx = context(tmp_path, broker, emitted)

    async def run() -> None:
        await apply_catalogue_messages(ctx, catalogue_messages(8))
        clicks = [click("e1", "u1", "i1"), b"\xff not json", click("e2", "u1", "i2"), click("e3", "u2", "i5")]
        # From offset 0: a partition whose state is behind its first offset would be caught up first.
        await answer_clicks(ctx, [Message("t-clicks", 1, k, v, now_ms()) for k, v in enumerate(clicks)])

    asyncio.run(run())
    assert len(ctx.recommender.index) == 8
    answers = [decode_recommendation(v) for v in broker.sent["t-recommendations"]]
    assert [a.event_id for a in answers] == ["e1", "e2", "e3"]
    assert not {"i1", "i2"} & {i.item_id for a in answers if a.user_id == "u1" for i in a.items}
    (dead,) = [json.loads(v) for v in broker.sent["t-dead-letters"]]
    assert dead["reason"] == "undecodable" and dead["offset"] == 1
    assert [r.event_id for r in emitted] == ["e1", "e2", "e3"], "the hook sees what was sent"
    assert ctx.journal is not None and ctx.journal.answered("t-clicks", 1) == 3
    assert ctx.watch is not None and ctx.watch.written[0].last() == 2, "the watch noted the acknowledged answers"


def test_the_watch_notices_rewinds_and_rewritten_offsets(tmp_path: Path) -> None:
    ctx = context(tmp_path, FakeBroker(), [])
    watch = ctx.watch
    assert watch is not None
    first = [Message("t-clicks", 0, k, b"a%d" % k) for k in range(5)]
    watch.note_rewinds(first)
    watch.note_handled(first, repair=False)
    assert watch.suspect == {}
    again = [Message("t-clicks", 0, 2, b"other")]
    watch.note_rewinds(again)
    watch.note_handled(again, repair=False)
    assert watch.suspect == {0: ("rewind", 2)}
    kinds = {
        s.labels["kind"]: s.value
        for fam in ctx.metrics.discontinuities.collect()
        for s in fam.samples
        if s.name.endswith("_total")
    }
    assert kinds == {"rewind": 1.0, "rewritten": 1.0}
