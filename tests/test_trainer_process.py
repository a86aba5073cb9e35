"""`streamrec trainer` as a process beside a worker: it learns from the stream, promotes, and the
worker serves the promoted version without a restart."""

from __future__ import annotations

from pathlib import Path
from urllib.request import urlopen

import pytest

from streamrec.bench.online import online_round_trip
from streamrec.local.processes import WorkerProcess
from streamrec.settings import Settings
from tests.helpers import promtool_check_metrics, small_checkpoint

pytestmark = pytest.mark.integration


def test_the_trainer_promotes_from_the_stream_and_the_worker_serves_it(
    stream_settings: Settings, tmp_path: Path
) -> None:
    ckpt = small_checkpoint(tmp_path / "base.pt", "trainer-base", seed=3)
    complaints: dict[str, str] = {}

    def check_expositions(worker: WorkerProcess, trainer: WorkerProcess) -> None:
        for name, process in (("worker", worker), ("trainer", trainer)):
            with urlopen(process.metrics_url, timeout=5) as resp:
                complaints[name] = promtool_check_metrics(resp.read())

    # The first 3,000 clicks of MovieLens-100K hold 35 users with 3+ clicks: enough for the gate.
    out = online_round_trip(
        stream_settings, ckpt, "ml-100k", every=3000, rate=500.0, clicks=4000, workdir=tmp_path, timeout_s=240,
        while_running=check_expositions,
    )  # fmt: skip
    assert complaints == {"worker": "", "trainer": ""}, "promtool accepts a live worker's and trainer's metrics"
    assert out["promoted_version"] != "trainer-base", "the fine-tuned candidate passed the gate"
    gate = out["gate"]
    assert gate["eval_users"] >= 30 and gate["candidate_ndcg10"] >= gate["serving_ndcg10"] * (1 - 0.02)
    assert out["answered"] == out["clicks"], "no click lost across the swap"
    assert out["versions_after_switch"] == [out["promoted_version"]], "clicks after the switch get the new model"
    assert "trainer-base" in out["versions_served"]
    assert out["swaps"] == 1 and out["fine_tune_sequences_per_s"] > 0
    assert out["event_to_served_s"] is not None and out["event_to_served_s"] > 0
