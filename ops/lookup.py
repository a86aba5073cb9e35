"""Request-time lookup of a user's latest recommendations: `GET /users/{id}/recommendations` on the
worker's page server (STREAMREC_DASHBOARD_PORT, loopback by default).

The worker answers from the latest record it emitted for the user, kept for the
STREAMREC_LOOKUP_USERS most recently active users. Users are partitioned: a user whose clicks go to
a partition this worker does not hold is answered with the partition number, so a router can ask
the worker that holds it. The compacted `recommendations` topic holds every user's latest record
whatever the worker's memory (docs/topics.md).

Answers (JSON):
- 200: the recommendation record, exactly as on the topic (schemas/recommendations.v1.json);
- 404 `{"error": "not_held_here", "partition": p}`: another worker holds the user's partition;
- 404 `{"error": "no_recommendations", "partition": p}`: no click of the user reached this worker
  since it started, or the user was evicted from its memory.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka.partitioner import murmur2


def partition_of(user_id: str, partitions: int) -> int:
    """The clicks partition of a user: Kafka's default partitioner on the UTF-8 key, as every
    producer of this project (and the Java client) uses."""
    assert partitions > 0, "a topic has at least one partition"
    return (murmur2(user_id.encode("utf-8")) & 0x7FFFFFFF) % partitions


class LatestRecommendations:
    """The latest record per user, for the most recently active `keep_users` users. Records are
    RecommendationRecord-like (a `user_id`); `encode` turns one into the topic's bytes (passed in,
    so that ops/ does not import the stream wiring)."""

    def __init__(self, encode: Callable[[Any], bytes], keep_users: int, partitions: int) -> None:
        assert keep_users > 0, "keep at least one user"
        self.encode = encode
        self.keep_users = keep_users
        self.partitions = partitions
        # The clicks partitions this worker holds now (`hold`); None while unknown (before the first
        # assignment), in which case no user is said to be elsewhere.
        self.held: set[int] | None = None
        self._latest: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, recs: Sequence[Any]) -> None:
        with self._lock:
            for rec in recs:
                self._latest[rec.user_id] = rec
                self._latest.move_to_end(rec.user_id)
            while len(self._latest) > self.keep_users:
                self._latest.popitem(last=False)

    def hold(self, partitions: set[int]) -> None:
        """The clicks partitions this worker holds, as the app reports them once a second."""
        self.held = set(partitions)

    def answer(self, user_id: str) -> tuple[int, bytes]:
        """(HTTP status, JSON body) for `GET /users/{user_id}/recommendations`."""
        with self._lock:
            rec = self._latest.get(user_id)
        if rec is not None:
            return 200, self.encode(rec)
        partition = partition_of(user_id, self.partitions)
        held = self.held
        if held is not None and partition not in held:
            detail = f"user {user_id!r} is on clicks partition {partition}, which another worker holds"
            return 404, _error("not_held_here", partition, detail)
        detail = f"no recommendation for user {user_id!r} on this worker since it started (or evicted)"
        return 404, _error("no_recommendations", partition, detail)


def _error(code: str, partition: int, detail: str) -> bytes:
    return json.dumps({"error": code, "partition": partition, "detail": detail}).encode()
