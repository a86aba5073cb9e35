"""Runs one streamrec worker: opens state, builds the model and the Faust app, serves metrics.

State lives under `<state_dir>/worker/<app_id>/`: the RocksDB sequence store and catalogue store.
A restart with the same state directory resumes exactly: sequences are in RocksDB, Kafka holds the
committed offsets, and redelivered clicks are recognised by event id.
"""

from __future__ import annotations

import faulthandler
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from faust.worker import Worker
from prometheus_client import CollectorRegistry

from streamrec.errors import UserError
from streamrec.models.content_baseline import ContentBaseline, ContentBaselineConfig
from streamrec.ops.dashboard_page import DashboardServer, RecentRecommendations
from streamrec.ops.log_limit import limit_handlers
from streamrec.ops.lookup import LatestRecommendations
from streamrec.ops.metrics import create_metrics, serve_metrics
from streamrec.serving.model_process import ModelProcessError
from streamrec.serving.new_items import ExploreConfig, FadeConfig
from streamrec.serving.recommender import Recommender
from streamrec.serving.serving_model import BaselineServingModel, ServingModel
from streamrec.settings import Settings
from streamrec.state.batch_journal import BatchJournal

if TYPE_CHECKING:
    from streamrec.serving.research_model import ResearchServingConfig
from streamrec.state.catalogue_store import CatalogueStore
from streamrec.state.item_index import FaissItemIndex
from streamrec.state.model_store import ModelStore
from streamrec.state.sequence_store import RocksSequenceStore
from streamrec.stream.app import build_app, exit_for_restart
from streamrec.stream.schemas import RecommendationRecord, encode_recommendation
from streamrec.stream.topics import ensure_topics_for
from streamrec.stream.worker_context import WorkerHooks

log = logging.getLogger(__name__)


def worker_state_dir(settings: Settings) -> Path:
    return settings.worker_dir / settings.app_id


def model_process_died(journal: BatchJournal | None) -> Callable[[str], None]:
    """What a worker does when its model process dies: what an agent's death does (one line, the
    journal's fatal record so the batch in flight becomes a suspect, exit for a restart)."""
    return lambda why: exit_for_restart(
        "model process", ModelProcessError(why), journal.note_fatal if journal else None
    )


def open_model(settings: Settings, on_death: Callable[[str], None] | None = None) -> ServingModel:
    """The model store's current version; else the checkpoint named by STREAMREC_MODEL; else the
    content baseline."""
    current = ModelStore(settings.model_store_dir).current() if settings.model_store_dir.is_dir() else None
    if current is not None:
        return load_serving_version(settings, current.path, on_death)
    if not settings.model_path:
        return BaselineServingModel(ContentBaseline(ContentBaselineConfig()))
    path = Path(settings.model_path)
    if not path.is_file():
        raise UserError(f"STREAMREC_MODEL={settings.model_path}: no such checkpoint", "make one with `streamrec train`")
    return load_serving_version(settings, path, on_death)


def research_serving_config(settings: Settings) -> ResearchServingConfig:
    """How a research checkpoint is served, from the runtime settings (the worker and the benches)."""
    from streamrec.serving.research_model import ResearchServingConfig

    return ResearchServingConfig(
        state_memory_mb=settings.state_memory_mb,
        state_dtype=settings.state_dtype,
        state_budget_bytes=settings.state_budget_kb * 1024,
        one_call_padding=settings.one_call_padding,
    )


def load_serving_version(settings: Settings, path: Path, on_death: Callable[[str], None] | None = None) -> ServingModel:
    """A research checkpoint served from its own process (serving/model_process.py), or in this one
    with STREAMREC_MODEL_PROCESS=0. `on_death`: what to do if that process dies (default: leave
    with the agents' restart status, as when an agent dies)."""
    # Imported here: the research models' code (checkpoints, encoders, text features) adds to the
    # start-up of every worker, and a worker serving the content baseline never needs it.
    from streamrec.serving.model_process import ModelProcessSpec, ProcessServingModel
    from streamrec.serving.research_model import load_research_model

    cfg = research_serving_config(settings)
    if settings.model_process:
        spec = ModelProcessSpec(path, settings.data_dir, settings.feature_cache, cfg, settings.torch_threads)
        return ProcessServingModel(spec, on_death or model_process_died(None))
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    return load_research_model(path, settings.data_dir, settings.feature_cache, cfg)


def open_recommender(settings: Settings, on_death: Callable[[str], None] | None = None) -> Recommender:
    model = open_model(settings, on_death)
    root = worker_state_dir(settings)
    sequences = RocksSequenceStore(
        root / "sequences", max_len=settings.max_seq_len, cache_users=settings.sequence_cache_users
    )
    catalogue = CatalogueStore(root / "catalogue", dim=model.dim)
    index = FaissItemIndex(model.dim, settings.ann_threshold, settings.ann_nprobe, threads=settings.index_threads)
    explore = ExploreConfig(settings.explore_slots, settings.explore_max_age_s)
    return Recommender(
        sequences,
        catalogue,
        index,
        model,
        top_k=settings.top_k,
        explain=settings.explain,
        explore=explore,
        fade=FadeConfig(settings.new_item_fade, settings.new_item_impressions),
    )


class RateLimitedWorker(Worker):
    """Faust's worker with repeated log lines rate-limited (ops/log_limit.py)."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        limit_handlers(logger)


def run_worker(settings: Settings, loglevel: str = "warning", topics_ready: Callable[[], object] | None = None) -> None:
    """Blocks until the worker is stopped (SIGINT/SIGTERM). `topics_ready` waits for topics being
    ensured elsewhere (the CLI does it while this module loads); without it, they are ensured here."""
    if topics_ready is None:
        ensure_topics_for(settings)
    else:
        topics_ready()
    registry = CollectorRegistry()
    metrics = create_metrics(registry)
    _server, port = serve_metrics(registry, settings.metrics_port, settings.metrics_host)
    print(f"streamrec worker: metrics on http://{settings.metrics_host}:{port}/metrics", flush=True)
    journal = BatchJournal(worker_state_dir(settings) / "journal.json")
    if journal.crashed_at_start:
        log.warning(
            "streamrec worker: the previous run crashed with %d messages in flight (%s); they are handled "
            "one by one now, and one that crashes the worker again is dead-lettered as poison",
            journal.crashed_at_start,
            journal.previous_fatal.strip().splitlines()[0][:200],
        )
    # A hard crash (SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL) writes its traceback into the
    # journal's fatal record, which tells the next start that the batch in flight crashed it.
    faulthandler.enable(file=journal.open_fatal_record(), all_threads=True)
    on_death = model_process_died(journal)
    recommender = open_recommender(settings, on_death)
    recent = RecentRecommendations(recommender.title_of)
    latest = LatestRecommendations(encode_recommendation, settings.lookup_users, settings.partitions)
    page: DashboardServer | None = None
    if settings.dashboard_port:
        page = DashboardServer(
            registry, recent, settings.dashboard_port, settings.metrics_host, lookup=latest.answer
        ).start()
        print(f"streamrec worker: live page on {page.url}, lookups at {page.url}users/ID/recommendations", flush=True)

    def emitted(recs: list[RecommendationRecord]) -> None:
        recent.add(recs)
        latest.add(recs)

    store = ModelStore(settings.model_store_dir)
    hooks = WorkerHooks(
        on_recommendations=emitted,
        load_version=lambda version: load_serving_version(settings, store.get(version).path, on_death),
        has_version=store.has,
        on_fatal=journal.note_fatal,
        on_assignment=latest.hold,
    )
    app = build_app(settings, recommender, metrics, journal, hooks)
    worker = RateLimitedWorker(app, loglevel=loglevel, quiet=True)
    try:
        worker.execute_from_commandline()
    finally:
        if page is not None:
            page.stop()
        recommender.close()
