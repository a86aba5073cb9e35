"""`streamrec bench online`: the online trainer end to end, on a real broker with real processes.

One worker and one `streamrec trainer` share a fresh local broker and model store (the checkpoint
given is imported as the first version). Clicks are replayed at a fixed rate; after `--every`
clicks the trainer fine-tunes, gates and announces, and the worker swaps. Reported:

  * fine-tune throughput (training sequences per second, epochs counted) and duration;
  * event to served model: from the publication of the round's last click (click number
    `--every`: the trainer starts its round once it has read that many) to the worker serving the
    version that learned from it (the worker's model-loaded timestamp);
  * swap duration on the worker (announcement to switch: load, encode the catalogue into the
    second index, switch), and whether every click was answered.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from streamrec.datasets import load_dataset
from streamrec.datasets.registry import canonical_name
from streamrec.local.broker import LocalBroker, free_port, free_ports
from streamrec.local.processes import WorkerProcess, start_trainer, start_worker
from streamrec.settings import Settings, TopicNames
from streamrec.state.model_store import ModelStore
from streamrec.stream.rec_consumer import RecommendationReader
from streamrec.stream.replay import make_producer, publish_catalogue, publish_clicks
from streamrec.stream.topics import ensure_topics_for
from streamrec.training.online_trainer import import_checkpoint


def worker_and_trainer_settings(settings: Settings, workdir: Path, prefix: str, every: int) -> Settings:
    """A worker and an online trainer on their own model store, state and topics under `workdir`,
    the trainer fine-tuning every `every` clicks (never by the clock)."""
    metrics_port, trainer_port = free_ports(2)
    return replace(
        settings,
        model_store=workdir / "store",
        model_path="",
        state_dir=workdir / "state",
        topics=TopicNames(prefix),
        metrics_port=metrics_port,
        dashboard_port=0,
        trainer_metrics_port=trainer_port,
        trainer_every_events=every,
        trainer_every_minutes=1e6,
    )


def online_round_trip(
    settings: Settings,
    checkpoint: Path,
    dataset: str,
    every: int,
    rate: float,
    clicks: int,
    workdir: Path,
    timeout_s: float = 1800.0,
    after_clicks: int = 200,
    while_running: Callable[[WorkerProcess, WorkerProcess], None] | None = None,
) -> dict:
    """Runs worker + trainer over `clicks` clicks at `rate`/s; returns the measured figures.
    `while_running(worker, trainer)` is called once both are up (tests read their metrics there)."""
    settings = worker_and_trainer_settings(settings, workdir, "online-", every)
    store = ModelStore(settings.model_store_dir)
    first = import_checkpoint(store, checkpoint)
    ds = load_dataset(dataset, settings.data_dir)
    events = ds.events[:clicks]
    ensure_topics_for(settings)
    worker = start_worker(settings, workdir / "worker.log")
    trainer = start_trainer(settings, workdir / "trainer.log", ("--max-rounds", "1"))
    try:
        producer = make_producer(settings.kafka_bootstrap)
        n_items = publish_catalogue(producer, settings.topics, ds.items)
        worker.wait_until("streamrec_index_size_items", lambda v: v >= n_items, timeout_s=180)
        if while_running is not None:
            while_running(worker, trainer)
        reader = RecommendationReader(settings.kafka_bootstrap, settings.topics.recommendations)
        started = time.time()
        feeder = threading.Thread(target=publish_clicks, args=(producer, settings.topics, events, rate, False))
        feeder.start()
        last_included = started + every / rate if rate else None
        deadline = time.monotonic() + timeout_s
        while worker.metric(f'streamrec_model_version_info{{version="{first.version}"}}', 1.0) != 0:
            # The worker stops serving the first version once the trainer's promotion reaches it.
            if trainer.proc.poll() is not None and store.current().version == first.version:
                raise RuntimeError(f"the trainer ended without promoting; log {workdir / 'trainer.log'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no promoted version served in {timeout_s} s; logs in {workdir}")
            time.sleep(0.2)
        served_at = worker.metric("streamrec_model_loaded_timestamp_seconds")
        feeder.join()
        # Clicks published after the switch: all of them must be answered by the new version.
        after = ds.events[clicks : clicks + after_clicks]
        publish_clicks(producer, settings.topics, after, rate, False)
        events = events + after
        producer.close()
        got: dict[str, str] = {}
        deadline = time.monotonic() + 300
        while len(got) < len(events) and time.monotonic() < deadline:
            for rec, _ in reader.poll(300):
                got[rec.event_id] = rec.model_version
        reader.close()
        wm = worker.metrics()
    finally:
        trainer.stop()
        worker.stop()
    current = store.current()
    assert current is not None
    return {
        "dataset": dataset,
        "checkpoint": str(checkpoint),
        "every": every,
        "rate": rate,
        "clicks": len(events),
        "answered": len(got),
        "first_version": first.version,
        "promoted_version": current.version,
        "versions_served": sorted(set(got.values())),
        "versions_after_switch": sorted({got[e.event_id] for e in after if e.event_id in got}),
        "fine_tune_seconds": current.meta.get("fine_tune", {}).get("seconds"),
        "fine_tune_sequences_per_s": current.meta.get("fine_tune", {}).get("sequences_per_s"),
        "train_sequences": current.meta.get("fine_tune", {}).get("train_sequences"),
        "gate": current.meta.get("gate"),
        "event_to_served_s": served_at - last_included if last_included else None,
        "swap_seconds": wm.get("streamrec_model_swap_seconds_sum"),
        "swaps": wm.get("streamrec_model_swap_seconds_count"),
    }


def run_online_bench(settings: Settings, args: argparse.Namespace) -> int:
    checkpoint = settings.checkpoint_or_default(args.checkpoint, canonical_name(args.dataset))
    with tempfile.TemporaryDirectory(prefix="streamrec-online-") as tmp:
        workdir = Path(tmp)
        broker = LocalBroker(workdir / "broker", free_port()).start()
        try:
            base = replace(settings, kafka_bootstrap=broker.bootstrap, features_dir=settings.feature_cache)
            out = online_round_trip(base, checkpoint, args.dataset, args.every, args.rate, args.clicks, workdir)
        finally:
            broker.stop()
    out["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out["command"] = (
        f"streamrec bench online --dataset {args.dataset} --checkpoint {checkpoint} --every {args.every} "
        f"--rate {args.rate} --clicks {args.clicks}"
    )
    for key in ("fine_tune_sequences_per_s", "fine_tune_seconds", "event_to_served_s", "swap_seconds"):
        value = out[key]
        print(f"{key:<28}{value:>12.2f}" if isinstance(value, float) else f"{key:<28}{value!s:>12}")
    print(f"clicks answered {out['answered']}/{out['clicks']}; versions served {out['versions_served']}")
    print(f"gate: {out['gate']}")
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return 0
