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
from streamrec.stream.click_agent import PIPELINE_DEPTH, answer_clicks, next_batch, pipeline_of
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


def test_next_batch_answers_a_lone_click_at_once_and_grows_with_the_backlog() -> None:
    async def run() -> None:
        queue: asyncio.Queue[int] = asyncio.Queue()
        queue.put_nowait(1)
        started = asyncio.get_running_loop().time()
        assert await next_batch(queue, most=64) == [1], "a lone click is not held back for others"
        assert asyncio.get_running_loop().time() - started < 0.05, "no fixed wait"
        for k in range(100):
            queue.put_nowait(k)
        assert await next_batch(queue, most=64) == list(range(64)), "a backlog fills the batch to its bound"
        assert await next_batch(queue, most=64) == list(range(64, 100)), "then what is left, at once"
        queue.put_nowait(7)
        asyncio.get_running_loop().call_later(0.02, queue.put_nowait, 8)
        assert await next_batch(queue, most=64, wait_s=0.5) == [7, 8], "an extra wait collects late clicks"
        queue.put_nowait(0)
        assert await next_batch(queue, most=1, wait_s=5.0) == [0], "a full batch does not wait"

    asyncio.run(run())


class Event:
    """What the agent needs of a Faust event: its message and `ack()`."""

    def __init__(self, message: Message, log: list[str]) -> None:
        self.message, self.log = message, log

    def ack(self) -> None:
        self.log.append(f"ack {self.message.offset}")


class SlowBroker(FakeBroker):
    """Acknowledges each send only when the test releases it, logging sends and acknowledgements."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log
        self.pending: list[tuple[asyncio.Future, Meta]] = []

    async def send(self, topic: str, key: bytes, value: bytes) -> asyncio.Future:
        sent = self.sent.setdefault(topic, [])
        sent.append(value)
        self.log.append(f"send {json.loads(value)['event_id']}")
        future = asyncio.get_running_loop().create_future()
        self.pending.append((future, Meta(0, len(sent) - 1)))
        return future

    def release(self) -> None:
        for future, meta in self.pending:
            future.set_result(meta)
        self.pending.clear()


def test_the_pipeline_computes_ahead_but_acknowledges_input_only_after_the_broker_in_order(tmp_path: Path) -> None:
    log: list[str] = []
    broker = SlowBroker(log)
    ctx = context(tmp_path, broker, [])

    async def run() -> None:
        await apply_catalogue_messages(ctx, catalogue_messages(8))
        pipeline = pipeline_of(ctx)
        batches = [
            [Message("t-clicks", 0, 2 * b + k, click(f"e{2 * b + k}", "u1", f"i{k}"), now_ms()) for k in (0, 1)]
            for b in range(3)
        ]
        events = [[Event(m, log) for m in batch] for batch in batches]
        await pipeline.submit(batches[0], events[0])
        await pipeline.submit(batches[1], events[1])
        assert sum(e.startswith("ack") for e in log) == 0, "nothing is acknowledged before the broker"
        assert ctx.journal is not None and ctx.journal.answered("t-clicks", 0) == -1
        third = asyncio.create_task(pipeline.submit(batches[2], events[2]))
        await asyncio.sleep(0.05)
        assert not third.done(), f"at most {PIPELINE_DEPTH} batches wait for the broker"
        broker.release()
        await third
        broker.release()
        await pipeline.drain()

    asyncio.run(run())
    acks = [int(e.split()[1]) for e in log if e.startswith("ack")]
    assert acks == [0, 1, 2, 3, 4, 5], "every input acknowledged once, in order"
    assert log.index("ack 0") > log.index("send e3"), "the second batch was computed while the first waited"
    assert ctx.journal is not None and ctx.journal.answered("t-clicks", 0) == 5
    assert ctx.recommender.sequences.sequence("u1")[-2:] == ["i0", "i1"]
