"""Online fine-tuning rounds on real data, a real model store and real checkpoints (no Kafka)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from streamrec.datasets import load_dataset
from streamrec.features import build_catalog
from streamrec.model_bundle import load_bundle
from streamrec.models.checkpoint import save_checkpoint
from streamrec.models.growth import new_item_clicks
from streamrec.models.presets import build_config
from streamrec.models.seqrec import SeqRec
from streamrec.serving.research_model import ResearchServingConfig, load_research_model
from streamrec.settings import Settings
from streamrec.state.model_store import ModelStore
from streamrec.stream.schemas import CatalogueRecord
from streamrec.training.online_trainer import OnlineTrainer, OnlineTrainerConfig, RecentWindow, import_checkpoint
from tests.test_models import features, tiny

MAX_LEN = 16


def untrained_checkpoint(directory: Path, id_evidence: float = 0.0) -> Path:
    """An untrained small MUFASA on MovieLens-100K: fine-tuning on real clicks must beat it."""
    ds = load_dataset("ml-100k", Settings.from_env().data_dir)
    catalog = build_catalog(ds, text="hashed", progress=False)
    torch.manual_seed(0)
    cfg = replace(build_config("mufasa", len(catalog.item_ids), MAX_LEN, 32), id_evidence=id_evidence)
    model = SeqRec(cfg, catalog.features)
    path = directory / "mufasa.pt"
    meta = {"dataset": "ml-100k", "model": "mufasa", "text": "hashed"}
    save_checkpoint(path, model, model.cfg, "ml-100k-mufasa-base", meta)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_checkpoint(tmp_path_factory.mktemp("ckpt"))


def make_trainer(checkpoint: Path, tmp_path: Path) -> tuple[OnlineTrainer, ModelStore]:
    settings = Settings.from_env()
    store = ModelStore(tmp_path / "store")
    stored = import_checkpoint(store, checkpoint)
    current = load_bundle(stored.path, settings.data_dir, tmp_path / "features")
    cfg = OnlineTrainerConfig(every_events=3000, epochs=2, lr=2e-3, max_minutes=2.0)
    trainer = OnlineTrainer(cfg, store, current, torch.device("cpu"))
    ds = load_dataset("ml-100k", settings.data_dir)
    new = [
        CatalogueRecord("new-film-1", "upsert", 0, "A Brand New Film (2026)", ("Drama",)),
        CatalogueRecord("new-film-2", "upsert", 0, "Another New Film (2026)", ("Comedy",)),
    ]
    for rec in new:
        trainer.observe_catalogue(rec)
    for n, e in enumerate(ds.events[:6000]):
        trainer.observe_click(e.user_id, e.item_id)
        if n % 50 == 0:  # the new items are clicked too
            trainer.observe_click(e.user_id, new[n % 2].item_id)
    return trainer, store


def test_recent_window_keeps_the_latest_clicks_of_the_latest_users() -> None:
    w = RecentWindow(max_users=2, max_len=3)
    for user, item in [("a", "1"), ("b", "2"), ("a", "3"), ("a", "4"), ("a", "5"), ("c", "6")]:
        w.add(user, item)
    assert w.sequences() == {"a": ["3", "4", "5"], "c": ["6"]}  # b was least recently active


def test_a_round_fine_tunes_grows_new_items_passes_the_gate_and_promotes(checkpoint: Path, tmp_path: Path) -> None:
    trainer, store = make_trainer(checkpoint, tmp_path)
    assert trainer.due()
    result = trainer.run_round()
    assert result.decision == "promoted", result.reason
    assert result.candidate_ndcg10 > result.serving_ndcg10, "fine-tuning on real clicks beats an untrained model"
    assert result.new_items == 2 and result.eval_users >= 30 and result.sequences_per_s > 0
    current = store.current()
    assert current is not None and current.version == result.candidate_version
    assert current.meta["parent"] == "ml-100k-mufasa-base"
    # The promoted checkpoint loads on its own, with rows for the items it grew to.
    settings = Settings.from_env()
    served = load_research_model(current.path, settings.data_dir, tmp_path / "features", ResearchServingConfig(1))
    assert served.version == result.candidate_version
    n = len(served.catalog.item_ids)
    assert served.catalog.row_of["new-film-1"] == n - 1 and served.catalog.row_of["new-film-2"] == n
    assert served.model.id_emb.weight[n - 1].abs().sum() > 0, "the new item's ID row was learned from its clicks"
    # make_trainer never clicks new-film-2: it was no negative either, so it is still placed by
    # content alone, where the new-item calibration was fitted.
    assert served.model.id_emb.weight[n].abs().sum() == 0, "an unclicked new item keeps a zero ID row"
    # The clicks the new item's ID row learned from travel with the version, for serving's fade.
    film1, film2, old = served.trained_clicks(["new-film-1", "new-film-2", served.catalog.item_ids[0]])
    assert 0 < film1 <= 120 and film2 == 0 and old == 0, "make_trainer clicks new-film-1 120 times"
    assert trainer.current.version == result.candidate_version, "later rounds start from the promoted model"


def test_trained_clicks_count_zero_rows_clicked_and_keep_the_largest_window() -> None:
    torch.manual_seed(0)
    f = features()
    model = SeqRec(tiny("mufasa"), f)
    with torch.no_grad():
        model.id_emb.weight[3:5] = 0.0  # rows 3 and 4: new items, never trained
    row_of = {"warm": 1, "old-new": 2, "new-a": 3, "new-b": 4}
    clicks = torch.zeros(model.id_emb.weight.shape[0])
    clicks[[1, 2, 3]] = torch.tensor([7.0, 2.0, 5.0])  # new-b not clicked in this round
    got = new_item_clicks({"old-new": 6}, model, row_of, clicks)
    # warm has a trained row; old-new was counted before (its row is learned now): its largest
    # window stays; new-a is a zero row clicked 5 times; new-b has no click yet.
    assert got == {"old-new": 6, "new-a": 5}


def test_new_items_gain_id_evidence_from_the_clicks_of_the_window(tmp_path: Path) -> None:
    trainer, store = make_trainer(untrained_checkpoint(tmp_path, id_evidence=5.0), tmp_path)
    result = trainer.run_round()
    assert result.decision == "promoted", result.reason
    served = store.current()
    assert served is not None
    clicks = load_bundle(served.path, Settings.from_env().data_dir, tmp_path / "features").model.item_clicks
    n = len(clicks) - 1
    # make_trainer clicks new-film-1 (row n - 1) every 50 events and never new-film-2 (row n).
    assert clicks[n - 1] > 0, "a clicked new item's ID vector is weighted in by its clicks"
    assert clicks[n] == 0, "an unclicked new item stays placed by content alone"
    assert clicks[1 : n - 1].sum() > 0


def test_the_gate_refuses_a_deliberately_worse_candidate(checkpoint: Path, tmp_path: Path) -> None:
    trainer, store = make_trainer(checkpoint, tmp_path)

    def sabotage(model: SeqRec) -> None:
        with torch.no_grad():
            model.id_emb.weight.copy_(model.id_emb.weight[torch.randperm(model.id_emb.weight.shape[0])])
            for p in model.encoder.parameters():
                p.add_(torch.randn_like(p))

    first = trainer.run_round()  # a trained serving model, so "worse" means something
    assert first.decision == "promoted", first.reason
    ds = load_dataset("ml-100k", Settings.from_env().data_dir)
    for e in ds.events[6000:9000]:
        trainer.observe_click(e.user_id, e.item_id)
    result = trainer.run_round(after_fine_tune=sabotage)
    assert result.decision == "refused", result.reason
    assert result.serving_ndcg10 > 0 and result.candidate_ndcg10 < result.serving_ndcg10 * (1 - 0.02)
    assert store.current().version == first.candidate_version
    assert [v.version for v in store.versions()] == ["ml-100k-mufasa-base", first.candidate_version]
    assert trainer.current.version == first.candidate_version


def test_a_crash_mid_fine_tune_leaves_the_serving_model_and_the_store_untouched(
    checkpoint: Path, tmp_path: Path
) -> None:
    trainer, store = make_trainer(checkpoint, tmp_path)
    serving_before = {k: v.clone() for k, v in trainer.current.model.state_dict().items()}

    def crash(model: SeqRec) -> None:
        raise RuntimeError("the trainer died mid-round")

    with pytest.raises(RuntimeError):
        trainer.run_round(after_fine_tune=crash)
    assert store.current().version == "ml-100k-mufasa-base"
    assert [v.version for v in store.versions()] == ["ml-100k-mufasa-base"]
    assert not list((tmp_path / "store").glob(".tmp-*"))
    after = trainer.current.model.state_dict()
    assert all(torch.equal(serving_before[k], after[k]) for k in serving_before), "warm start copied, not mutated"
