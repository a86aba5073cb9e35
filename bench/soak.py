"""`streamrec bench soak`: a long run at a fixed offered rate, to see whether the worker keeps up.

One worker (content baseline or `--checkpoint`) on a fresh local broker; the dataset's clicks are
offered at `--rate` for `--minutes`, looping over the dataset with new event ids when it runs out.
Reported per minute of arrival: answers, freshness p50 / p99 (arrival at a downstream consumer
minus event time), and the resident memory of the worker (with its model process) and of the
broker, sampled every 10 s, and the worker's own profile of the minute from its metrics (mean
micro-batch, seconds per stage, event-loop lag p99, cores per thread), so a rise can be traced to
a stage. Flat freshness and flat memory after warm-up mean the worker keeps up;
growth means a backlog or a leak. Prints a table and writes JSON with the machine's load, the
commit and the command.

noida-db keeps every message in memory, so without retention the broker's memory (and the CPU it
spends on its growing log) grows with the run; `--retention-minutes` (default 5; 0 = keep all; the
setting STREAMREC_RETENTION_MINUTES) bounds it as a production broker's retention would, and the
per-minute CPU of the worker, the broker and this bench's producer and reader tells the two apart.
With `--ceiling raw|faust` the raw aiokafka loop or the bare Faust passthrough of `bench pipeline`
runs in the worker's place, on the same broker, retention, rate and length: what is left of a
rise in the worker's freshness once the ceiling's own rise is taken away is the worker's.
Answers the bench reads twice are dropped and counted; clicks the worker answers twice are kept and
counted, beside the worker's own log-check counts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO

import psutil
from aiokafka import ConsumerRecord

from streamrec.bench.machine import machine_load, save_record
from streamrec.bench.pipeline import (
    CEILINGS,
    LOOP_LAG,
    WARM_UP_CLICKS,
    Drain,
    histogram_p99,
    stage_seconds,
    start_ceiling,
    thread_cores,
)
from streamrec.datasets import load_dataset
from streamrec.local.broker import LocalBroker, free_port, free_ports
from streamrec.local.processes import WorkerProcess, start_worker
from streamrec.ops.metrics import percentile
from streamrec.settings import Settings, TopicNames
from streamrec.stream.replay import make_producer, publish_catalogue, publish_clicks
from streamrec.stream.topics import ensure_topics_for

# What the worker's log watch found (discontinuities) and how much it read back to find it.
LOG_CHECKS = ("streamrec_stream_log_discontinuities_total", "streamrec_stream_log_check_records_total")
# Worker metrics sampled with memory, for a per-minute profile: micro-batches, seconds per stage,
# the event loop's lag, each thread's CPU.
PROFILE = (
    "streamrec_stream_batch_size_events_",
    "streamrec_stream_stage_latency_seconds_sum",
    LOOP_LAG + "_bucket",
    "streamrec_worker_thread_cpu_seconds_total",
)


def rss_mb(procs: list[psutil.Process]) -> float:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def cpu_s(procs: list[psutil.Process]) -> float:
    """User + system CPU seconds the processes have used so far."""
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


@dataclass(frozen=True)
class Sample:
    at_s: float  # seconds since the sampler started
    worker_mb: float  # the worker with its model process
    broker_mb: float
    worker_cpu_s: float  # CPU seconds used so far: worker tree, broker, this bench (producer and reader)
    broker_cpu_s: float
    bench_cpu_s: float


class MemorySampler(threading.Thread):
    """Every `every_s`: memory and CPU used so far by the worker tree, the broker and this bench,
    so a growing backlog can be told apart: the worker slowing, or the broker taking more of the
    two cores as its log grows."""

    def __init__(
        self,
        worker_pid: int,
        broker_dir: Path,
        every_s: float = 10.0,
        scrape: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.worker = psutil.Process(worker_pid)
        self.broker = [
            p for p in psutil.process_iter(["cmdline"]) if str(broker_dir) in " ".join(p.info["cmdline"] or [])
        ]
        self.bench = psutil.Process()
        self.every_s = every_s
        self.samples: list[Sample] = []
        self.scrape = scrape
        self.profile: list[tuple[float, dict[str, float]]] = []  # (at_s, the worker's PROFILE metrics)
        self.stop = threading.Event()
        self.started = time.monotonic()

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            try:
                tree = [self.worker, *self.worker.children(recursive=True)]
            except psutil.Error:
                return
            self.samples.append(
                Sample(
                    time.monotonic() - self.started,
                    rss_mb(tree),
                    rss_mb(self.broker),
                    cpu_s(tree),
                    cpu_s(self.broker),
                    cpu_s([self.bench]),
                )
            )
            if self.scrape is not None:
                try:
                    got = self.scrape()
                except OSError:  # a scrape that fails (the worker restarting) leaves a gap, no more
                    continue
                self.profile.append((self.samples[-1].at_s, {k: v for k, v in got.items() if k.startswith(PROFILE)}))


def _cpu_percent(before: Sample | None, after: Sample, field: str) -> float | None:
    if before is None or after.at_s <= before.at_s:
        return None
    return round(100.0 * (getattr(after, field) - getattr(before, field)) / (after.at_s - before.at_s), 1)


@dataclass(frozen=True)
class Answer:
    """One recommendation as the soak's reader saw it."""

    event_time_ms: int  # the triggering click's event time
    arrival_s: float  # unix seconds, when the reader fetched it
    event_id: str  # the triggering click
    partition: int
    offset: int


def read_answer(m: ConsumerRecord, now: float) -> Answer:
    record = json.loads(m.value)
    return Answer(record["event_time"], now, record["event_id"], m.partition, m.offset)


@dataclass(frozen=True)
class Repeats:
    """Answers seen more than once, told apart by where they sit in the log: the same partition
    and offset fetched again is the reader re-reading (a benchmark artefact, dropped); the same
    click answered at another offset is the worker answering twice (kept: a user sees it)."""

    answers: list[Answer]  # each log record once, in arrival order
    reread: int
    reanswered: int


def repeats(got: list[Answer]) -> Repeats:
    seen_at: set[tuple[int, int]] = set()
    seen_clicks: set[str] = set()
    kept, reread, reanswered = [], 0, 0
    for a in got:
        if (a.partition, a.offset) in seen_at:
            reread += 1
            continue
        seen_at.add((a.partition, a.offset))
        if a.event_id in seen_clicks:
            reanswered += 1
        seen_clicks.add(a.event_id)
        kept.append(a)
    return Repeats(kept, reread, reanswered)


def minute_profile(profile: list[tuple[float, dict[str, float]]], minute: int) -> dict:
    """The worker's own figures over one minute (0-based), from the metric samples around it: mean
    micro-batch, seconds per stage, event-loop lag p99 (ms), cores per thread. Empty without samples."""
    inside = [(t, m) for t, m in profile if minute * 60 <= t < (minute + 1) * 60]
    earlier = [(t, m) for t, m in profile if t < minute * 60]
    if not inside or (not earlier and len(inside) < 2):
        return {}
    (t0, before), (t1, after) = earlier[-1] if earlier else inside[0], inside[-1]
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
    batches = delta.get("streamrec_stream_batch_size_events_count", 0.0)
    lag = histogram_p99(delta, LOOP_LAG)
    wall = t1 - t0
    return {
        "mean_batch": round(delta.get("streamrec_stream_batch_size_events_sum", 0.0) / batches, 1) if batches else None,
        "stage_seconds_per_s": stage_seconds(delta, wall),
        "loop_lag_p99_ms": None if lag is None else round(1000 * lag, 1),
        "thread_cores": thread_cores(delta, wall),
    }


def per_minute(
    got: list[Answer],
    started: float,
    samples: list[Sample],
    profile: list[tuple[float, dict[str, float]]] | None = None,
) -> list[dict]:
    """Per minute of arrival since `started` (unix s): answers, freshness p50/p99 (ms), the last
    memory sample taken in that minute, the CPU share (% of one core) of the worker, the broker
    and this bench over the minute, and the worker's own profile of the minute (`minute_profile`)."""
    minutes: dict[int, list[float]] = {}
    for a in got:
        minutes.setdefault(int((a.arrival_s - started) // 60), []).append(a.arrival_s * 1000 - a.event_time_ms)
    rows = []
    for m in sorted(minutes):
        fresh = minutes[m]
        mem = [s for s in samples if m * 60 <= s.at_s < (m + 1) * 60]
        earlier = [s for s in samples if s.at_s < m * 60]
        before = earlier[-1] if earlier else (mem[0] if len(mem) > 1 else None)
        row = {
            "minute": m + 1,
            "answers": len(fresh),
            "freshness_p50_ms": percentile(fresh, 0.5),
            "freshness_p99_ms": percentile(fresh, 0.99),
            "worker_rss_mb": mem[-1].worker_mb if mem else None,
            "broker_rss_mb": mem[-1].broker_mb if mem else None,
        }
        for who in ("worker", "broker", "bench"):
            row[f"{who}_cpu_percent"] = _cpu_percent(before, mem[-1], f"{who}_cpu_s") if mem else None
        row.update(minute_profile(profile or [], m))
        rows.append(row)
    return rows


# Event ids of the clicks that warm a ceiling up before the run (not counted).
WARM_UP_SUFFIX = "-warm-up"


@dataclass
class CeilingProcess:
    """A ceiling of `bench pipeline` (CEILINGS: the bare Faust passthrough or the raw aiokafka
    loop) in the worker's place, on the same topics, broker and retention: run for as long at the
    same rate, its per-minute freshness is what the broker and this machine give any processor as
    the log fills, the worker's to be read against. It has no metrics to scrape."""

    proc: subprocess.Popen[bytes]
    log: IO[bytes]

    @classmethod
    def start(cls, settings: Settings, kind: str, workdir: Path) -> CeilingProcess:
        log = open(workdir / f"{kind}.log", "ab")  # noqa: SIM115 - closed by stop()
        return cls(start_ceiling(settings, kind, settings.topics, f"bench-soak-{kind}", log), log)

    def metrics(self) -> dict[str, float]:
        return {}

    def stop(self, timeout_s: float = 30.0) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout_s)
        finally:
            self.log.close()


def run_soak_bench(settings: Settings, args: argparse.Namespace) -> int:
    dataset = load_dataset(args.dataset, settings.data_dir)
    load = machine_load()
    with tempfile.TemporaryDirectory(prefix="streamrec-soak-") as tmp:
        workdir = Path(tmp)
        broker = LocalBroker(workdir / "broker", free_port()).start()
        metrics_port, dashboard_port = free_ports(2)
        run_settings = replace(
            settings,
            kafka_bootstrap=broker.bootstrap,
            state_dir=workdir / "state",
            features_dir=settings.feature_cache,
            model_path=args.checkpoint,
            topics=TopicNames("soak-"),
            app_id="bench-soak",
            metrics_port=metrics_port,
            dashboard_port=dashboard_port,
            retention_minutes=args.retention_minutes,
        )
        try:
            ensure_topics_for(run_settings)
            producer = make_producer(run_settings.kafka_bootstrap)
            n_items = publish_catalogue(producer, run_settings.topics, dataset.items)
            if args.ceiling:
                worker: WorkerProcess | CeilingProcess = CeilingProcess.start(run_settings, args.ceiling, workdir)
            else:
                worker = start_worker(run_settings, workdir / "worker.log")
            try:
                if not args.ceiling:
                    worker.wait_until("streamrec_index_size_items", lambda v: v >= n_items, timeout_s=180)
                drain = Drain(
                    run_settings.kafka_bootstrap,
                    run_settings.topics.recommendations,
                    expected=1 << 62,
                    timeout_s=args.minutes * 60 + args.drain_s,
                    keep=read_answer,
                )
                drain.start()
                warm_up = []
                if args.ceiling:
                    # A ceiling has no index to wait for: it is ready once it has joined its group
                    # and answered, so the first minute does not measure its start-up.
                    first = dataset.events[:WARM_UP_CLICKS]
                    warm_up = [replace(e, event_id=f"{e.event_id}{WARM_UP_SUFFIX}") for e in first]
                    publish_clicks(producer, run_settings.topics, warm_up, 0, False)
                    drain.wait_for(len(warm_up), timeout_s=120)
                sampler = MemorySampler(
                    worker.proc.pid, workdir / "broker", scrape=None if args.ceiling else worker.metrics
                )
                sampler.start()
                started = time.time()
                end = time.monotonic() + args.minutes * 60
                published, loop = 0, 0
                while time.monotonic() < end:
                    events = [replace(e, event_id=f"{e.event_id}-r{loop}") for e in dataset.events]
                    published += publish_clicks(
                        producer, run_settings.topics, events, args.rate, False, lambda: time.monotonic() > end
                    )
                    loop += 1
                producer.close()
                drain.expected = published + len(warm_up)
                seen = repeats([a for a in drain.result() if not a.event_id.endswith(WARM_UP_SUFFIX)])
                sampler.stop.set()
                sampler.join()
                rows = per_minute(seen.answers, started, sampler.samples, sampler.profile)
                # What the worker's log checks (stream/log_watch.py) took for lost records and
                # answered again, by topic, partition and kind.
                checks = {k: v for k, v in worker.metrics().items() if k.startswith(LOG_CHECKS)}
            finally:
                worker.stop()
        finally:
            broker.stop()
    print(
        f"{'minute':>6} {'answers':>8} {'p50 ms':>8} {'p99 ms':>8} {'worker MB':>10} {'broker MB':>10}"
        f" {'worker %':>9} {'broker %':>9} {'bench %':>8} {'batch':>6} {'lag p99':>8}  stage s/s"
    )
    for r in rows:
        keys = ("worker_rss_mb", "broker_rss_mb", "worker_cpu_percent", "broker_cpu_percent", "bench_cpu_percent")
        w, b, wc, bc, pc = ("-" if r[k] is None else f"{r[k]:.0f}" for k in keys)
        batch, lag = ("-" if r.get(k) is None else f"{r[k]:.0f}" for k in ("mean_batch", "loop_lag_p99_ms"))
        stages = " ".join(f"{k} {v:.2f}" for k, v in sorted(r.get("stage_seconds_per_s", {}).items()))
        print(
            f"{r['minute']:>6} {r['answers']:>8} {r['freshness_p50_ms']:>8.0f} {r['freshness_p99_ms']:>8.0f}"
            f" {w:>10} {b:>10} {wc:>9} {bc:>9} {pc:>8} {batch:>6} {lag:>8}  {stages}"
        )
    answered = len({a.event_id for a in seen.answers})
    print(
        f"{published} clicks offered at {args.rate:.0f}/s for {args.minutes} min, {answered} answered;"
        f" {seen.reanswered} answered again by the worker, {seen.reread} re-read by this bench (dropped)"
    )
    for name, count in checks.items():
        print(f"worker log check: {name} {count:.0f}")
    payload = {
        "dataset": dataset.name,
        "model": f"ceiling: {CEILINGS[args.ceiling][0]}" if args.ceiling else args.checkpoint or "content baseline",
        "ceiling": args.ceiling or None,
        "rate": args.rate,
        "minutes": args.minutes,
        "retention_minutes": args.retention_minutes,
        "offered": published,
        "answered": answered,
        "answered_again": seen.reanswered,
        "reread_by_bench": seen.reread,
        "worker_log_checks": checks,
        "per_minute": rows,
        "memory_samples": [asdict(x) for x in sampler.samples],
        "machine": load,
    }
    print(f"wrote {save_record(args.out, payload, 'soak')}")
    return 0
