"""A research checkpoint served by the worker's core: live top-K equals the offline model's top-K.

Real RocksDB and FAISS; no Kafka (the pipeline test covers the worker process). The model is a
small MUFASA built from a real checkpoint file on MovieLens-100K with hashed title vectors; its
window (16) is short so that long users exercise the hopping window and state rebuilds.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from streamrec.bench.precision import encode_last_clicks, leave_one_out
from streamrec.datasets import load_dataset
from streamrec.features import build_catalog
from streamrec.models.checkpoint import save_checkpoint
from streamrec.models.live_encoder import window_start
from streamrec.models.presets import build_config
from streamrec.models.seqrec import SeqRec
from streamrec.serving.recommender import Recommender
from streamrec.serving.research_model import ResearchServingConfig, ResearchServingModel, load_research_model
from streamrec.serving.serving_model import UserHistory
from streamrec.settings import Settings
from streamrec.state.catalogue_store import CatalogueStore
from streamrec.state.item_index import FaissItemIndex
from streamrec.state.sequence_store import RocksSequenceStore
from streamrec.stream.schemas import CatalogueRecord, ClickRecord

MAX_LEN = 16
TOP_K = 10


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = Settings.from_env().data_dir
    ds = load_dataset("ml-100k", data_dir)
    catalog = build_catalog(ds, text="hashed", progress=False)
    torch.manual_seed(0)
    model = SeqRec(build_config("mufasa", len(catalog.item_ids), MAX_LEN, 32), catalog.features)
    path = tmp_path_factory.mktemp("ckpt") / "mufasa.pt"
    save_checkpoint(
        path, model, model.cfg, "test-mufasa-v1", {"dataset": "ml-100k", "model": "mufasa", "text": "hashed"}
    )
    return path


def open_model(
    checkpoint: Path, tmp_path: Path, memory_mb: int = 64, one_call_padding: int = 256
) -> ResearchServingModel:
    settings = Settings.from_env()
    cfg = ResearchServingConfig(memory_mb, one_call_padding=one_call_padding)
    return load_research_model(checkpoint, settings.data_dir, tmp_path / "features", cfg)


def records(ds) -> list[CatalogueRecord]:  # noqa: ANN001 - a Dataset
    return [CatalogueRecord(it.item_id, "upsert", 0, it.title, it.category_path, it.brand, it.price) for it in ds.items]


def make(tmp_path: Path, model: ResearchServingModel, name: str = "w") -> Recommender:
    return Recommender(
        RocksSequenceStore(tmp_path / name / "seq", max_len=2048),
        CatalogueStore(tmp_path / name / "cat", model.dim),
        FaissItemIndex(model.dim),
        model,
        top_k=TOP_K,
    )


def offline_top(model: ResearchServingModel, history: list[str], k: int) -> tuple[list[str], np.ndarray]:
    """The trained model's own scoring: its item table, the same window, history excluded."""
    cat = model.catalog
    rows = [cat.row_of[i] for i in history]
    start = window_start(len(rows), MAX_LEN)
    window = torch.tensor([rows[start:]])
    with torch.no_grad():
        table = model.model.item_table()
        scores = model.model.recommend_scores(window, torch.tensor([window.shape[1]]), table)[0]
    scores[torch.tensor(sorted(set(rows)))] = float("-inf")
    top = scores.topk(k)
    return [cat.item_ids[r - 1] for r in top.indices.tolist()], top.values.numpy()


# Batches of 200 clicks (users with several clicks: extend) and of 7 (mostly one click: step), with
# a mixed batch encoded in one call whatever its padding, by the default rule, or always in two.
@pytest.mark.parametrize("one_call_padding", [10**6, 256, 0])
@pytest.mark.parametrize("batch", [200, 7])
def test_live_top_k_equals_the_offline_model_for_the_same_history(
    checkpoint: Path, tmp_path: Path, batch: int, one_call_padding: int
) -> None:
    model = open_model(checkpoint, tmp_path, one_call_padding=one_call_padding)
    ds = load_dataset("ml-100k", Settings.from_env().data_dir)
    rec = make(tmp_path, model)
    rec.apply_catalogue(records(ds))
    assert rec.model_version == "test-mufasa-v1"
    events = ds.events[:3000]  # sorted by time: many users interleaved, some past the window
    per_batch = [Counter(e.user_id for e in events[s : s + batch]) for s in range(0, len(events), batch)]
    mixed = [c for c in per_batch if 1 in c.values() and max(c.values()) > 1]
    assert mixed, "the sample must hold batches mixing users with one click and users with several"
    last: dict[str, object] = {}
    for start in range(0, len(events), batch):
        clicks = [ClickRecord(e.event_id, e.user_id, e.item_id, 1000 + start) for e in events[start : start + batch]]
        for r in rec.handle_clicks(clicks).recommendations:
            last[r.user_id] = r
    history: dict[str, list[str]] = {}
    for e in events:
        history.setdefault(e.user_id, []).append(e.item_id)
    long_users = [u for u, h in history.items() if len(h) > MAX_LEN]
    assert long_users, "the sample must include users past the encoder window"
    checked = 0
    for user in sorted(history)[:40] + long_users[:20]:
        want, want_scores = offline_top(model, history[user], TOP_K)
        got = [i.item_id for i in last[user].items]
        got_scores = np.array([i.score for i in last[user].items])
        np.testing.assert_allclose(got_scores, want_scores, atol=2e-4, rtol=1e-4)
        # Same list, except where neighbouring scores tie within float error.
        for a, b, s in zip(got, want, want_scores, strict=True):
            assert a == b or np.isclose(s, want_scores, atol=2e-4).sum() > 1, (user, got, want)
        checked += 1
    assert checked >= 50
    why = last[long_users[0]].explanation
    assert why is not None and why.because, "recommendations explain themselves"
    assert set(why.because) <= set(history[long_users[0]])
    assert set(why.modality_weights) == {"title", "attr"}
    assert abs(sum(why.modality_weights.values()) - 1) < 0.01


def test_state_rebuilt_after_a_restart_gives_the_same_recommendations(checkpoint: Path, tmp_path: Path) -> None:
    ds = load_dataset("ml-100k", Settings.from_env().data_dir)
    events = ds.events[:1500]
    first = make(tmp_path, open_model(checkpoint, tmp_path))
    first.apply_catalogue(records(ds))
    clicks = [ClickRecord(e.event_id, e.user_id, e.item_id, 1000) for e in events]
    for start in range(0, 1400, 100):
        first.handle_clicks(clicks[start : start + 100])
    first.close()
    # A new process: empty slots, the same RocksDB state; the next clicks rebuild users lazily.
    again = make(tmp_path, open_model(checkpoint, tmp_path))
    tail = clicks[1400:]
    after_restart = again.handle_clicks(tail).recommendations
    fresh = make(tmp_path, open_model(checkpoint, tmp_path), name="fresh")
    fresh.apply_catalogue(records(ds))
    fresh.handle_clicks(clicks[:1400])  # one big batch: prefill instead of steps
    reference = fresh.handle_clicks(tail).recommendations
    assert [[i.item_id for i in r.items] for r in after_restart] == [[i.item_id for i in r.items] for r in reference]


def test_new_items_are_placed_by_content_updated_and_withdrawn(checkpoint: Path, tmp_path: Path) -> None:
    model = open_model(checkpoint, tmp_path)
    ds = load_dataset("ml-100k", Settings.from_env().data_dir)
    rec = make(tmp_path, model)
    rec.apply_catalogue(records(ds))
    star_wars = next(it for it in ds.items if it.title.startswith("Star Wars"))
    new = CatalogueRecord("new-1", "upsert", 0, star_wars.title + " (Special Edition)", star_wars.category_path)
    assert rec.apply_catalogue([new]) == 1
    row = rec.catalogue.get("new-1").row
    vec = rec._matrix[row].copy()
    assert np.linalg.norm(vec) > 0, "an unseen item gets a content vector"
    scores, ids = rec.index.search(vec[None], 5, [set()])
    assert row in ids[0].tolist(), "and is searchable at once"
    # Updating the title replaces the vector; withdrawing removes it from search.
    rec.apply_catalogue([CatalogueRecord("new-1", "upsert", 0, "Completely different words", ("Documentary",))])
    assert not np.allclose(rec._matrix[row], vec)
    rec.apply_catalogue([CatalogueRecord("new-1", "withdraw", 0)])
    _, ids = rec.index.search(rec._matrix[row][None], 20, [set()])
    assert row not in ids[0].tolist()


def test_state_bytes_per_user_at_the_sequence_cap(checkpoint: Path, tmp_path: Path) -> None:
    model = open_model(checkpoint, tmp_path)
    # The window, not the stored sequence, bounds the state: at 2,048 clicks it holds <= MAX_LEN positions.
    assert model.state_bytes_per_user(2048) <= model.live.state_bytes(MAX_LEN)
    assert model.state_bytes_per_user(2048) == model.live.state_bytes(2048 - window_start(2048, MAX_LEN))


def test_auto_state_type_is_float32_within_the_budget_and_int8_past_it(checkpoint: Path, tmp_path: Path) -> None:
    settings = Settings.from_env()

    def served(budget: int) -> ResearchServingModel:
        cfg = ResearchServingConfig(1, state_dtype="auto", state_budget_bytes=budget)
        return load_research_model(checkpoint, settings.data_dir, tmp_path / "features", cfg)

    wide = served(1 << 30)
    assert wide.state_dtype == "float32"
    full = wide.live.state_bytes(wide.max_len)  # a user whose window is full
    assert served(full).state_dtype == "float32", "a state exactly at the budget fits"
    narrow = served(full - 1)
    assert narrow.state_dtype == "int8"
    assert narrow.live.state_bytes(narrow.max_len) < full / 3, "int8 keeps about a quarter of float32's bytes"


def test_the_precision_bench_reads_the_cache_in_its_type(checkpoint: Path, tmp_path: Path) -> None:
    """`streamrec bench precision` compares cache types: its last click must read the cache. In
    float32 the two calls give what one pass over the whole window gives; in int8 the vectors move,
    a little."""
    settings = Settings.from_env()
    ds = load_dataset("ml-100k", settings.data_dir)
    row_of = {it.item_id: k for k, it in enumerate(ds.items)}
    cases = leave_one_out(ds.events, 24)
    users = [u for u, _, _ in cases]
    histories = [[row_of[i] for i in h][-MAX_LEN:] for _, h, _ in cases]  # within one window

    def served(dtype: str) -> ResearchServingModel:
        cfg = ResearchServingConfig(8, state_dtype=dtype)
        return load_research_model(checkpoint, settings.data_dir, tmp_path / "features", cfg)

    wide = served("float32")
    matrix = wide.encode_items(records(ds))  # (R, D)
    whole = [UserHistory(u, h, len(h)) for u, h in zip(users, histories, strict=True)]
    full = served("float32").encode_users(whole, matrix, explain=False).vectors  # one pass each
    two_calls, _ = encode_last_clicks(wide, users, histories, matrix, batch=8)
    np.testing.assert_allclose(two_calls, full, atol=1e-4)
    narrow, _ = encode_last_clicks(served("int8"), users, histories, matrix, batch=8)
    moved = np.abs(narrow - two_calls).max()
    assert 0 < moved < 0.1 * np.abs(two_calls).max(), f"int8 state moved user vectors by {moved}"


@pytest.mark.integration
def test_worker_serves_the_checkpoint_and_reports_its_version(
    checkpoint: Path, stream_settings: Settings, tmp_path: Path
) -> None:
    from dataclasses import replace

    from streamrec.stream.rec_consumer import RecommendationReader
    from tests.helpers import boot, publish_now, read_until

    settings = replace(stream_settings, model_path=str(checkpoint))
    ds = load_dataset("ml-100k", settings.data_dir)
    clicks = ds.events[:600]
    worker = boot(settings, tmp_path, ds.items)
    try:
        assert worker.metric('streamrec_model_version_info{version="test-mufasa-v1"}') == 1
        from urllib.request import urlopen

        from tests.helpers import promtool_check_metrics

        with urlopen(worker.metrics_url, timeout=5) as resp:
            assert promtool_check_metrics(resp.read()) == "", "a live worker's exposition passes promtool"
        reader = RecommendationReader(settings.kafka_bootstrap, settings.topics.recommendations)
        publish_now(settings, clicks)
        recs = read_until(reader, lambda got: len({r.event_id for r in got}) >= len(clicks))
        reader.close()
    finally:
        assert worker.stop() == 0, f"worker did not stop cleanly; log {worker.log_path}"
    assert {r.model_version for r in recs} == {"test-mufasa-v1"}
    assert all(r.explanation is not None and r.explanation.modality_weights for r in recs)
    assert all(len(r.items) == settings.top_k for r in recs)
