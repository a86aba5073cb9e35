"""The worker's Faust app: registers the agent, tasks and timer on it, and supervises them.

The work itself is in module-level functions over a `WorkerContext` (stream/worker_context.py):
the click agent (stream/click_agent.py), the catalogue and model tasks (stream/catalogue_task.py,
stream/model_task.py) and the log watch (stream/log_watch.py), each testable without Faust. What
happens to each message is decided in `stream/handling.py`, which never raises: bad input goes to
the dead-letter topic with its reason.

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
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from faust.tables import TableManager

from streamrec.ops.metrics import Metrics
from streamrec.serving.recommender import Recommender
from streamrec.settings import Settings
from streamrec.state.batch_journal import BatchJournal
from streamrec.stream.catalogue_task import read_catalogue
from streamrec.stream.click_agent import answer_clicks, answer_stream
from streamrec.stream.empty_fetch import wait_after_empty_fetches
from streamrec.stream.loop_lag import probe_loop_lag
from streamrec.stream.model_task import watch_models
from streamrec.stream.worker_context import WorkerContext, WorkerHooks

log = logging.getLogger(__name__)

# Exit status of a worker whose agent or task died (EX_SOFTWARE): restart me.
EXIT_AGENT_DIED = 70


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
            leave_like_a_dynamic_member(self.consumer)
        await super().on_stop()


def leave_like_a_dynamic_member(consumer: Any) -> None:
    """The one write into private attributes of the pinned clients (aiokafka 0.14 under
    faust-streaming 0.15), isolated here: aiokafka sends LeaveGroup on close only when no group
    instance id is set, so the id is cleared just before Faust closes the consumer. Faust keeps its
    aiokafka consumer at `consumer._thread._consumer`. Covered by tests/test_scale_out.py (a stopped
    worker's partitions move to the other worker at once)."""
    inner = getattr(getattr(consumer, "_thread", None), "_consumer", None)
    if inner is not None:
        inner._coordinator._group_instance_id = None


def build_app(
    settings: Settings,
    recommender: Recommender,
    metrics: Metrics,
    journal: BatchJournal | None = None,
    hooks: WorkerHooks | None = None,
) -> faust.App:
    """The worker's Faust app over one `WorkerContext`; `journal` records batches in flight and
    answered offsets (poison detection, no double answers); `hooks` are the process's callbacks."""
    wait_after_empty_fetches(settings.empty_fetch_wait_ms)  # this process's consumers (stream/empty_fetch.py)
    app = StreamrecApp(settings.app_id, **faust_settings(settings))
    app.leave_group_on_stop = settings.leave_group_on_stop

    async def send(topic: str, key: bytes, value: bytes) -> Any:
        # The producer directly, with bytes already encoded: Faust's topic.send adds per-message
        # codec and callback work that measured as the largest cost per recommendation.
        return await app.producer.send(topic, key, value, None, None, None)

    ctx = WorkerContext(settings, recommender, metrics, send, journal, hooks or WorkerHooks())
    on_fatal = ctx.hooks.on_fatal
    clicks_topic = app.topic(settings.topics.clicks, value_type=bytes, key_type=bytes)

    @app.agent(clicks_topic, name=f"{settings.app_id}-clicks")
    async def clicks(stream: faust.StreamT) -> None:
        await supervised("clicks", metrics, lambda: answer_stream(ctx, stream), on_fatal)

    @app.task
    async def catalogue() -> None:
        await supervised("catalogue", metrics, lambda: read_catalogue(ctx), on_fatal)

    @app.task
    async def models() -> None:
        if ctx.hooks.load_version is not None:
            await supervised("models", metrics, lambda: watch_models(ctx), on_fatal)

    @app.task
    async def loop_lag() -> None:
        await supervised("loop_lag", metrics, lambda: probe_loop_lag(metrics), on_fatal)

    @app.timer(interval=1.0)
    async def check_log() -> None:
        assert ctx.watch is not None, "the context builds its log watch"
        await ctx.watch.tick(
            app.consumer, lambda messages: answer_clicks(ctx, messages, repair=True), ctx.hooks.on_assignment
        )

    return app
