"""What a worker's agents, tasks and timers share: settings, the recommender, metrics, the batch
journal, the hooks the process wires in, and the one way they write to Kafka.

Everything that touches the recommender runs in the context's one compute thread (`run_compute`).
The click agent (stream/click_agent.py), tasks (stream/catalogue_task.py, stream/model_task.py) and the
log check (stream/log_watch.py) are module-level functions over this context; stream/app.py only
registers them on a Faust app. A test builds a context with a fake `send` and real stores, and
calls any of them without a broker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from streamrec.ops.metrics import Metrics
from streamrec.serving.recommender import Recommender
from streamrec.serving.serving_model import ServingModel
from streamrec.settings import Settings
from streamrec.state.batch_journal import BatchJournal
from streamrec.stream.click_log import ClickLogReader
from streamrec.stream.handling import encode_dead
from streamrec.stream.log_watch import LogWatch
from streamrec.stream.schemas import DeadLetterRecord, RecommendationRecord

if TYPE_CHECKING:
    from streamrec.stream.click_agent import ClickPipeline

R = TypeVar("R")

# send(topic, key, value) -> an awaitable that completes when the broker acknowledged the record,
# with its RecordMetadata (partition, offset).
Send = Callable[[str, bytes, bytes], Awaitable[Awaitable[Any]]]


@dataclass
class WorkerHooks:
    """What the process running the worker wires in (all optional).

    - on_recommendations: sees every emitted batch (the live page, the lookup endpoint);
    - load_version / has_version: load a model-store version named on the models topic (hot swap),
      and say whether the store has one;
    - on_fatal: records why an agent died, before the worker exits;
    - on_assignment: hears the clicks partitions this worker holds, once a second."""

    on_recommendations: Callable[[list[RecommendationRecord]], None] | None = None
    load_version: Callable[[str], ServingModel] | None = None
    has_version: Callable[[str], bool] = lambda version: True
    on_fatal: Callable[[str], None] | None = None
    on_assignment: Callable[[set[int]], None] | None = None


@dataclass
class WorkerContext:
    settings: Settings
    recommender: Recommender
    metrics: Metrics
    send: Send
    journal: BatchJournal | None = None
    hooks: WorkerHooks = field(default_factory=WorkerHooks)
    # Set once the catalogue reader has caught up with the catalogue as it stood at start: clicks
    # wait for it, so a fresh worker does not reject clicks on items it has not read yet.
    catalogue_ready: asyncio.Event = field(default_factory=asyncio.Event)
    # The click agent and the log check both answer clicks; one batch at a time keeps the batch
    # journal's record of what is in flight exact.
    answering: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The watch over the clicks and recommendations logs (built from the settings when not given).
    watch: LogWatch | None = None
    # The one thread that runs everything that reads or changes the recommender's state (click
    # batches, catalogue changes, model swaps), in submission order: the event loop stays free to
    # fetch and send meanwhile, and those calls never run concurrently with each other.
    compute: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamrec-compute")
    )
    # The click agent's pipeline (stream/click_agent.py `pipeline_of`), shared with the log watch.
    pipeline: ClickPipeline | None = None

    def __post_init__(self) -> None:
        if self.watch is None:
            bootstrap, topics = self.settings.kafka_bootstrap, self.settings.topics
            readers = ClickLogReader(bootstrap, topics.clicks), ClickLogReader(bootstrap, topics.recommendations)
            self.watch = LogWatch(topics, self.metrics, *readers, journal=self.journal)
        m, rec = self.metrics, self.recommender
        m.model_info.labels(rec.model_version).set(1)
        m.model_loaded.set(time.time())
        m.index_size.set(len(rec.index))
        m.users.set(rec.sequences.n_users())

    async def run_compute(self, fn: Callable[..., R], *args: Any) -> R:
        """`fn(*args)` in the compute thread."""
        return await asyncio.get_running_loop().run_in_executor(self.compute, fn, *args)

    @property
    def batch_wait_s(self) -> float:
        return self.settings.batch_wait_ms / 1000.0

    @property
    def idle_s(self) -> float:
        return self.settings.catalogue_idle_ms / 1000.0

    async def send_dead(self, dead: list[DeadLetterRecord]) -> list[Awaitable[Any]]:
        """Send dead letters, counted by reason; returns their acknowledgements to await."""
        futures = []
        for d in dead:
            self.metrics.dead_letters.labels(d.reason).inc()
            key, value = encode_dead(d)
            futures.append(await self.send(self.settings.topics.dead_letters, key, value))
        return futures
