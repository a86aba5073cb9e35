"""All Prometheus metrics of streamrec, made by one factory against a passed-in registry.

Names follow `streamrec_<subsystem>_<name>_<unit>`. Tests pass a fresh `CollectorRegistry`, so
metric state never leaks between them; processes use one registry and expose it over HTTP on
127.0.0.1 with `serve_metrics`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric

from streamrec.errors import port_in_use

# Freshness and latency buckets span 1 ms to 1 min: healthy values sit well under a second.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Freshness goes on to hours, so that a worker far behind reads as far behind (p99 of a histogram
# whose last bucket is a minute reads one minute however late recommendations are).
FRESHNESS_BUCKETS = (*LATENCY_BUCKETS, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


@dataclass(frozen=True)
class Metrics:
    events_in: Counter
    dead_letters: Counter
    duplicates: Counter
    recommendations: Counter
    recommended_slots: Counter
    new_items_held: Gauge
    batch_size: Histogram
    batch_wait: Histogram
    processing_latency: Histogram
    freshness: Histogram
    index_size: Gauge
    users: Gauge
    consumer_lag: Gauge
    model_info: Gauge
    catalogue_latency: Histogram
    stage_latency: Histogram
    index_updated: Gauge
    model_loaded: Gauge
    gate_decisions: Counter
    gate_ndcg: Gauge
    caught_up: Counter
    model_swap: Histogram
    trainer_rounds_seconds: Histogram
    trainer_sequences_per_s: Gauge
    trainer_window_users: Gauge
    trainer_events: Counter
    agent_up: Gauge
    agent_crashes: Counter
    discontinuities: Counter
    already_answered: Counter
    log_check_reads: Counter
    loop_lag: Histogram


@dataclass(frozen=True)
class _Spec:
    """One metric: its kind, name, help, labels, buckets and the process that exports it."""

    kind: type
    name: str
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None
    process: str = "worker"


# Every metric, by its field of `Metrics`: the one declaration of each.
SPECS: dict[str, _Spec] = {
    "events_in": _Spec(
        Counter, "streamrec_stream_events_in_total", "Records read from input topics", labels=("topic",)
    ),
    "dead_letters": _Spec(
        Counter,
        "streamrec_stream_dead_letters_total",
        "Records sent to the dead-letter topic, by reason",
        labels=("reason",),
    ),
    "duplicates": _Spec(
        Counter,
        "streamrec_state_duplicate_clicks_total",
        "Redelivered clicks recognised by event id and not appended again",
    ),
    "recommendations": _Spec(Counter, "streamrec_stream_recommendations_total", "Recommendation records emitted"),
    "recommended_slots": _Spec(
        Counter,
        "streamrec_serving_recommended_slots_total",
        "Recommended items by kind: warm, new (placed by content, calibrated) or explore (quota slot)",
        labels=("kind",),
    ),
    "new_items_held": _Spec(
        Gauge,
        "streamrec_serving_new_items_held_items",
        "Items scored apart from the main index: short of evidence, or young enough to explore",
    ),
    "batch_size": _Spec(
        Histogram, "streamrec_stream_batch_size_events", "Clicks per micro-batch", buckets=BATCH_BUCKETS
    ),
    "batch_wait": _Spec(
        Histogram,
        "streamrec_stream_batch_wait_seconds",
        "Time from the oldest click of a micro-batch entering the broker to its processing",
        buckets=LATENCY_BUCKETS,
    ),
    "processing_latency": _Spec(
        Histogram,
        "streamrec_stream_processing_latency_seconds",
        "Time to process one micro-batch (decode, state, encode, search, send)",
        buckets=LATENCY_BUCKETS,
    ),
    "freshness": _Spec(
        Histogram,
        "streamrec_stream_freshness_seconds",
        "Recommendation emission time minus the triggering click's event time",
        buckets=FRESHNESS_BUCKETS,
    ),
    "index_size": _Spec(Gauge, "streamrec_index_size_items", "Items in the serving index"),
    "users": _Spec(Gauge, "streamrec_state_stored_users", "Users with a sequence in local state"),
    "consumer_lag": _Spec(
        Gauge,
        "streamrec_stream_consumer_lag_messages",
        "High-water mark minus the next offset to process (not the fetch position), per topic partition",
        labels=("topic", "partition"),
    ),
    "model_info": _Spec(
        Gauge, "streamrec_model_version_info", "Serving model version (value 1 on the current one)", labels=("version",)
    ),
    "catalogue_latency": _Spec(
        Histogram,
        "streamrec_index_catalogue_to_searchable_seconds",
        "Catalogue event time to the item being searchable",
        buckets=LATENCY_BUCKETS,
    ),
    "stage_latency": _Spec(
        Histogram,
        "streamrec_stream_stage_latency_seconds",
        "Time spent per micro-batch in one stage: decode, state, encode, search or send",
        labels=("stage",),
        buckets=LATENCY_BUCKETS,
    ),
    "index_updated": _Spec(
        Gauge, "streamrec_index_last_update_timestamp_seconds", "Unix time of the last change to the serving index"
    ),
    "model_loaded": _Spec(
        Gauge,
        "streamrec_model_loaded_timestamp_seconds",
        "Unix time the serving model was loaded or swapped in (age = time() - value)",
    ),
    "gate_decisions": _Spec(
        Counter,
        "streamrec_trainer_gate_decisions_total",
        "Promotion gate decisions of the online trainer",
        labels=("decision",),
        process="trainer",
    ),
    "gate_ndcg": _Spec(
        Gauge,
        "streamrec_trainer_gate_ndcg_ratio",
        "NDCG@10 on the gate's held-out slice, for the serving and the candidate model",
        labels=("model",),
        process="trainer",
    ),
    "caught_up": _Spec(
        Counter,
        "streamrec_state_caught_up_clicks_total",
        "Clicks read back from the clicks topic after a partition moved to this worker",
    ),
    "model_swap": _Spec(
        Histogram,
        "streamrec_model_swap_seconds",
        "Announcement to serving a new model version: load, encode the catalogue, switch",
        buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
    ),
    "trainer_rounds_seconds": _Spec(
        Histogram,
        "streamrec_trainer_fine_tune_seconds",
        "Duration of one online fine-tune (training only, not the gate)",
        buckets=(1, 5, 10, 30, 60, 120, 300, 600),
        process="trainer",
    ),
    "trainer_sequences_per_s": _Spec(
        Gauge,
        "streamrec_trainer_throughput_sequences_per_second",
        "Training sequences per second of the last fine-tune (epochs counted)",
        process="trainer",
    ),
    "trainer_window_users": _Spec(
        Gauge, "streamrec_trainer_window_users", "Users in the trainer's recent window", process="trainer"
    ),
    "trainer_events": _Spec(
        Counter, "streamrec_trainer_events_in_total", "Records the trainer read", labels=("topic",), process="trainer"
    ),
    "agent_up": _Spec(
        Gauge,
        "streamrec_worker_agent_running_info",
        "1 while the agent or task is running, 0 once it stopped (the worker is then not consuming)",
        labels=("agent",),
    ),
    "agent_crashes": _Spec(
        Counter,
        "streamrec_worker_agent_crashes_total",
        "Agents or tasks that died of an error (the worker exits so that it is restarted)",
        labels=("agent",),
    ),
    "discontinuities": _Spec(
        Counter,
        "streamrec_stream_log_discontinuities_total",
        "Times a partition's log went backwards: processed beyond its end, or offsets reused",
        labels=("topic", "partition", "kind"),
    ),
    "already_answered": _Spec(
        Counter,
        "streamrec_stream_already_answered_clicks_total",
        "Clicks redelivered after a restart that had been answered already (not answered again)",
    ),
    "loop_lag": _Spec(
        Histogram,
        "streamrec_worker_event_loop_lag_seconds",
        "How much later than asked the event loop woke a task sleeping 50 ms (time it spent elsewhere)",
        buckets=LATENCY_BUCKETS,
    ),
    "log_check_reads": _Spec(
        Counter,
        "streamrec_stream_log_check_records_total",
        "Records the log watch read back from the broker to check they are still held",
        labels=("topic",),
    ),
}
# The online trainer's metrics; every other one is the worker's.
TRAINER_FIELDS = frozenset(f for f, spec in SPECS.items() if spec.process == "trainer")

# Stages of a click micro-batch, in order; each has its own latency series.
STAGES = ("decode", "state", "encode", "search", "send")


THREAD_CPU = "streamrec_worker_thread_cpu_seconds"


class ThreadCpu:
    """CPU seconds used by each thread of this process, by thread name, read from /proc at each
    scrape: where a worker's CPU goes (its event loop, Faust's consumer thread, the compute thread)
    without a profiler attached. Threads Python does not know (torch's, FAISS's, RocksDB's) and
    threads that have ended count as "other". Nothing on systems without /proc."""

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            THREAD_CPU, "CPU seconds used by each thread of the worker process, by thread name", labels=("thread",)
        )
        whole = _cpu_seconds(Path("/proc/self/stat"))
        if whole is None:
            return
        named: dict[str, float] = {}
        for thread in threading.enumerate():
            used = _cpu_seconds(Path(f"/proc/self/task/{thread.native_id}/stat"))
            if used is not None:
                named[thread.name] = named.get(thread.name, 0.0) + used
        named["other"] = max(0.0, whole - sum(named.values()))
        for name, seconds in sorted(named.items()):
            family.add_metric([name], seconds)
        yield family


def _cpu_seconds(stat: Path) -> float | None:
    """User + system CPU seconds from a /proc stat file, None if it cannot be read."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def create_metrics(registry: CollectorRegistry, process: str = "worker") -> Metrics:
    """Every metric; those of `process` ("worker" or "trainer"; "all" for documentation checks)
    in `registry`, the others in a registry nobody exports, so each process shows only its own."""
    assert process in ("worker", "trainer", "all"), f"process {process!r} is worker, trainer or all"
    unexported = CollectorRegistry()
    made = {}
    for field_name, spec in SPECS.items():
        own = process in ("all", spec.process)
        extra: dict[str, Any] = {"buckets": spec.buckets} if spec.buckets is not None else {}
        made[field_name] = spec.kind(
            spec.name, spec.help, spec.labels, registry=registry if own else unexported, **extra
        )
    (registry if process in ("all", "worker") else unexported).register(ThreadCpu())
    return Metrics(**made)


def serve_metrics(
    registry: CollectorRegistry, port: int, host: str = "127.0.0.1", setting: str = "STREAMREC_METRICS_PORT"
) -> tuple[WSGIServer, int]:
    """Expose `registry` on http://host:port/metrics; port 0 picks a free one. A taken port is a
    UserError naming `setting`, the variable that chose it."""
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise port_in_use(exc, port, setting) or exc from exc
    return server, int(server.server_port)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of raw samples, nearest rank; NaN for none (the demo's and the
    benchmarks' summaries, which keep every sample rather than a histogram)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def scrape(url: str, timeout_s: float = 2.0) -> dict[str, float]:
    """Read a Prometheus text exposition into {"name{labels}": value} (for the demo and tests)."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - a 127.0.0.1 URL we built
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out
