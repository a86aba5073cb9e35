"""The event-loop lag probe records a stall of the loop as lag, and an idle loop as almost none."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry

from streamrec.ops.metrics import create_metrics
from streamrec.stream.loop_lag import probe_loop_lag


def lag_samples(registry: CollectorRegistry) -> tuple[float, float]:
    """(count, sum) of the lag histogram."""
    count = registry.get_sample_value("streamrec_worker_event_loop_lag_seconds_count") or 0.0
    total = registry.get_sample_value("streamrec_worker_event_loop_lag_seconds_sum") or 0.0
    return count, total


def test_a_stalled_loop_shows_as_lag_and_an_idle_one_does_not() -> None:
    registry = CollectorRegistry()
    metrics = create_metrics(registry)

    async def scenario() -> tuple[tuple[float, float], tuple[float, float]]:
        probe = asyncio.create_task(probe_loop_lag(metrics, probe_s=0.01))
        await asyncio.sleep(0.2)  # idle: the probe wakes on time
        idle = lag_samples(registry)
        time.sleep(0.3)  # a stall: something holds the loop without yielding
        await asyncio.sleep(0.05)
        stalled = lag_samples(registry)
        probe.cancel()
        return idle, stalled

    (n_idle, sum_idle), (n_all, sum_all) = asyncio.run(scenario())
    assert n_idle >= 5, "the probe wakes every 10 ms"
    assert sum_idle / n_idle < 0.05, "an idle loop wakes the probe about on time"
    assert sum_all - sum_idle >= 0.25, "the 300 ms stall is recorded as lag"
