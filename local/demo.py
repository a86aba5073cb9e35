"""`make demo`: the whole system live on one machine.

Uses the broker at KAFKA_BOOTSTRAP when one answers there, else starts the local one on that
address's port (127.0.0.1:19092 by default); creates the topics, starts a worker, replays a dataset
as live clicks, and tails the recommendations topic from its end (records of earlier runs are not
shown) with item titles and freshness. Stops on Ctrl-C, or by itself after `events` clicks.

What survives a run: the model store and the title-vector cache (the state directory's, so an
imported model is served and MiniLM vectors are computed once), and the worker logs of every run
under <state_dir>/demo/logs/. What each run starts afresh: the demo worker's own state and the
local broker's data.
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

from streamrec.datasets import load_dataset
from streamrec.errors import UserError, parse_bootstrap
from streamrec.local.broker import LocalBroker, port_open
from streamrec.local.processes import WorkerProcess, start_worker, stop_on_signals
from streamrec.ops.metrics import percentile
from streamrec.settings import Settings
from streamrec.stream.rec_consumer import RecommendationReader
from streamrec.stream.replay import make_producer, publish_catalogue, publish_clicks
from streamrec.stream.topics import ensure_topics_for


class LiveTail(threading.Thread):
    """Prints a readable sample of recommendations as they arrive, and keeps counts."""

    def __init__(self, settings: Settings, titles: dict[str, str], lines_per_s: float = 4.0) -> None:
        super().__init__(daemon=True)
        self.reader = RecommendationReader(settings.kafka_bootstrap, settings.topics.recommendations, from_end=True)
        self.titles = titles
        self.interval = 1.0 / lines_per_s
        self.count = 0
        self.freshness_ms: list[float] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        last_print = 0.0
        while not self.stop_event.is_set():
            for rec, arrived in self.reader.poll(200):
                self.count += 1
                fresh = arrived * 1000 - rec.event_time
                self.freshness_ms.append(fresh)
                if time.monotonic() - last_print >= self.interval:
                    last_print = time.monotonic()
                    top = "; ".join(self.titles.get(i.item_id, i.item_id)[:38] for i in rec.items[:3])
                    print(f"  user {rec.user_id:>6} | {fresh:6.0f} ms | {rec.model_version} | {top}", flush=True)
        self.reader.close()


def _broker_for(settings: Settings, data_dir: Path) -> LocalBroker | None:
    """None when a broker answers at KAFKA_BOOTSTRAP; else the local one, started on its port."""
    (host, port), *_ = parse_bootstrap(settings.kafka_bootstrap)
    if port_open(port, host if host != "localhost" else "127.0.0.1"):
        print(f"using the broker at {settings.kafka_bootstrap} (KAFKA_BOOTSTRAP)")
        return None
    if host not in ("127.0.0.1", "localhost"):
        raise UserError(
            f"no broker answers at {settings.kafka_bootstrap}, and the local one runs only on 127.0.0.1",
            "start yours, or unset KAFKA_BOOTSTRAP",
        )
    broker = LocalBroker(data_dir, port).start()
    print(f"local Kafka-protocol broker (noida-db) on {broker.bootstrap}, data in {broker.data_dir}")
    return broker


def run_demo(settings: Settings, dataset_name: str, events: int, rate: float) -> int:
    stop_on_signals()  # Ctrl-C and SIGTERM stop the demo cleanly, with its worker and broker
    dataset = load_dataset(dataset_name, settings.data_dir)
    demo_state = settings.state_dir / "demo"
    for fresh in ("worker", "broker"):
        shutil.rmtree(demo_state / fresh, ignore_errors=True)
    log_path = demo_state / "logs" / f"worker-{time.strftime('%Y%m%d-%H%M%S')}.log"
    settings = replace(
        settings, state_dir=demo_state, model_store=settings.model_store_dir, features_dir=settings.feature_cache
    )
    broker = _broker_for(settings, demo_state / "broker")
    worker: WorkerProcess | None = None
    tail: LiveTail | None = None
    producer = None
    try:
        ensure_topics_for(settings)
        worker = start_worker(settings, log_path)
        print(f"worker up; Prometheus metrics at {worker.metrics_url}; worker log {worker.log_path}")
        if settings.dashboard_port:
            print(f"live dashboard page: {worker.dashboard_url} (open it in a browser)")
        producer = make_producer(settings.kafka_bootstrap)
        n_items = publish_catalogue(producer, settings.topics, dataset.items)
        print(f"published {n_items} catalogue items of {dataset.name}; waiting for the index...")
        worker.wait_until("streamrec_index_size_items", lambda v: v >= n_items, timeout_s=120)
        tail = LiveTail(settings, {it.item_id: it.title for it in dataset.items})
        tail.start()
        clicks = dataset.events if events <= 0 else dataset.events[:events]
        print(f"replaying {len(clicks)} clicks at {rate or 'max'} clicks/s (Ctrl-C stops)")
        print("  user        | fresh   | model      | top recommendations")
        started = time.monotonic()
        sent = publish_clicks(producer, settings.topics, clicks, rate, progress=False)
        deadline = time.monotonic() + 60
        while tail.count < sent and time.monotonic() < deadline:
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        print(
            f"\n{sent} clicks -> {tail.count} recommendations in {elapsed:.1f}s; freshness p50 "
            f"{percentile(tail.freshness_ms, 0.5):.0f} ms, p99 {percentile(tail.freshness_ms, 0.99):.0f} ms"
        )
        m = worker.metrics()
        users = m.get("streamrec_state_stored_users", 0)
        items = m.get("streamrec_index_size_items", 0)
        dead = sum(v for k, v in m.items() if k.startswith("streamrec_stream_dead_letters_total"))
        print(f"worker: users {users:.0f}, index {items:.0f} items, dead letters {dead:.0f}")
        return 0
    except KeyboardInterrupt:
        print("\nstopping (Ctrl-C)")
        return 130
    except (RuntimeError, TimeoutError) as exc:
        # start_worker and wait_until name the worker's log; the log is kept for reading.
        raise UserError(f"the demo worker failed: {exc}", f"its log is kept at {log_path}") from exc
    finally:
        if producer is not None:
            producer.close(timeout=5)
        if tail is not None:
            tail.stop_event.set()
            tail.join(5)
        if worker is not None:
            worker.stop()
        if broker is not None:
            broker.stop()
