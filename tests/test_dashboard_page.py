"""The local dashboard page: the series maths, and the real page in headless Chromium with live data."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.request import urlopen

import pytest
from prometheus_client import CollectorRegistry

from streamrec.datasets import load_dataset
from streamrec.ops.dashboard_page import LiveSeries, histogram_quantile, read_registry
from streamrec.ops.metrics import create_metrics
from streamrec.settings import Settings
from streamrec.stream.replay import make_producer, publish_clicks
from tests.helpers import boot


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    bounds = [0.1, 0.2, 0.4, math.inf]
    # 10 observations <= 0.1, 10 in (0.1, 0.2], 20 in (0.2, 0.4], none above.
    cumulative = [10, 20, 40, 40]
    assert histogram_quantile(0.25, bounds, cumulative) == pytest.approx(0.1)  # rank 10: top of bucket 1
    assert histogram_quantile(0.5, bounds, cumulative) == pytest.approx(0.2)  # rank 20
    assert histogram_quantile(0.75, bounds, cumulative) == pytest.approx(0.3)  # rank 30: half of (0.2, 0.4]
    assert histogram_quantile(0.05, bounds, cumulative) == pytest.approx(0.02)  # rank 2 of 10 in (0, 0.1]
    assert math.isnan(histogram_quantile(0.5, bounds, [0, 0, 0, 0]))
    # A quantile in the +inf bucket reports the largest finite bound, as Prometheus does.
    assert histogram_quantile(0.99, bounds, [0, 0, 1, 10]) == pytest.approx(0.4)


def test_live_series_derives_rates_and_windowed_quantiles_from_the_registry() -> None:
    registry = CollectorRegistry()
    m = create_metrics(registry)
    series = LiveSeries(points=5)
    series.add(read_registry(registry, at=100.0))
    m.recommendations.inc(50)
    for _ in range(50):
        m.freshness.observe(0.04)  # every observation in the (0.025, 0.05] bucket
    m.consumer_lag.labels("clicks", "0").set(7)
    m.consumer_lag.labels("clicks", "1").set(5)
    m.index_size.set(12)
    m.model_info.labels("v3").set(1)
    series.add(read_registry(registry, at=102.0))
    snap = series.snapshot()
    row = snap["series"][-1]
    assert row["throughput"] == pytest.approx(25.0)  # 50 in 2 s
    assert row["lag"] == 12  # summed over partitions
    assert 25.0 <= row["freshness_p50_ms"] <= 50.0
    assert row["freshness_p99_ms"] == pytest.approx(49.75, abs=0.06)  # 0.025 + 0.025 * 0.99, in ms to 0.1
    assert snap["model_version"] == "v3" and snap["index_size"] == 12
    for at in range(103, 110):
        series.add(read_registry(registry, at=float(at)))
    assert len(series.snapshot()["series"]) == 5, "history is bounded"
    assert series.snapshot()["series"][-1]["throughput"] == 0.0


def page_state(url: str) -> dict:
    with urlopen(url + "api/state", timeout=5) as resp:  # noqa: S310 - a loopback URL
        return json.loads(resp.read())


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Chromium is not installed: `make setup` installs Debian's chromium (ops/install_system_deps.sh)"
    return path


def render_dom(url: str, out_png: Path) -> str:
    """The page's DOM after its scripts ran for a few seconds, and a screenshot beside it."""
    common = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    common += ["--window-size=1280,900", "--virtual-time-budget=4000"]
    subprocess.run([*common, f"--screenshot={out_png}", url], check=True, capture_output=True, timeout=120)
    done = subprocess.run([*common, "--dump-dom", url], check=True, capture_output=True, timeout=120)
    return done.stdout.decode()


@pytest.mark.integration
def test_page_renders_live_charts_and_recommendations_in_chromium(stream_settings: Settings, tmp_path: Path) -> None:
    ds = load_dataset("ml-100k", stream_settings.data_dir)
    clicks = ds.events[:1200]
    worker = boot(stream_settings, tmp_path, ds.items)
    try:
        producer = make_producer(stream_settings.kafka_bootstrap)
        # Paced, so the one-second samples see several seconds of traffic.
        feeder = threading.Thread(target=publish_clicks, args=(producer, stream_settings.topics, clicks, 300, False))
        feeder.start()
        feeder.join(60)
        producer.close()
        worker.wait_until("streamrec_stream_recommendations_total", lambda v: v >= len(clicks), timeout_s=90)
        state = page_state(worker.dashboard_url)
        deadline = time.monotonic() + 10
        while state["recommendations_total"] < len(clicks):
            assert time.monotonic() < deadline, f"page saw {state['recommendations_total']} recommendations"
            time.sleep(0.5)
            state = page_state(worker.dashboard_url)
        assert max(r["throughput"] for r in state["series"]) > 0
        dom = render_dom(worker.dashboard_url, tmp_path / "dashboard.png")
    finally:
        worker.stop()
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000, "screenshot is empty"
    for chart in ("freshness", "throughput", "lag"):
        found = re.search(rf'id="chart-{chart}" data-points="(\d+)"', dom)
        assert found, f"chart {chart} missing from the rendered page"
        assert int(found.group(1)) >= 2, f"chart {chart} drew {found.group(1)} points"
    titles = {it.title for it in ds.items}
    rows = re.findall(r'<td class="titles">([^<]*)</td>', dom)
    assert rows, "no recent recommendations in the table"
    first = rows[0].replace("&amp;", "&").split(" · ")[0]
    assert first in titles, f"{first!r} is not a catalogue title"
    status = re.search(r'<div id="status">([^<]*)</div>', dom)
    assert status and status.group(1).startswith("model content-v1"), f"status line: {status and status.group(1)}"
    shutil.copy(tmp_path / "dashboard.png", Path(tempfile.gettempdir()) / "streamrec-dashboard.png")
