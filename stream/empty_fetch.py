"""A wait after each empty fetch, for brokers that answer a fetch at once when they have nothing.

Kafka holds a fetch that finds no new record for up to `fetch.max.wait.ms` (Faust asks for
1,500 ms) and answers as soon as a record arrives. noida-db, the local broker of the demo, tests
and benchmarks, answers at once (../shared/BROKER.md), so aiokafka's fetcher asks again and again:
measured, a worker with no click arriving used 0.75 of a core, nearly all of it in the fetch loop
of Faust's consumer thread (docs/operations.md, "Hot path"). On a 2-core machine that is the CPU the
model process and the compute thread need.

`wait_after_empty_fetches(ms)` makes every aiokafka consumer in this process wait `ms` after a
fetch that brought no record before it fetches from that broker again: at most 1000 / ms empty
fetches a second per broker, and a record that arrives meanwhile waits at most `ms` more. A fetch
that brought records is followed at once, as before, so a busy stream is not slowed. 0 turns it
off (a Kafka broker waits itself). One process-wide switch, because Faust creates its consumer
inside its own thread with no hook for the fetcher; aiokafka's own code is otherwise unchanged.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.consumer.fetcher import Fetcher

_original = Fetcher._proc_fetch_request
_wait_s = 0.0


async def _fetch_then_wait_if_empty(self: Fetcher, assignment: Any, node_id: int, request: Any) -> bool:
    # True when the fetch added records (aiokafka's own result); the routine that called us sends
    # the next fetch to this broker only after we return.
    got = await _original(self, assignment, node_id, request)
    if not got and _wait_s > 0:
        try:
            await asyncio.sleep(_wait_s)
        except asyncio.CancelledError:
            # As aiokafka's own fetch does when cancelled (the consumer closing, or the partitions
            # unassigned): the result is no longer of interest, and the fetch task ends quietly.
            return False
    return got


def wait_after_empty_fetches(ms: float) -> None:
    """Wait `ms` after every empty fetch of every aiokafka consumer in this process (0 = never)."""
    assert ms >= 0, "a wait cannot be negative"
    global _wait_s
    _wait_s = ms / 1000.0
    Fetcher._proc_fetch_request = _fetch_then_wait_if_empty  # type: ignore[method-assign]


def empty_fetch_wait_ms() -> float:
    """The wait in force (0 when off)."""
    return _wait_s * 1000.0 if Fetcher._proc_fetch_request is _fetch_then_wait_if_empty else 0.0
