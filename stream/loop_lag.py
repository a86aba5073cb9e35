"""How late the worker's event loop runs what is due: a probe for stalls that no stage timer sees.

A task asks to sleep `PROBE_S` and records how much later than that it woke
(`streamrec_worker_event_loop_lag_seconds`). The event loop fetches, sends, acknowledges and
runs the log watch and Faust's own services; while any of them holds the loop without yielding,
every click waiting on the loop waits too. A freshness p99 well above the stage times with a high
lag p99 points at the loop; a low lag p99 points elsewhere (the compute thread, the model
process, the broker, the machine).
"""

from __future__ import annotations

import asyncio

from streamrec.ops.metrics import Metrics

PROBE_S = 0.05  # often enough to catch stalls of a few tens of ms, rare enough to cost nothing


async def probe_loop_lag(metrics: Metrics, probe_s: float = PROBE_S) -> None:
    """Forever: sleep `probe_s`, record how late the wake-up came."""
    assert probe_s > 0, "the probe must sleep"
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time()
        await asyncio.sleep(probe_s)
        metrics.loop_lag.observe(max(0.0, loop.time() - asked - probe_s))
