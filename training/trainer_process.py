"""`streamrec trainer`: the online trainer's process around `OnlineTrainer`.

It reads `clicks` in its own consumer group (`<app_id>-trainer`, so the workers' offsets are not
touched) and the whole `catalogue` (no group), keeps the recent window, runs a round when one is
due, and announces every promotion on the `models` topic; workers then swap without a restart.
At start it rebuilds its window from the last `backfill` clicks of each partition, so a restarted
trainer does not begin from an empty window; its committed offsets only show its lag.

`streamrec model list|rollback|import` (below) work on the same model store and topic.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

from streamrec.errors import require_broker
from streamrec.model_bundle import ModelBundle, load_bundle
from streamrec.models.checkpoint import load_checkpoint
from streamrec.ops.metrics import Metrics, create_metrics, serve_metrics
from streamrec.settings import Settings
from streamrec.state.model_store import ModelStore, StoredVersion
from streamrec.stream.schemas import ModelAnnouncement, RecordError, decode_catalogue, decode_click, encode, now_ms
from streamrec.stream.topics import ensure_topics_for
from streamrec.training.online_trainer import OnlineTrainer, OnlineTrainerConfig, RoundResult, import_checkpoint


def announce(settings: Settings, stored: StoredVersion, action: str) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    try:
        record = ModelAnnouncement(stored.version, action, now_ms())
        # Waits for the broker's answer: an announcement that did not arrive must not pass quietly
        # (the workers would keep serving the old version).
        producer.send(settings.topics.models, key=b"model", value=encode(record)).get(timeout=30)
    finally:
        producer.close()


def load_for_training(settings: Settings, stored: StoredVersion) -> ModelBundle:
    return load_bundle(stored.path, settings.data_dir, settings.feature_cache)


def open_store(settings: Settings, poll_s: float = 10.0) -> tuple[ModelStore, StoredVersion]:
    """The store, with a current version: imported from STREAMREC_MODEL on first use; without
    one, wait until an operator imports a version (`streamrec model import PATH`)."""
    store = ModelStore(settings.model_store_dir)
    store.clean()  # leftovers of a trainer that died mid-write
    current = store.current()
    if current is None and settings.model_path:
        current = import_checkpoint(store, Path(settings.model_path))
    while current is None:
        print(f"streamrec trainer: model store {store.root} is empty; waiting for `streamrec model import`", flush=True)
        time.sleep(poll_s)
        current = store.current()
    return store, current


def record_round(metrics: Metrics, result: RoundResult) -> None:
    metrics.gate_decisions.labels(result.decision).inc()
    if result.decision == "skipped":
        return
    metrics.gate_ndcg.labels("serving").set(result.serving_ndcg10)
    metrics.gate_ndcg.labels("candidate").set(result.candidate_ndcg10)
    metrics.trainer_rounds_seconds.observe(result.fine_tune_seconds)
    metrics.trainer_sequences_per_s.set(result.sequences_per_s)


def run_trainer(settings: Settings, backfill: int = 20_000, max_rounds: int = 0) -> None:
    """Blocks until SIGINT/SIGTERM (or `max_rounds` rounds that reached the gate, for tests and
    experiments)."""
    ensure_topics_for(settings)
    registry = CollectorRegistry()
    metrics = create_metrics(registry, "trainer")
    _server, port = serve_metrics(
        registry, settings.trainer_metrics_port, settings.metrics_host, "STREAMREC_TRAINER_METRICS_PORT"
    )
    print(f"streamrec trainer: metrics on http://{settings.metrics_host}:{port}/metrics", flush=True)
    store, current = open_store(settings)
    cfg = OnlineTrainerConfig(
        every_events=settings.trainer_every_events,
        every_minutes=settings.trainer_every_minutes,
        epochs=settings.trainer_epochs,
        tolerance=settings.trainer_tolerance,
    )
    trainer = OnlineTrainer(cfg, store, load_for_training(settings, current))
    print(f"streamrec trainer: serving version {current.version}", flush=True)
    topics = settings.topics
    clicks = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=f"{settings.app_id}-trainer", enable_auto_commit=False
    )
    parts = sorted(clicks.partitions_for_topic(topics.clicks) or [])
    tps = [TopicPartition(topics.clicks, p) for p in parts]
    clicks.assign(tps)
    ends = clicks.end_offsets(tps)
    starts = clicks.beginning_offsets(tps)
    for tp in tps:
        clicks.seek(tp, max(starts[tp], ends[tp] - backfill))
    catalogue = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False)
    cat_parts = sorted(catalogue.partitions_for_topic(topics.catalogue) or [])
    catalogue.assign([TopicPartition(topics.catalogue, p) for p in cat_parts])
    catalogue.seek_to_beginning()
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    rounds = 0
    try:
        while not stopping:
            for _tp, msgs in catalogue.poll(timeout_ms=100, max_records=5000).items():
                metrics.trainer_events.labels(topics.catalogue).inc(len(msgs))
                for m in msgs:
                    try:
                        trainer.observe_catalogue(decode_catalogue(m.value))
                    except RecordError:
                        continue  # the workers dead-letter bad records; the trainer only skips them
            for _tp, msgs in clicks.poll(timeout_ms=500, max_records=5000).items():
                metrics.trainer_events.labels(topics.clicks).inc(len(msgs))
                for m in msgs:
                    try:
                        c = decode_click(m.value)
                    except RecordError:
                        continue
                    trainer.observe_click(c.user_id, c.item_id)
            metrics.trainer_window_users.set(len(trainer.window))
            clicks.commit()
            external = store.current()
            if external is not None and external.version != trainer.current.version:
                # A rollback (or another trainer) changed the current version: continue from it.
                trainer.adopt(external, lambda s: load_for_training(settings, s))
            if trainer.due():
                result = trainer.run_round()
                record_round(metrics, result)
                print("streamrec trainer: " + json.dumps(result.__dict__), flush=True)
                if result.decision == "promoted":
                    announce(settings, store.get(result.candidate_version), "promote")
                if result.decision != "skipped":  # too little data is not a round
                    rounds += 1
                if max_rounds and rounds >= max_rounds:
                    break
    finally:
        clicks.close()
        catalogue.close()


def model_command(settings: Settings, action: str, checkpoint: str = "") -> int:
    """`streamrec model list|rollback|import PATH`."""
    store = ModelStore(settings.model_store_dir)
    if action == "list":
        current = store.current()
        for v in store.versions():
            mark = "*" if current is not None and v.version == current.version else " "
            gate = v.meta.get("gate", {})
            figures = f" gate NDCG@10 {gate['candidate_ndcg10']:.4f} vs {gate['serving_ndcg10']:.4f}" if gate else ""
            stored_at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v.meta.get("stored_at", 0)))
            print(f"{mark} {v.version}  {stored_at}  parent {v.meta.get('parent') or '-'}{figures}")
        return 0
    if action == "import":
        load_checkpoint(Path(checkpoint))  # a file that is not a checkpoint fails before the broker is asked
    require_broker(settings.kafka_bootstrap)
    ensure_topics_for(settings)
    if action == "rollback":
        stored = store.rollback()
        announce(settings, stored, "rollback")
        print(f"rolled back to {stored.version}; workers switch to it on the announcement")
        return 0
    if action == "import":
        stored = import_checkpoint(store, Path(checkpoint))
        announce(settings, stored, "promote")
        print(f"imported and promoted {stored.version}")
        return 0
    raise SystemExit(f"unknown model action {action!r}")
