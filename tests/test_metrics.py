"""Metrics come from one factory, follow the naming rule, and are served on 127.0.0.1."""

from __future__ import annotations

import io
import logging
import re
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from streamrec.ops.metrics import create_metrics, scrape, serve_metrics
from tests.helpers import promtool_check_metrics

NAME = re.compile(r"^streamrec_[a-z]+_[a-z_]+_(total|seconds|events|items|users|messages|info|ratio|per_second)$")


def test_names_follow_the_convention() -> None:
    registry = CollectorRegistry()
    create_metrics(registry, "all")
    families = list(registry.collect())
    assert len(families) >= 12
    for fam in families:
        # prometheus_client strips "_total" from a counter family's name.
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        assert NAME.match(name), name


def test_exporter_serves_values_on_loopback() -> None:
    registry = CollectorRegistry()
    m = create_metrics(registry)
    m.events_in.labels("clicks").inc(3)
    m.freshness.observe(0.12)
    m.index_size.set(42)
    server, port = serve_metrics(registry, 0)
    try:
        assert server.server_address[0] == "127.0.0.1"
        values = scrape(f"http://127.0.0.1:{port}/metrics")
        assert values['streamrec_stream_events_in_total{topic="clicks"}'] == 3
        assert values["streamrec_stream_freshness_seconds_count"] == 1
        assert values["streamrec_index_size_items"] == 42
    finally:
        server.shutdown()


def test_registries_are_independent() -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    create_metrics(a).recommendations.inc()
    create_metrics(b)
    assert a.get_sample_value("streamrec_stream_recommendations_total") == 1
    assert b.get_sample_value("streamrec_stream_recommendations_total") == 0


def flood(name: str, interval_s: float, write: Callable[[logging.Logger], None]) -> list[str]:
    """The lines a rate-limited handler lets through from what `write` logs to logger `name`."""
    from streamrec.ops.log_limit import RateLimitFilter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RateLimitFilter(interval_s=interval_s))
    log = logging.getLogger(name)
    log.propagate = False
    log.addHandler(handler)
    try:
        write(log)
    finally:
        log.removeHandler(handler)
    return stream.getvalue().splitlines()


def test_repeated_log_lines_are_rate_limited_with_a_count() -> None:
    def write(log: logging.Logger) -> None:
        for k in range(500):
            log.warning("broker %s unreachable", k)
        log.warning("another message")
        time.sleep(0.25)
        log.warning("broker %s unreachable", "again")

    # A library's retries: one line per template.
    assert flood("kafka.test.flood", 0.2, write) == [
        "broker 0 unreachable",
        "another message",
        "broker again unreachable [499 more like this in the last 0 s]",
    ]


def test_streamrecs_own_warnings_each_pass_and_only_identical_ones_are_limited() -> None:
    # Measured in `streamrec bench reliability --phases broker`: the worker's warning that partition
    # 2 lost answers was dropped as "like" the one for partition 3 a moment before.
    def write(log: logging.Logger) -> None:
        for part in range(4):
            log.warning("partition %d lost answers", part)
        for _ in range(100):
            log.warning("partition %d lost answers", 3)
        time.sleep(0.25)
        log.warning("partition %d lost answers", 3)

    assert flood("streamrec.test.facts", 0.2, write) == [
        "partition 0 lost answers",
        "partition 1 lost answers",
        "partition 2 lost answers",
        "partition 3 lost answers",
        "partition 3 lost answers [100 more like this in the last 0 s]",
    ]


def test_health_says_whether_every_agent_runs() -> None:
    import subprocess
    import sys

    registry = CollectorRegistry()
    m = create_metrics(registry)
    m.agent_up.labels("clicks").set(1)
    m.agent_up.labels("catalogue").set(1)
    server, port = serve_metrics(registry, 0)
    url = f"http://127.0.0.1:{port}/metrics"

    def health() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streamrec.cli", "health", "--url", url], capture_output=True, text=True
        )

    try:
        ok = health()
        m.agent_up.labels("clicks").set(0)
        down = health()
    finally:
        server.shutdown()
    gone = health()
    assert ok.returncode == 0 and "ok" in ok.stdout
    assert down.returncode == 1 and 'agent="clicks"' in down.stdout and "not consuming" in down.stdout
    assert gone.returncode == 1 and "STREAMREC_METRICS_PORT" in gone.stdout
    for proc in (ok, down, gone):
        assert len(proc.stdout.strip().splitlines()) == 1 and not proc.stderr.strip(), "one line, no traceback"


def test_each_process_exports_only_its_own_series_and_promtool_accepts_them() -> None:
    from prometheus_client import generate_latest

    from streamrec.ops.metrics import TRAINER_FIELDS

    names: dict[str, set[str]] = {}
    for process in ("worker", "trainer"):
        registry = CollectorRegistry()
        m = create_metrics(registry, process)
        # Touch every labelled family, so the exposition holds samples as a live process's does.
        m.events_in.labels("clicks").inc()
        m.gate_decisions.labels("promoted").inc()
        m.trainer_events.labels("clicks").inc()
        m.freshness.observe(0.05)
        assert promtool_check_metrics(generate_latest(registry)) == "", process
        names[process] = {fam.name for fam in registry.collect()}
    assert names["worker"] and names["trainer"] and not names["worker"] & names["trainer"]
    assert all(n.startswith("streamrec_trainer_") for n in names["trainer"]), names["trainer"]
    assert len(names["trainer"]) == len(TRAINER_FIELDS)


def test_thread_cpu_names_the_thread_that_used_the_cpu() -> None:
    from streamrec.ops.metrics import THREAD_CPU, ThreadCpu

    done = threading.Event()

    def burn() -> None:
        while time.thread_time() < 0.2:  # this thread's own CPU time, however busy the machine
            pass
        done.set()
        time.sleep(2)  # alive while the test reads it

    burner = threading.Thread(target=burn, name="burner", daemon=True)
    burner.start()
    assert done.wait(30)
    (family,) = list(ThreadCpu().collect())
    assert family.name == THREAD_CPU
    used = {s.labels["thread"]: s.value for s in family.samples if s.name == THREAD_CPU + "_total"}
    assert used["burner"] >= 0.15, used  # /proc counts in clock ticks (10 ms)
    assert {"MainThread", "other"} <= set(used)
    assert all(v >= 0 for v in used.values())
