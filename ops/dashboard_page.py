"""The local dashboard page: live charts of freshness, throughput and lag, and recent recommendations.

Without Docker there is no Grafana, so each worker serves this page on 127.0.0.1 (setting
STREAMREC_DASHBOARD_PORT). A sampler thread reads the worker's own Prometheus registry once a
second and keeps a short history of derived series, computed the way the Grafana dashboard's
queries compute them (rates of counters, `histogram_quantile` over bucket deltas):

    /            the page (ops/dashboard.html, plain canvas drawing, nothing fetched from the web)
    /api/state   JSON: the series, the latest recommendations with item titles, model and index
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import unquote

from prometheus_client import CollectorRegistry

from streamrec.errors import port_in_use

# Freshness quantiles are computed over this many seconds of bucket deltas, as a Prometheus
# `rate(...[10s])` would: one-second windows hold too few clicks at low rates to be readable.
QUANTILE_WINDOW_S = 10


def histogram_quantile(q: float, bounds: Sequence[float], cumulative: Sequence[float]) -> float:
    """Prometheus' estimate: linear interpolation inside the bucket holding the q-th observation.

    bounds: upper bounds in increasing order (the last may be +inf); cumulative: counts <= bound.
    Returns NaN with no observations; the last finite bound when the quantile falls in +inf.
    """
    assert len(bounds) == len(cumulative) and len(bounds) > 0, "one count per bucket bound"
    total = cumulative[-1]
    if total <= 0:
        return math.nan
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(bounds, cumulative, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


@dataclass(frozen=True)
class Reading:
    """What the sampler takes from the registry at one instant."""

    at: float
    recommendations: float
    dead_letters: float
    lag: float
    freshness_buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count)
    index_size: float
    model_version: str


def read_registry(registry: CollectorRegistry, at: float) -> Reading:
    recs = dead = lag = index = 0.0
    version = ""
    buckets: list[tuple[float, float]] = []
    for family in registry.collect():
        for s in family.samples:
            if s.name == "streamrec_stream_recommendations_total":
                recs += s.value
            elif s.name == "streamrec_stream_dead_letters_total":
                dead += s.value
            elif s.name == "streamrec_stream_consumer_lag_messages":
                lag += s.value
            elif s.name == "streamrec_index_size_items":
                index = s.value
            elif s.name == "streamrec_model_version_info" and s.value == 1:
                version = s.labels["version"]
            elif s.name == "streamrec_stream_freshness_seconds_bucket":
                buckets.append((float(s.labels["le"]), s.value))
    buckets.sort()
    return Reading(at, recs, dead, lag, tuple(buckets), index, version)


class LiveSeries:
    """A rolling history of derived series, fed one `Reading` at a time."""

    def __init__(self, points: int = 300) -> None:
        self.readings: deque[Reading] = deque(maxlen=points + QUANTILE_WINDOW_S)
        self.points = points
        self.rows: deque[dict[str, float | None]] = deque(maxlen=points)

    def add(self, reading: Reading) -> None:
        if self.readings:
            prev = self.readings[-1]
            dt = max(1e-6, reading.at - prev.at)
            base = self.readings[max(0, len(self.readings) - QUANTILE_WINDOW_S)]
            p50, p99 = self._freshness(base, reading)
            self.rows.append(
                {
                    "t": round(reading.at, 3),
                    "throughput": round((reading.recommendations - prev.recommendations) / dt, 2),
                    "dead_letters": round((reading.dead_letters - prev.dead_letters) / dt, 3),
                    "lag": reading.lag,
                    "freshness_p50_ms": p50,
                    "freshness_p99_ms": p99,
                }
            )
        self.readings.append(reading)

    @staticmethod
    def _freshness(base: Reading, now: Reading) -> tuple[float | None, float | None]:
        old = dict(base.freshness_buckets)
        bounds = [b for b, _ in now.freshness_buckets]
        delta = [c - old.get(b, 0.0) for b, c in now.freshness_buckets]
        if not bounds or delta[-1] <= 0:
            return None, None
        return (
            round(1000 * histogram_quantile(0.5, bounds, delta), 1),
            round(1000 * histogram_quantile(0.99, bounds, delta), 1),
        )

    def snapshot(self) -> dict[str, Any]:
        latest = self.readings[-1] if self.readings else None
        return {
            "series": list(self.rows),
            "model_version": latest.model_version if latest else "",
            "index_size": latest.index_size if latest else 0,
            "recommendations_total": latest.recommendations if latest else 0,
        }


class RecentRecommendations:
    """The last few recommendations, with titles, for the page's table."""

    def __init__(self, title_of: Callable[[str], str], keep: int = 15) -> None:
        self.title_of = title_of
        self.items: deque[dict[str, Any]] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def add(self, recs: Sequence[Any]) -> None:
        """recs: RecommendationRecord-like objects (user_id, items, model_version, event_time, emitted_at)."""
        # Only the tail of a big batch can ever be shown; titling all of it would cost the agent.
        tail = list(recs[-self.items.maxlen :]) if self.items.maxlen else []
        rows = [
            {
                "user": r.user_id,
                "titles": [self.title_of(i.item_id) for i in r.items[:5]],
                "freshness_ms": max(0, r.emitted_at - r.event_time),
                "model_version": r.model_version,
                "emitted_at": r.emitted_at,
            }
            for r in tail
        ]
        with self._lock:
            self.items.extend(rows)

    def latest(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(reversed(self.items))


def _user_of(path: str) -> str | None:
    """The user id of `/users/{id}/recommendations` (percent-decoded), else None."""
    parts = path.split("?", 1)[0].split("/")
    if len(parts) == 4 and parts[0] == "" and parts[1] == "users" and parts[3] == "recommendations" and parts[2]:
        return unquote(parts[2])
    return None


class DashboardServer:
    """Serves the page and its JSON on 127.0.0.1, sampling `registry` once a second."""

    def __init__(
        self,
        registry: CollectorRegistry,
        recent: RecentRecommendations,
        port: int = 0,
        host: str = "127.0.0.1",
        interval_s: float = 1.0,
        lookup: Callable[[str], tuple[int, bytes]] | None = None,
    ) -> None:
        self.registry = registry
        self.recent = recent
        self.series = LiveSeries()
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        page = resources.files("streamrec.ops").joinpath("dashboard.html").read_bytes()
        handler = _handler(page, self.state_json, lookup)
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise port_in_use(exc, port, "STREAMREC_DASHBOARD_PORT", zero="turn the page off") or exc from exc
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://{host}:{self.port}/"

    def state_json(self) -> bytes:
        with self._lock:
            state = self.series.snapshot()
        state["recent"] = self.recent.latest()
        return json.dumps(state).encode()

    def _sample_forever(self) -> None:
        while not self._stop.is_set():
            reading = read_registry(self.registry, time.time())
            with self._lock:
                self.series.add(reading)
            self._stop.wait(self.interval_s)

    def start(self) -> DashboardServer:
        threading.Thread(target=self._sample_forever, name="dashboard-sampler", daemon=True).start()
        threading.Thread(target=self.httpd.serve_forever, name="dashboard-http", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(
    page: bytes, state: Callable[[], bytes], lookup: Callable[[str], tuple[int, bytes]] | None
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
            user = _user_of(self.path)
            if self.path in ("/", "/index.html"):
                self._send(200, "text/html; charset=utf-8", page)
            elif self.path.startswith("/api/state"):
                self._send(200, "application/json", state())
            elif user is not None and lookup is not None:
                code, body = lookup(user)
                self._send(code, "application/json", body)
            else:
                self._send(404, "text/plain", b"not found\n")

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
            """Requests are not logged: the page polls every second."""

    return Handler
