"""`streamrec bench pipeline`: the worker's throughput, freshness and memory on a real broker.

In one run, on one fresh local broker:
  1. max rate: the catalogue and the whole click stream are published before the worker starts
     (so the publisher does not share the CPU with it), then the worker drains the backlog;
     sustained clicks/s = recommendations / (last arrival - first arrival) at a plain downstream
     consumer;
  2. fixed rate: clicks offered at `--fixed-rate` (and at `--high-rate`, and at `--fixed-rate` again
     beside a CPU-bound process taking one core); freshness = arrival at the downstream consumer
     minus the click's event time (p50/p95/p99);
  3. ceilings: a bare Faust passthrough agent (consume, decode, send one message per input) and a
     raw aiokafka loop drain the same backlog the same way; with `--floors` (the default) both are
     also offered the fixed-rate clicks, and their freshness is the floor the worker's is compared
     with (what the broker, the client and this machine cost before any recommender work);
  4. optionally (`--variants`) the max-rate run again under other Faust settings.
Peak RSS is the worker process's VmHWM. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any

import psutil
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from kafka import KafkaProducer

from streamrec.bench.machine import machine_load, save_record
from streamrec.datasets import load_dataset
from streamrec.datasets.schema import Dataset
from streamrec.local.broker import LocalBroker, free_port, free_ports
from streamrec.local.processes import settings_env, start_worker
from streamrec.ops.dashboard_page import histogram_quantile
from streamrec.ops.metrics import percentile
from streamrec.settings import Settings, TopicNames
from streamrec.stream.replay import make_producer, publish_catalogue, publish_clicks
from streamrec.stream.schemas import CatalogueRecord, encode, now_ms
from streamrec.stream.topics import ensure_topics, ensure_topics_for


@dataclass
class RunResult:
    name: str
    clicks: int
    received: int
    clicks_per_s: float
    freshness_p50_ms: float | None = None
    freshness_p95_ms: float | None = None
    freshness_p99_ms: float | None = None
    peak_rss_mb: float | None = None
    settings: dict | None = None
    catalogue_to_searchable_p99_s: float | None = None
    new_items: int = 0
    # from the worker's own metrics over the run: mean micro-batch size, seconds per stage
    mean_batch: float | None = None
    stage_seconds: dict[str, float] | None = None
    # how busy the machine was just before the run (bench/machine.py); a busy run is marked
    machine: dict | None = None
    # cores used during the run (CPU seconds / wall seconds) by the worker (with its model
    # process) and by this benchmark's own load generator and drain
    cpu_cores: dict[str, float] | None = None
    # cores used by each thread of the worker process over a fixed-rate run (its
    # streamrec_worker_thread_cpu_seconds_total), the model process not included
    thread_cores: dict[str, float] | None = None
    # p99 of how late the worker's event loop woke a sleeping task (stream/loop_lag.py), ms
    loop_lag_p99_ms: float | None = None


DRAIN_PAUSE_S = 0.003
LOOP_LAG = "streamrec_worker_event_loop_lag_seconds"


class Drain(threading.Thread):
    """Reads `expected` messages from every partition of `topic` from its beginning, with arrival
    times, in a thread of the benchmark.

    aiokafka, whose record decoding is compiled: a kafka-python drain took 74% of a core at 2,700
    messages/s, competing with the worker it measures on a 2-core machine. Arrival times are
    taken per fetched batch; nothing is decoded until the run is over."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        expected: int,
        timeout_s: float,
        keep: Callable[[ConsumerRecord, float], Any] = lambda m, now: (m.value, now),
    ) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic = bootstrap, topic
        self.expected = expected  # may be lowered while running (a run whose length is known at its end)
        self.timeout_s = timeout_s
        self.keep = keep  # what is kept of each record: by default its bytes and arrival time
        self.got: list[Any] = []

    def run(self) -> None:
        asyncio.run(self._drain())

    async def _drain(self) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(self.topic)
            assert parts, f"topic {self.topic} has no partitions"
            tps = [TopicPartition(self.topic, p) for p in parts]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            deadline = time.monotonic() + self.timeout_s
            while len(self.got) < self.expected and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=100, max_records=10_000)
                now = time.time()
                self.got += [self.keep(m, now) for msgs in batches.values() for m in msgs]
                # noida-db answers fetches at once (it ignores fetch.max.wait.ms), so a drain that
                # keeps up would fetch a few records at a time as fast as it can and compete with
                # the worker for the CPU. A 3 ms pause stands in for the broker's wait; it can add
                # up to 3 ms to a measured freshness, never subtract.
                consumer.pause(*tps)
                await asyncio.sleep(DRAIN_PAUSE_S)
                consumer.resume(*tps)
        finally:
            await consumer.stop()

    def wait_for(self, n: int, timeout_s: float) -> None:
        """Block until `n` records arrived (TimeoutError after `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        while len(self.got) < n:
            if not self.is_alive() or time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.got)} of {n} records on {self.topic} after {timeout_s:.0f} s")
            time.sleep(0.05)

    def result(self) -> list[Any]:
        self.join()
        return self.got


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tree_peak_rss_mb(pid: int) -> float:
    """Peak RSS of a process plus its children's (the worker and its model process): the sum of
    their peaks, an upper bound of the peak together."""
    children = [c.pid for c in psutil.Process(pid).children(recursive=True)]
    return peak_rss_mb(pid) + sum(peak_rss_mb(c) for c in children)


def new_items_during(producer: KafkaProducer, settings: Settings, dataset: Dataset, n: int, seconds: float) -> None:
    """Publish `n` unseen items (new ids, new titles) spread over `seconds`: catalogue freshness."""
    rng = random.Random(0)
    for k in range(n):
        base_item = dataset.items[rng.randrange(len(dataset.items))]
        record = CatalogueRecord(
            f"bench-new-{k}",
            "upsert",
            now_ms(),
            f"{base_item.title} (new edition {k})",
            base_item.category_path,
            base_item.brand,
            base_item.price,
        )
        producer.send(settings.topics.catalogue, key=record.item_id.encode(), value=encode(record))
        producer.flush()
        time.sleep(seconds / max(1, n))


def histogram_p99(metrics: dict[str, float], name: str) -> float | None:
    """p99 of histogram `name` (without `_bucket`) from a run's metric deltas; None if absent."""
    buckets = sorted(
        (float(k.split('le="')[1].split('"')[0]), v) for k, v in metrics.items() if k.startswith(f"{name}_bucket")
    )
    return histogram_quantile(0.99, [b for b, _ in buckets], [c for _, c in buckets]) if buckets else None


def worker_run(
    base: Settings, dataset: Dataset, name: str, clicks: int, rate: float, workdir: Path, new_items: int = 0
) -> RunResult:
    """One worker over fresh topics: `rate` 0 = publish all first, then drain at max speed.

    With `new_items`, that many unseen items are published during the run (catalogue freshness:
    the worker's histogram of catalogue event time to searchable, measured after the catalogue
    load so the bulk load does not count)."""
    settings = replace(
        base,
        topics=TopicNames(f"{name}-"),
        app_id=f"bench-{name}",
        metrics_port=(ports := free_ports(2))[0],
        dashboard_port=ports[1],
    )
    ensure_topics_for(settings)
    events = dataset.events[:clicks]
    producer = make_producer(settings.kafka_bootstrap)
    n_items = publish_catalogue(producer, settings.topics, dataset.items)
    drain = Drain(settings.kafka_bootstrap, settings.topics.recommendations, len(events), timeout_s=900)
    if not rate:
        # The backlog is in the broker before the worker starts, so the publisher does not compete
        # with the worker for the CPU; the worker reads the catalogue before any click.
        publish_clicks(producer, settings.topics, events, 0, progress=False)
    worker = start_worker(settings, workdir / f"{name}.log")
    try:
        cpu = CpuMeter(worker.proc.pid)
        before: dict[str, float] = {}
        began = time.monotonic()
        if rate:
            worker.wait_until("streamrec_index_size_items", lambda v: v >= n_items, timeout_s=120)
            before = worker.metrics()
            began = time.monotonic()
        drain.start()
        feeder = None
        if new_items:
            cat_producer = make_producer(settings.kafka_bootstrap)
            span_s = len(events) / rate if rate else 10.0
            feeder = threading.Thread(
                target=new_items_during, args=(cat_producer, settings, dataset, new_items, 0.8 * span_s)
            )
            feeder.start()
        if rate:
            publish_clicks(producer, settings.topics, events, rate, progress=False)
        producer.close()
        got = drain.result()
        cores = cpu.cores()
        cat_p99 = None
        if feeder is not None:
            feeder.join()
            cat_producer.close()
            worker.wait_until("streamrec_index_size_items", lambda v: v >= n_items + new_items, timeout_s=60)
        after = worker.metrics()
        wall = time.monotonic() - began
        delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
        if feeder is not None:
            cat_p99 = histogram_p99(delta, "streamrec_index_catalogue_to_searchable_seconds")
        rss = tree_peak_rss_mb(worker.proc.pid)
    finally:
        worker.stop()
    arrivals = [t for _, t in got]
    span = max(arrivals) - min(arrivals) if len(arrivals) > 1 else float("nan")
    fresh = [t * 1000 - json.loads(raw)["event_time"] for raw, t in got]
    knobs = {
        "batch_size": settings.batch_size,
        "batch_wait_ms": settings.batch_wait_ms,
        "producer_linger_ms": settings.producer_linger_ms,
        "commit_interval_s": settings.commit_interval_s,
        "partitions": settings.partitions,
        "offered_rate": rate or "max",
        "model": settings.model_path or "content baseline",
        # How a research checkpoint is served (stream/worker.py `research_serving_config`).
        "state_dtype": settings.state_dtype,
        "one_call_padding": settings.one_call_padding,
    }
    batches = delta.get("streamrec_stream_batch_size_events_count", 0.0)
    stages = stage_seconds(delta)
    return RunResult(
        name,
        len(events),
        len(got),
        len(got) / span,
        percentile(fresh, 0.5),
        percentile(fresh, 0.95),
        percentile(fresh, 0.99),
        rss,
        knobs,
        cat_p99,
        new_items,
        delta.get("streamrec_stream_batch_size_events_sum", 0.0) / batches if batches else None,
        stages,
        cpu_cores=cores,
        thread_cores=thread_cores(delta, wall) if rate else None,
        loop_lag_p99_ms=None if (lag := histogram_p99(delta, LOOP_LAG)) is None else round(1000 * lag, 1),
    )


def stage_seconds(delta: dict[str, float], wall_s: float = 1.0) -> dict[str, float]:
    """Seconds each worker stage took over a run (metric deltas), divided by `wall_s`."""
    prefix = 'streamrec_stream_stage_latency_seconds_sum{stage="'
    return {k[len(prefix) : -2]: round(v / wall_s, 3) for k, v in delta.items() if k.startswith(prefix)}


def thread_cores(delta: dict[str, float], wall_s: float) -> dict[str, float]:
    """Cores used by each worker thread: its CPU seconds over the run (metric deltas) / wall time."""
    prefix = 'streamrec_worker_thread_cpu_seconds_total{thread="'
    return {
        k[len(prefix) : -2]: round(v / wall_s, 3) for k, v in sorted(delta.items()) if k.startswith(prefix) and v > 0
    }


class CpuMeter:
    """CPU seconds per wall second, from now until `cores()`, of a process with its children
    (the worker and its model process) and of this benchmark process (publisher and drain)."""

    def __init__(self, pid: int, label: str = "worker") -> None:
        self.label = label  # what the measured process is: the worker, or a ceiling
        self.proc = psutil.Process(pid)
        self.me = psutil.Process()
        self.start = time.monotonic(), self._tree(), self._own()

    def _tree(self) -> float:
        total = 0.0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                continue
        return total

    def _own(self) -> float:
        t = self.me.cpu_times()
        return t.user + t.system

    def cores(self) -> dict[str, float]:
        wall = time.monotonic() - self.start[0]
        return {
            self.label: round((self._tree() - self.start[1]) / wall, 2),
            "bench_harness": round((self._own() - self.start[2]) / wall, 2),
        }


@contextlib.contextmanager
def competing_process() -> Iterator[None]:
    """A CPU-bound process beside the worker for the duration: one of the machine's cores taken."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        proc.kill()
        proc.wait(10)


# The ceilings measured beside the worker: (run name, module run as `python -m`, topic prefix).
CEILINGS = {
    "faust": ("faust-passthrough", "streamrec.bench.passthrough", "passthrough-"),
    "raw": ("aiokafka-raw-loop", "streamrec.bench.raw_loop", "rawloop-"),
}


# Clicks a ceiling answers before a fixed-rate run is measured: it has joined its group, fetched
# and sent, so the measured clicks do not include its start-up.
WARM_UP_CLICKS = 20


def start_ceiling(base: Settings, kind: str, topics: TopicNames, group: str, log: IO[bytes]) -> subprocess.Popen[bytes]:
    """The ceiling `kind` (in CEILINGS) as its own process, from `topics.clicks` to
    `topics.recommendations` in consumer group `group`, its output to `log`."""
    _, module, _ = CEILINGS[kind]
    return subprocess.Popen(
        [sys.executable, "-m", module, topics.clicks, topics.recommendations, group],
        env=settings_env(base),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def passthrough_run(
    base: Settings, dataset: Dataset, clicks: int, workdir: Path, kind: str = "faust", rate: float = 0.0
) -> RunResult:
    """A ceiling: the bare Faust passthrough, or the raw aiokafka loop (`kind` in CEILINGS).

    `rate` 0: it drains a backlog of `clicks` (the throughput ceiling, published before it starts,
    as for the worker). `rate` > 0: the freshness floor, the same clicks offered at that rate once
    it answered `WARM_UP_CLICKS` others: what the broker, the client library (and Faust) and this
    machine cost a click before any recommender work."""
    name, _, prefix = CEILINGS[kind]
    if rate:
        name = f"{name}-fixed"
    topics = TopicNames(f"{name}-" if rate else prefix)
    ensure_topics(base.kafka_bootstrap, topics, base.partitions)
    producer = make_producer(base.kafka_bootstrap)
    events = dataset.events[:clicks]
    warm_up = dataset.events[clicks : clicks + WARM_UP_CLICKS] if rate else []
    if not rate:
        publish_clicks(producer, topics, events, 0, progress=False)  # the same backlog-first method
    drain = Drain(base.kafka_bootstrap, topics.recommendations, len(warm_up) + len(events), timeout_s=900)
    drain.start()
    log = open(workdir / f"{name}.log", "ab")  # noqa: SIM115 - closed below
    proc = start_ceiling(base, kind, topics, f"bench-{name}", log)
    cores = None
    try:
        if rate:
            publish_clicks(producer, topics, warm_up, 0, progress=False)
            drain.wait_for(len(warm_up), timeout_s=120)
            cpu = CpuMeter(proc.pid, label=kind)
            publish_clicks(producer, topics, events, rate, progress=False)
        producer.close()
        got = drain.result()
        if rate:
            cores = cpu.cores()
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    got = got[len(warm_up) :]  # the warm-up's answers arrived first: the drain waited for them
    arrivals = [t for _, t in got]
    fresh = [t * 1000 - json.loads(raw)["event_time"] for raw, t in got] if rate else []
    return RunResult(
        name,
        len(events),
        len(got),
        len(got) / (max(arrivals) - min(arrivals)),
        percentile(fresh, 0.5) if fresh else None,
        percentile(fresh, 0.95) if fresh else None,
        percentile(fresh, 0.99) if fresh else None,
        peak_rss_mb=rss,
        settings={"producer_linger_ms": base.producer_linger_ms, "offered_rate": rate or "max"},
        cpu_cores=cores,
    )


def print_table(results: list[RunResult]) -> None:
    head = f"{'run':<26}{'clicks':>8}{'recv':>8}{'clicks/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'RSS MB':>9}"
    print(head)
    print("-" * len(head))
    for r in results:

        def fmt(v: float | None) -> str:
            return f"{v:9.0f}" if v is not None else f"{'-':>9}"

        print(
            f"{r.name:<26}{r.clicks:>8}{r.received:>8}{r.clicks_per_s:>10.0f}"
            f"{fmt(r.freshness_p50_ms)}{fmt(r.freshness_p95_ms)}{fmt(r.freshness_p99_ms)}{fmt(r.peak_rss_mb)}"
        )


def state_bytes(settings: Settings, model_path: str, workdir: Path) -> dict[str, int]:
    """Bytes kept per user whose sequence holds 2,048 clicks: the RocksDB sequence (on disk, after
    compaction) and, with a research model, the cached encoder state of its window."""
    from streamrec.state.sequence_store import ClickToAppend, RocksSequenceStore

    path = workdir / "state-bytes"
    store = RocksSequenceStore(path, max_len=2048)
    users = 20
    for u in range(users):
        store.append_many(
            [
                ClickToAppend(f"user-{u:04d}", f"{1000 + (n * 7) % 5000}", f"ev-{u}-{n:06d}", 1_700_000_000_000 + n)
                for n in range(2048)
            ]
        )
    store.compact()
    store.close()
    disk = sum(f.stat().st_size for f in path.rglob("*.sst"))
    out = {"sequence_on_disk": disk // users}
    if model_path:
        from streamrec.serving.research_model import load_research_model
        from streamrec.stream.worker import research_serving_config

        cfg = research_serving_config(settings)  # as served (STREAMREC_STATE_DTYPE and its budget)
        model = load_research_model(Path(model_path), settings.data_dir, settings.feature_cache, cfg)
        out["encoder_state"] = model.state_bytes_per_user(2048)
        out["encoder_state_dtype"] = model.state_dtype
    return out


def run_pipeline_bench(settings: Settings, args: argparse.Namespace) -> int:
    dataset = load_dataset(args.dataset, settings.data_dir)
    clicks = len(dataset.events) if args.events <= 0 else min(args.events, len(dataset.events))
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="streamrec-bench-") as tmp:
        workdir = Path(tmp)

        def on_fresh_broker(
            name: str, run: Callable[..., RunResult], *run_args: object, knobs: dict | None = None
        ) -> RunResult:
            # noida-db keeps every message in memory and slows as it fills: each run gets its own.
            broker = LocalBroker(workdir / f"broker-{name}", free_port()).start()
            base = replace(
                settings,
                kafka_bootstrap=broker.bootstrap,
                state_dir=workdir / f"state-{name}",
                features_dir=settings.feature_cache,
                model_path=args.checkpoint,
                **(knobs or {}),
            )
            load = machine_load()
            try:
                result = run(base, *run_args)
            finally:
                broker.stop()
            result.machine = load
            return result

        results.append(on_fresh_broker("max", worker_run, dataset, "worker-max", clicks, 0, workdir))
        results.append(on_fresh_broker("pass", passthrough_run, dataset, clicks, workdir))
        results.append(on_fresh_broker("raw", passthrough_run, dataset, clicks, workdir, "raw"))
        fixed = args.fixed_events
        results.append(
            on_fresh_broker(
                "fixed", worker_run, dataset, "worker-fixed", fixed, args.fixed_rate, workdir, args.new_items
            )
        )
        floors = [
            on_fresh_broker(f"floor-{kind}", passthrough_run, dataset, fixed, workdir, kind, args.fixed_rate)
            for kind in (CEILINGS if args.floors else ())
        ]
        results += floors
        if args.high_rate:
            results.append(
                on_fresh_broker("high", worker_run, dataset, "worker-high-rate", fixed, args.high_rate, workdir)
            )
        if args.contention:
            with competing_process():
                contended = on_fresh_broker(
                    "contended", worker_run, dataset, "worker-contended", fixed, args.fixed_rate, workdir
                )
            contended.settings = {**(contended.settings or {}), "competing_cpu_bound_process": True}
            results.append(contended)
        if args.variants:
            n = min(clicks, 20_000)
            variants = {
                "default": {},
                "linger0": {"producer_linger_ms": 0.0},
                "batch64": {"batch_size": 64},
                "batch1024": {"batch_size": 1024, "batch_wait_ms": 50.0},
                "commit5s": {"commit_interval_s": 5.0},
                "partitions1": {"partitions": 1},
            }
            for vname, knobs in variants.items():
                results.append(on_fresh_broker(vname, worker_run, dataset, f"var-{vname}", n, 0, workdir, knobs=knobs))
        # Inside the block: the state stores it opens live in the bench's temporary directory.
        state = state_bytes(settings, args.checkpoint, workdir)
    print_table(results)
    for r in results:
        if r.stage_seconds:
            stages = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r.stage_seconds.items()))
            cores = ", ".join(f"{k} {v:.2f}" for k, v in (r.cpu_cores or {}).items())
            lag = "-" if r.loop_lag_p99_ms is None else f"{r.loop_lag_p99_ms:.0f} ms"
            print(
                f"{r.name}: mean batch {r.mean_batch or 0:.0f} clicks; seconds per stage: {stages}; cores: {cores}; "
                f"event loop lag p99 {lag}"
            )
            if r.thread_cores:
                busiest = sorted(r.thread_cores.items(), key=lambda kv: -kv[1])
                print(f"  worker threads, cores: {', '.join(f'{k} {v:.2f}' for k, v in busiest)}")
    by_name = {r.name: r for r in results}
    ceiling = by_name["faust-passthrough"].clicks_per_s
    raw = by_name["aiokafka-raw-loop"].clicks_per_s
    worker = by_name["worker-max"].clicks_per_s
    print(
        f"\nworker / Faust passthrough ceiling: {worker / ceiling:.0%}; worker / raw aiokafka loop: {worker / raw:.0%}"
    )
    fixed_run = by_name["worker-fixed"]
    if floors:
        print(
            f"freshness p50 / p99 at {args.fixed_rate:.0f} clicks/s: worker {fixed_run.freshness_p50_ms:.0f} / "
            f"{fixed_run.freshness_p99_ms:.0f} ms; floors, same broker and machine: "
            + "; ".join(f"{r.name} {r.freshness_p50_ms:.0f} / {r.freshness_p99_ms:.0f} ms" for r in floors)
        )
    busy = [r.name for r in results if r.machine and r.machine.get("busy")]
    if busy:
        print(f"BUSY MACHINE during: {', '.join(busy)} (other processes used CPU; compare those figures with care)")
    if fixed_run.catalogue_to_searchable_p99_s is not None:
        print(
            f"catalogue event to searchable p99: {fixed_run.catalogue_to_searchable_p99_s:.3f} s "
            f"({fixed_run.new_items} new items during the fixed-rate run; histogram estimate)"
        )
    print(
        "state per user at 2,048 clicks: "
        + ", ".join(f"{k} {v:,} B" if isinstance(v, int) else f"{k} {v}" for k, v in state.items())
    )
    payload = {
        "dataset": dataset.name,
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": [asdict(r) for r in results],
        "worker_over_ceiling": worker / ceiling,
        "worker_over_raw_loop": worker / raw,
        "busy_runs": busy,
        "state_bytes_per_user_at_2048": state,
        "model": args.checkpoint or "content baseline",
    }
    print(f"wrote {save_record(args.out, payload, 'pipeline')}")
    return 0
