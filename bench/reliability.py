"""`streamrec bench reliability`: what kills, a broker outage and a burst of malformed input do.

Three phases on one fresh local broker, each with its own topics and worker state:
  1. kills: clicks replayed at `--rate` while the worker is SIGKILLed `--kills` times and
     restarted at once. Reports lost clicks (published, acknowledged, never answered), duplicate
     answers per kill, restart-to-first-answer (process start to the first recommendation the new
     process emitted), and whether every user's stored sequence is exact afterwards.
  2. broker stop: the broker is stopped for `--broker-stop-s` in the middle of a replay and
     started again. Reports clicks the broker acknowledged but no longer has (its loss, not the
     worker's), clicks in the log never answered (from a fresh read of the recommendations topic
     after the phase: the broker loses answers too, and the worker writes them again at offsets
     a long-running consumer has already passed), the worker's recovery time and the
     discontinuities it noticed.
  3. fuzz: `--bad` malformed messages of every kind in bench/malformed.py, on clicks, catalogue
     and models, between `--good` valid clicks, sent as one burst. Reports the share of malformed
     messages dead-lettered with a reason, and the share of valid clicks answered.
A stall is a phase after which clicks present in the log stayed unanswered (and not dead-lettered)
for `--drain-s`, or the worker process was gone. Prints a table and writes JSON with the machine's
load, the commit and the command.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamrec.bench.machine import code_version, machine_load
from streamrec.bench.malformed import kinds_for, valid_announcement, valid_catalogue, valid_click
from streamrec.datasets import load_dataset
from streamrec.datasets.schema import Dataset, Event
from streamrec.local.broker import LocalBroker, free_port
from streamrec.local.processes import WorkerProcess, start_worker
from streamrec.settings import Settings, TopicNames
from streamrec.state.sequence_store import RocksSequenceStore
from streamrec.stream.replay import DeliveryError, make_producer, publish_catalogue, publish_clicks
from streamrec.stream.schemas import now_ms
from streamrec.stream.topics import ensure_topics_for
from streamrec.stream.worker import worker_state_dir


class Collector(threading.Thread):
    """Reads every partition of a topic from the beginning until stopped, keeping the JSON records."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.records: list[dict] = []
        self._halt = threading.Event()
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        parts = self.consumer.partitions_for_topic(topic)
        assert parts, f"topic {topic} has no partitions"
        self.consumer.assign([TopicPartition(topic, p) for p in parts])
        self.consumer.seek_to_beginning()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                batches = self.consumer.poll(timeout_ms=200, max_records=10_000)
            except Exception:  # noqa: BLE001 - the broker-stop phase makes polls fail for a while
                time.sleep(0.5)
                continue
            self.records += [json.loads(m.value) for msgs in batches.values() for m in msgs]

    def stop(self) -> list[dict]:
        self._halt.set()
        self.join(10)
        self.consumer.close()
        return self.records


REPEAT_METRICS = (
    "streamrec_state_duplicate_clicks_total",
    "streamrec_stream_already_answered_clicks_total",
    "streamrec_state_caught_up_clicks_total",
)


def read_log(bootstrap: str, topic: str) -> list[tuple[int, int, bytes]]:
    """(partition, offset, value) of everything the topic holds now."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, consumer_timeout_ms=2000
    )
    parts = sorted(consumer.partitions_for_topic(topic) or ())
    tps = [TopicPartition(topic, p) for p in parts]
    consumer.assign(tps)
    consumer.seek_to_beginning()
    ends = consumer.end_offsets(tps)
    out: list[tuple[int, int, bytes]] = []
    for m in consumer:
        out.append((m.partition, m.offset, m.value))
        if all(consumer.position(tp) >= ends[tp] for tp in tps):
            break
    consumer.close()
    return out


def event_ids(log: list[tuple[int, int, bytes]]) -> set[str]:
    ids = set()
    for _, _, value in log:
        try:
            ids.add(json.loads(value)["event_id"])
        except (ValueError, KeyError, TypeError):
            continue
    return ids


def wait_for(predicate: Any, timeout_s: float, step_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return predicate()


def phase_settings(base: Settings, name: str, workdir: Path) -> Settings:
    return replace(
        base,
        topics=TopicNames(f"{name}-"),
        app_id=f"bench-{name}",
        worker_id=f"{name}-1",
        state_dir=workdir / name,
        metrics_port=free_port(),
        dashboard_port=0,
    )


def boot(settings: Settings, dataset: Dataset, log: Path) -> WorkerProcess:
    ensure_topics_for(settings)
    producer = make_producer(settings.kafka_bootstrap)
    n = publish_catalogue(producer, settings.topics, dataset.items)
    producer.close()
    worker = start_worker(settings, log)
    worker.wait_until("streamrec_index_size_items", lambda v: v >= n, timeout_s=120)
    return worker


class Feeder(threading.Thread):
    """Publishes clicks at a rate, recording what the broker did not acknowledge. With `until`
    set, it goes through the events again and again (event ids made unique per pass) until the
    event is set, so that clicks keep arriving however long the phase lasts."""

    def __init__(self, settings: Settings, events: list, rate: float, until: threading.Event | None = None) -> None:
        super().__init__(daemon=True)
        self.settings, self.events, self.rate, self.until = settings, events, rate, until
        self.failed = 0
        self.error = ""
        self.published: list[Event] = []

    def run(self) -> None:
        producer = make_producer(self.settings.kafka_bootstrap)
        try:
            if self.until is None:
                self.published = list(self.events)
                publish_clicks(producer, self.settings.topics, self.events, self.rate, progress=False)
                return
            npass = 0
            while not self.until.is_set():
                batch = [replace(e, event_id=f"{e.event_id}~{npass}") for e in self.events]
                sent = publish_clicks(
                    producer, self.settings.topics, batch, self.rate, progress=False, should_stop=self.until.is_set
                )
                self.published += batch[:sent]
                npass += 1
        except DeliveryError as exc:
            self.failed, self.error = exc.failed, str(exc)
        finally:
            producer.close()


def first_answer_after(records: list[dict], t0: float) -> float | None:
    after = [r["emitted_at"] / 1000.0 for r in records if r["emitted_at"] / 1000.0 >= t0]
    return min(after) - t0 if after else None


def kill_serving_child(worker: WorkerProcess) -> None:
    """SIGKILL the serving process of a pre-forking worker (its supervisor forks a new one)."""
    children = psutil.Process(worker.proc.pid).children()
    assert len(children) == 1, f"a pre-forking worker has one serving child, found {len(children)}"
    children[0].kill()
    children[0].wait(10)


def phase_kills(base: Settings, ds: Dataset, workdir: Path, args: argparse.Namespace, prefork: bool = False) -> dict:
    """SIGKILLs of a worker during a replay. Cold (`prefork` False): the whole process is killed and
    a new one started, as an orchestrator would. Pre-forked: the serving child is killed and its
    supervisor forks a new one; the restart is timed from the kill."""
    name = "killpf" if prefork else "kill"
    settings = replace(phase_settings(base, name, workdir), worker_prefork=prefork)
    worker = boot(settings, ds, workdir / f"{name}-0.log")
    recs = Collector(settings.kafka_bootstrap, settings.topics.recommendations)
    dead = Collector(settings.kafka_bootstrap, settings.topics.dead_letters)
    recs.start()
    dead.start()
    # Clicks keep arriving until the last restart has answered, however long restarts take.
    done = threading.Event()
    feeder = Feeder(settings, ds.events[: args.clicks], args.rate, until=done)
    feeder.start()
    interval = args.clicks / args.rate / (args.kills + 1)
    restarts: list[float] = []
    exit_codes: list[int | None] = []
    for k in range(args.kills):
        # Each restart answers before the next kill, so every restart is timed on its own (a
        # worker killed before its first answer would pass its wait on to the next one).
        if restarts:
            wait_for(lambda: first_answer_after(recs.records, restarts[-1]) is not None, args.drain_s)
        time.sleep(interval)
        if prefork:
            kill_serving_child(worker)
            restarts.append(time.time())
            continue
        worker.kill()
        exit_codes.append(worker.proc.returncode)
        started = time.time()
        worker = start_worker(settings, workdir / f"{name}-{k + 1}.log")
        restarts.append(started)
    wait_for(lambda: first_answer_after(recs.records, restarts[-1]) is not None, args.drain_s)
    done.set()
    feeder.join()
    events = feeder.published
    wanted = {e.event_id for e in events}
    answered = wait_for(lambda: wanted <= {r["event_id"] for r in recs.records}, args.drain_s)
    alive = worker.proc.poll() is None
    metrics = worker.metrics() if alive else {}
    worker.stop()
    records = recs.stop()
    letters = dead.stop()
    got = [r["event_id"] for r in records]
    restart_s = [first_answer_after(records, t) for t in restarts]
    # Every user's sequence exactly as published (per-key order is kept by the partitioning).
    expected: dict[str, list[str]] = {}
    for e in events:
        expected.setdefault(e.user_id, []).append(e.item_id)
    store = RocksSequenceStore(worker_state_dir(settings) / "sequences", max_len=settings.max_seq_len)
    try:
        wrong = sum(1 for user, items in expected.items() if store.sequence(user) != items[-store.max_len :])
    finally:
        store.close()
    measured = [s for s in restart_s if s is not None]
    return {
        "restart": "serving child killed, supervisor forks a new one" if prefork else "process killed, new process",
        "clicks": len(events),
        "rate": args.rate,
        "kills": args.kills,
        "not_acknowledged_by_broker": feeder.failed,
        "lost": len(wanted - set(got)),
        "duplicates": len(got) - len(set(got)),
        "duplicates_per_kill": round((len(got) - len(set(got))) / max(1, args.kills), 1),
        "already_answered_skipped": metrics.get("streamrec_stream_already_answered_clicks_total", 0.0),
        "restart_to_first_answer_s": [None if s is None else round(s, 3) for s in restart_s],
        "restart_p50_s": round(sorted(measured)[len(measured) // 2], 3) if measured else None,
        "restart_max_s": round(max(measured), 3) if measured else None,
        "users_with_wrong_sequence": wrong,
        "dead_letters_by_reason": dict(Counter(d["reason"] for d in letters)),
        "stalls": int(not answered) + int(not alive),
        "batch_size": settings.batch_size,
        "partitions": settings.partitions,
    }


def phase_broker_stop(
    base: Settings, ds: Dataset, broker: LocalBroker, workdir: Path, args: argparse.Namespace
) -> dict:
    settings = phase_settings(base, "brk", workdir)
    worker = boot(settings, ds, workdir / "brk.log")
    recs = Collector(settings.kafka_bootstrap, settings.topics.recommendations)
    recs.start()
    events = ds.events[args.clicks : args.clicks + args.broker_clicks]
    feeder = Feeder(settings, events, args.rate)
    feeder.start()
    time.sleep(len(events) / args.rate / 2)
    broker.stop()
    down_at = time.time()
    time.sleep(args.broker_stop_s)
    broker.start()
    up_at = time.time()
    feeder.join()
    in_log = event_ids(read_log(settings.kafka_bootstrap, settings.topics.clicks))

    def answered_now() -> set[str]:
        # A fresh read of the whole topic: a consumer that lived through the broker's data loss
        # (like the collector) misses answers written again at reused offsets, as any would.
        return event_ids(read_log(settings.kafka_bootstrap, settings.topics.recommendations))

    answered = wait_for(lambda: in_log <= answered_now(), args.drain_s, step_s=5.0)
    alive = worker.proc.poll() is None
    metrics = worker.metrics() if alive else {}
    worker.stop()
    records = recs.stop()
    got = answered_now()
    acked = {e.event_id for e in events}  # minus the sends that failed, which are counted apart
    # Of the clicks never answered: those the worker's state holds were handled, and their answer
    # was lost by the broker with the rest of what it lost (or never sent).
    user_of = {e.event_id: e.user_id for e in events}
    store = RocksSequenceStore(worker_state_dir(settings) / "sequences", max_len=settings.max_seq_len)
    try:
        applied_unanswered = sum(1 for ev in in_log - got if store.has_event(user_of[ev], ev))
    finally:
        store.close()
    discontinuities = {k: v for k, v in metrics.items() if k.startswith("streamrec_stream_log_discontinuities_total")}
    # What the worker did with clicks it had seen before: answered again, or not (the journal said
    # their offsets were answered and the state held their event ids).
    repeats = {k: v for k, v in metrics.items() if k.startswith(REPEAT_METRICS)}
    recovery = first_answer_after(records, up_at)
    return {
        "clicks": len(events),
        "broker_down_s": round(up_at - down_at, 1),
        "not_acknowledged_by_broker": feeder.failed,
        "acknowledged_but_not_in_log": max(0, len(acked - in_log) - feeder.failed),
        "in_log": len(in_log),
        "lost": len(in_log - got),
        "lost_but_applied_to_state": applied_unanswered,
        "first_answer_after_broker_up_s": None if recovery is None else round(recovery, 2),
        "discontinuities": discontinuities,
        "repeats": repeats,
        "worker_alive": alive,
        "stalls": int(not answered) + int(not alive),
    }


def phase_fuzz(base: Settings, ds: Dataset, workdir: Path, args: argparse.Namespace) -> dict:
    settings = phase_settings(base, "fz", workdir)
    worker = boot(settings, ds, workdir / "fz.log")
    dead = Collector(settings.kafka_bootstrap, settings.topics.dead_letters)
    recs = Collector(settings.kafka_bootstrap, settings.topics.recommendations)
    dead.start()
    recs.start()
    now = now_ms()
    items = [i.item_id for i in ds.items]
    n_models = max(1, args.bad // 20)
    n_catalogue = max(1, args.bad // 10)
    plan: list[tuple[str, str, bytes, bytes]] = []  # (kind, topic, key, value)
    for topic_kind, n, topic in [
        ("click", args.bad - n_models - n_catalogue, settings.topics.clicks),
        ("catalogue", n_catalogue, settings.topics.catalogue),
        ("models", n_models, settings.topics.models),
    ]:
        kinds = kinds_for(topic_kind)
        for k in range(n):
            name, make = kinds[k % len(kinds)]
            if topic_kind == "click":
                good = valid_click(k, items[k % len(items)], now)
            elif topic_kind == "catalogue":
                good = valid_catalogue(k, now)
            else:
                good = valid_announcement(k, now)
            plan.append((f"{topic_kind}:{name}", topic, f"fuzz-{k % 97}".encode(), make(k, good)))
    valid = ds.events[: args.good]
    # Valid clicks spread evenly between the malformed messages.
    step = max(1, len(plan) // max(1, len(valid)))
    mixed: list[tuple[str, str, bytes, bytes]] = []
    for i, e in enumerate(valid):
        mixed += plan[i * step : (i + 1) * step]
        body = json.dumps(
            {"v": 1, "event_id": e.event_id, "user_id": e.user_id, "item_id": e.item_id, "event_time": now_ms()}
        ).encode()
        mixed.append(("valid", settings.topics.clicks, e.user_id.encode(), body))
    mixed += plan[len(valid) * step :]
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, linger_ms=5, max_request_size=4 * 1024 * 1024, acks=1
    )
    futures = [(kind, producer.send(topic, key=key, value=value)) for kind, topic, key, value in mixed]
    producer.flush()
    sent_bad: dict[tuple[str, int, int], str] = {}
    not_sent = 0
    for kind, fut in futures:
        if kind == "valid":
            continue
        try:
            meta = fut.get(timeout=30)
        except Exception:  # noqa: BLE001 - a message the broker refused never reached the worker
            not_sent += 1
            continue
        sent_bad[(meta.topic, meta.partition, meta.offset)] = kind
    producer.close()
    wanted = {e.event_id for e in valid}

    def done() -> bool:
        letters = {(d["source_topic"], d["partition"], d["offset"]) for d in dead.records}
        return set(sent_bad) <= letters and wanted <= {r["event_id"] for r in recs.records}

    wait_for(done, args.drain_s)
    alive = worker.proc.poll() is None
    worker.stop()
    letters = {(d["source_topic"], d["partition"], d["offset"]): d for d in dead.stop()}
    answered = {r["event_id"] for r in recs.stop()}
    missing: dict[str, int] = {}
    for key, kind in sent_bad.items():
        if key not in letters or not letters[key]["reason"]:
            missing[kind] = missing.get(kind, 0) + 1
    covered = len(sent_bad) - sum(missing.values())
    return {
        "malformed_sent": len(sent_bad),
        "malformed_refused_by_broker": not_sent,
        "kinds": len(set(sent_bad.values())),
        "dead_lettered_with_reason": covered,
        "dead_letter_coverage": round(covered / max(1, len(sent_bad)), 4),
        "missing_by_kind": missing,
        "valid_clicks": len(valid),
        "valid_answered": len(wanted & answered),
        "worker_alive": alive,
        "stalls": int(len(wanted & answered) < len(wanted)) + int(not alive),
    }


def run_reliability_bench(base: Settings, args: argparse.Namespace) -> int:
    machine_before = machine_load()
    workdir = Path(tempfile.mkdtemp(prefix="reliability-", dir=base.state_dir if base.state_dir.is_dir() else None))
    broker = LocalBroker(workdir / "broker", free_port()).start()
    settings = replace(base, kafka_bootstrap=broker.bootstrap, partitions=args.partitions)
    ds = load_dataset(args.dataset, settings.data_dir)
    result: dict[str, Any] = {
        "command": " ".join(["streamrec", *sys.argv[1:]]),
        "commit": code_version(),
        "dataset": args.dataset,
        "machine_before": machine_before,
    }
    try:
        phases = [p.strip() for p in args.phases.split(",")]
        if "kills" in phases:
            result["kills"] = phase_kills(settings, ds, workdir, args)
        if "kills-prefork" in phases:
            result["kills_prefork"] = phase_kills(settings, ds, workdir, args, prefork=True)
        if "broker" in phases:
            result["broker_stop"] = phase_broker_stop(settings, ds, broker, workdir, args)
        if "fuzz" in phases:
            result["fuzz"] = phase_fuzz(settings, ds, workdir, args)
    finally:
        if broker.running():
            broker.stop()
        result["machine_after"] = machine_load()
        if args.keep:
            print(f"logs and state kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    result["targets"] = targets(result)
    print_table(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def targets(result: dict) -> dict[str, object]:
    """Each target of issue 14 with the figure it is judged on and whether it is met."""
    out: dict[str, object] = {}
    kills, brk, fuzz = result.get("kills"), result.get("broker_stop"), result.get("fuzz")
    prefork = result.get("kills_prefork")
    phases = [p for p in (kills, prefork, brk, fuzz) if p]
    out["lost == 0"] = all(p.get("lost", 0) == 0 for p in phases)
    out["stalls == 0"] = all(p["stalls"] == 0 for p in phases)
    if fuzz:
        out["dead-letter coverage == 100%"] = fuzz["dead_letter_coverage"] == 1.0
    if kills:
        out["restart p50 <= 2 s"] = kills["restart_p50_s"] is not None and kills["restart_p50_s"] <= 2.0
        bound = kills["batch_size"] * kills["partitions"]
        out[f"duplicates per kill <= one micro-batch per partition ({bound})"] = kills["duplicates_per_kill"] <= bound
    if prefork:
        out["restart p50 <= 2 s (pre-forked)"] = (
            prefork["restart_p50_s"] is not None and prefork["restart_p50_s"] <= 2.0
        )
    return out


def print_table(result: dict) -> None:
    load = result["machine_before"]
    print(
        f"\nreliability, {result['dataset']}, commit {result['commit']}; load before {load['loadavg_1_5_15']}, "
        f"other processes {load['other_processes_cpu_percent']}% of a core"
        + (" (BUSY machine)" if load["busy"] else "")
    )
    rows: list[tuple[str, object]] = []
    for key, label in (("kills", "kills"), ("kills_prefork", "kills, pre-forked")):
        if key not in result:
            continue
        k = result[key]
        rows += [
            (f"{label}: clicks / SIGKILLs", f"{k['clicks']} at {k['rate']}/s / {k['kills']}"),
            (f"{label}: lost", k["lost"]),
            (f"{label}: duplicates (per kill)", f"{k['duplicates']} ({k['duplicates_per_kill']})"),
            (f"{label}: restart to first answer p50 / max", f"{k['restart_p50_s']} s / {k['restart_max_s']} s"),
            (f"{label}: users with a wrong sequence", k["users_with_wrong_sequence"]),
            (f"{label}: dead letters (valid input)", k["dead_letters_by_reason"] or 0),
            (f"{label}: stalls", k["stalls"]),
        ]
    if "broker_stop" in result:
        b = result["broker_stop"]
        rows += [
            ("broker stop: down for", f"{b['broker_down_s']} s"),
            (
                "broker stop: not acknowledged / acked but lost by broker",
                f"{b['not_acknowledged_by_broker']} / {b['acknowledged_but_not_in_log']}",
            ),
            ("broker stop: clicks in log never answered", b["lost"]),
            ("broker stop: first answer after broker up", f"{b['first_answer_after_broker_up_s']} s"),
            ("broker stop: discontinuities noticed", sum(b["discontinuities"].values())),
            ("broker stop: stalls", b["stalls"]),
        ]
    if "fuzz" in result:
        f = result["fuzz"]
        rows += [
            ("fuzz: malformed sent (kinds)", f"{f['malformed_sent']} ({f['kinds']})"),
            (
                "fuzz: dead-lettered with a reason",
                f"{f['dead_lettered_with_reason']} ({100 * f['dead_letter_coverage']:.2f}%)",
            ),
            ("fuzz: valid clicks answered", f"{f['valid_answered']} / {f['valid_clicks']}"),
            ("fuzz: stalls", f["stalls"]),
        ]
    width = max(len(r[0]) for r in rows) if rows else 10
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print("targets:")
    for name, met in result["targets"].items():
        print(f"  {'MET   ' if met else 'MISSED'} {name}")
