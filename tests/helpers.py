"""Helpers shared by several test modules (not tests themselves): start a worker with a
published catalogue, read recommendations until a condition holds, make a small checkpoint, run
`promtool check metrics`, publish clicks as fast as possible."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

from streamrec.datasets import load_dataset
from streamrec.features import build_catalog
from streamrec.local.processes import WorkerProcess, start_worker
from streamrec.models.checkpoint import save_checkpoint
from streamrec.models.presets import build_config
from streamrec.models.seqrec import SeqRec
from streamrec.settings import Settings
from streamrec.stream.rec_consumer import RecommendationReader
from streamrec.stream.replay import make_producer, publish_catalogue, publish_clicks
from streamrec.stream.schemas import RecommendationRecord
from streamrec.stream.topics import ensure_topics_for


def read_until(
    reader: RecommendationReader, done: Callable[[list[RecommendationRecord]], bool], timeout_s: float = 90
) -> list[RecommendationRecord]:
    got: list[RecommendationRecord] = []
    deadline = time.monotonic() + timeout_s
    while not done(got):
        assert time.monotonic() < deadline, f"timed out with {len(got)} recommendations"
        got.extend(rec for rec, _ in reader.poll(300))
    return got


def boot(settings: Settings, tmp_path: Path, items: list, name: str = "worker") -> WorkerProcess:
    ensure_topics_for(settings)
    worker = start_worker(settings, tmp_path / f"{name}.log")
    producer = make_producer(settings.kafka_bootstrap)
    n = publish_catalogue(producer, settings.topics, items)
    producer.close()
    worker.wait_until("streamrec_index_size_items", lambda v: v >= n, timeout_s=90)
    return worker


def small_checkpoint(path: Path, version: str, seed: int) -> Path:
    ds = load_dataset("ml-100k", Settings.from_env().data_dir)
    catalog = build_catalog(ds, text="hashed", progress=False)
    torch.manual_seed(seed)
    model = SeqRec(build_config("mufasa", len(catalog.item_ids), 16, 32), catalog.features)
    save_checkpoint(path, model, model.cfg, version, {"dataset": "ml-100k", "model": "mufasa", "text": "hashed"})
    return path


def promtool_check_metrics(exposition: bytes) -> str:
    """`promtool check metrics` on a text exposition; returns its complaints ("" when clean)."""
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make setup` installs Debian's prometheus package"
    done = subprocess.run([path, "check", "metrics"], input=exposition, capture_output=True, timeout=60)
    return (done.stdout + done.stderr).decode().strip() if done.returncode or done.stdout or done.stderr else ""


def publish_now(settings: Settings, clicks: list) -> int:
    """Publish `clicks` (dataset events) as fast as possible; returns how many were acknowledged."""
    producer = make_producer(settings.kafka_bootstrap)
    try:
        return publish_clicks(producer, settings.topics, clicks, rate=0, progress=False)
    finally:
        producer.close()
