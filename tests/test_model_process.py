"""A checkpoint served from its own process answers exactly what it answers in the worker's process.

Real child processes (spawned), real RocksDB and FAISS, the small MUFASA checkpoint of
tests/test_research_serving.py. Also: a checkpoint that does not load raises its own error where
the model is asked for, and a model process that dies is reported through `on_death`.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from streamrec.datasets import load_dataset
from streamrec.models.checkpoint import CheckpointError
from streamrec.serving.model_process import ModelProcessError, ModelProcessSpec, ProcessServingModel
from streamrec.serving.research_model import ResearchServingConfig
from streamrec.settings import Settings
from streamrec.stream.schemas import CatalogueRecord, ClickRecord
from tests.test_research_serving import checkpoint, make, open_model, records  # noqa: F401 - fixture

DEATHS: list[str] = []


def spec(path: Path, tmp_path: Path) -> ModelProcessSpec:
    return ModelProcessSpec(path, Settings.from_env().data_dir, tmp_path / "features", ResearchServingConfig(64))


def child_pid_alive(pid: int | None) -> bool:
    """Whether a process with `pid` exists."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_process_model_answers_what_the_in_process_model_answers(checkpoint: Path, tmp_path: Path) -> None:  # noqa: F811
    ds = load_dataset("ml-100k", Settings.from_env().data_dir)
    local = make(tmp_path, open_model(checkpoint, tmp_path), "local")
    remote_model = ProcessServingModel(spec(checkpoint, tmp_path), DEATHS.append)
    remote = make(tmp_path, remote_model, "remote")
    try:
        assert remote.model_version == local.model_version and remote_model.dim == local.model.dim
        for rec in (local, remote):
            rec.apply_catalogue(records(ds))
        events = ds.events[:1500]
        for start in range(0, len(events), 150):
            clicks = [ClickRecord(e.event_id, e.user_id, e.item_id, 1000 + start) for e in events[start : start + 150]]
            if start == 300:  # an item changed in place: its row is sent again, nothing else
                clicked = ds.item(events[start].item_id)
                changed = [CatalogueRecord(clicked.item_id, "upsert", 0, "Another title altogether", ("Comedy",))]
                for rec in (local, remote):
                    rec.apply_catalogue(changed)
            if start == 750:  # a new item mid-stream: its row reaches the child with the next batch
                new = [CatalogueRecord("new-1", "upsert", 0, "A brand new film (2026)", ("Drama",))]
                for rec in (local, remote):
                    rec.apply_catalogue(new)
                clicks += [ClickRecord(f"n{k}", c.user_id, "new-1", 1000 + start) for k, c in enumerate(clicks[:5])]
            a, b = local.handle_clicks(clicks), remote.handle_clicks(clicks)
            assert [r.user_id for r in a.recommendations] == [r.user_id for r in b.recommendations]
            for x, y in zip(a.recommendations, b.recommendations, strict=True):
                assert [i.item_id for i in x.items] == [i.item_id for i in y.items]
                np.testing.assert_allclose([i.score for i in x.items], [i.score for i in y.items], rtol=1e-5, atol=1e-6)
                assert x.explanation == y.explanation, "history items named and modality weights agree"
        assert remote_model.state_bytes_per_user(2048) == local.model.state_bytes_per_user(2048)
        asked = ["new-1", events[0].item_id]
        assert remote_model.trained_clicks(asked) == local.model.trained_clicks(asked) == [0, 0]
        assert remote_model.placed_by_content(asked) == local.model.placed_by_content(asked) == [True, False]
    finally:
        local.close()
        remote.close()
    assert not child_pid_alive(remote_model.pid), "closing the model stops its process"
    assert DEATHS == []


def test_a_checkpoint_that_does_not_load_raises_its_own_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises((CheckpointError, ModelProcessError)):
        ProcessServingModel(spec(broken, tmp_path), DEATHS.append)
    assert DEATHS == [], "a bad checkpoint is the caller's error, not a death"


def test_a_model_process_that_dies_is_reported_and_raises(checkpoint: Path, tmp_path: Path) -> None:  # noqa: F811
    died: list[str] = []
    model = ProcessServingModel(spec(checkpoint, tmp_path), died.append)
    try:
        assert model.pid is not None
        os.kill(model.pid, signal.SIGKILL)
        rec = CatalogueRecord("x", "upsert", 0, "x", ())
        with pytest.raises(ModelProcessError):
            model.encode_items([rec])
        assert len(died) == 1 and "died" in died[0] and "encode_items" in died[0]
    finally:
        model.close()
