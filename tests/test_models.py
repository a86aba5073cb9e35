"""MUFASA, CAMMSR and SASRec on tiny configs: masking, causality, incremental = full, training smoke test,
checkpoints."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from streamrec.models.cammsr_moe import CategoryMoE, MoEConfig
from streamrec.models.checkpoint import load_checkpoint, save_checkpoint
from streamrec.models.growth import grow_items
from streamrec.models.item_features import ItemFeatures
from streamrec.models.live_encoder import LiveEncoder, LiveEncoderConfig
from streamrec.models.modality_swap import swapped_items
from streamrec.models.mufasa_fusion import FusionConfig, MultimodalFusion
from streamrec.models.presets import build_config, preset_names
from streamrec.models.ranking_metrics import metrics_from_ranks
from streamrec.models.seqrec import SeqRec, SeqRecConfig
from streamrec.models.sequence_data import item_clicks, leave_one_out, training_batches
from streamrec.models.sparse_attention import SparseAttentionConfig
from streamrec.models.trainer import TrainConfig, evaluate, load_train_state, resume_conflicts, train

N_ITEMS = 30
DIM = 16


def features(n: int = N_ITEMS, seed: int = 0) -> ItemFeatures:
    g = torch.Generator().manual_seed(seed)
    title = torch.randn(n + 1, 12, generator=g)
    title_mask = torch.ones(n + 1, dtype=torch.bool)
    title_mask[0] = False
    attr = torch.randint(1, 6, (n + 1, 3), generator=g)
    attr[::4, :] = 0  # every 4th item has no attributes
    category = torch.randint(1, 4, (n + 1,), generator=g)
    audio = torch.randn(n + 1, 5, generator=g)
    audio_mask = torch.rand(n + 1, generator=g) > 0.3
    return ItemFeatures(title, title_mask, attr, 6, category, 4, {"pre_audio": audio}, {"pre_audio": audio_mask})


def tiny(name: str, max_len: int = 12) -> SeqRecConfig:
    cfg = build_config(name, N_ITEMS, max_len=max_len, dim=DIM)
    sparse = SparseAttentionConfig(block=3, num_selected=2, num_recent=1, window=4)
    return replace(cfg, encoder=replace(cfg.encoder, layers=2, heads=2, dropout=0.0, sparse=sparse))


def test_missing_modality_is_masked_not_zero_filled() -> None:
    f = features()
    fusion = MultimodalFusion(f, DIM, FusionConfig()).eval()
    fused, _tokens, mask, weights = fusion(f)
    missing = ~f.extra_mask["pre_audio"]
    assert (weights[missing, 2] == 0).all() and (weights[~missing, 2] > 0).all()
    f2 = features()
    f2.extra["pre_audio"][missing] = 1e3  # garbage where the modality is absent
    fused2, *_ = fusion(f2)
    torch.testing.assert_close(fused2[missing], fused[missing])
    assert mask.shape == (N_ITEMS + 1, 3)


def test_mufasa_losses_are_finite_and_switchable() -> None:
    f = features()
    on = MultimodalFusion(f, DIM, FusionConfig())
    fused, tokens, mask, _ = on(f)
    idx = torch.arange(1, N_ITEMS + 1)
    ids = torch.randn(N_ITEMS + 1, DIM)
    losses = on.losses(idx, fused, tokens, mask, ids, f)
    assert set(losses) == {"mfl_align", "mfl_cf", "mfl_structure", "mfl_dist"}
    assert all(torch.isfinite(v) for v in losses.values())
    off_cfg = FusionConfig(align_weight=0, cf_weight=0, structure_weight=0.1, dist_weight=0)
    off = MultimodalFusion(f, DIM, off_cfg)
    assert set(off.losses(idx, *off(f)[:3], ids, f)) == {"mfl_structure"}


def test_cross_genre_negatives_differ_from_all_negatives() -> None:
    f = features()
    torch.manual_seed(0)
    a = MultimodalFusion(f, DIM, FusionConfig(align_negatives="cross_genre"))
    b = MultimodalFusion(f, DIM, FusionConfig(align_negatives="all"))
    b.load_state_dict(a.state_dict())
    idx = torch.arange(1, N_ITEMS + 1)
    ids = torch.randn(N_ITEMS + 1, DIM)
    la = a.losses(idx, *a(f)[:3], ids, f)["mfl_align"]
    lb = b.losses(idx, *b(f)[:3], ids, f)["mfl_align"]
    assert la < lb, "removing same-genre negatives leaves an easier contrast"


def test_camoe_masks_unavailable_experts_and_category_guidance_reaches_the_gate() -> None:
    f = features()
    moe = CategoryMoE(f, DIM, MoEConfig(synergy="pairs+all"))
    ids = torch.randn(N_ITEMS + 1, DIM)
    out = moe(f, ids)
    torch.testing.assert_close(out.gate.sum(-1), torch.ones(N_ITEMS + 1))
    no_attr = ~f.attr_mask
    attr_experts = [e for e, g in enumerate(moe.groups) if 2 in g]  # modality 2 = attr (after id, title)
    assert torch.isinf(out.router_logits[no_attr][:, attr_experts]).all()
    assert (out.gate[no_attr][:, attr_experts] == 0).all()
    losses = moe.losses(torch.arange(1, N_ITEMS + 1), out, f)
    assert set(losses) == {"moe_category", "moe_balance"}
    losses["moe_category"].backward()
    assert moe.gate[0].weight.grad is not None and moe.gate[0].weight.grad.abs().sum() > 0
    torch.testing.assert_close(out.modality_weight.sum(-1), torch.ones(N_ITEMS + 1))


def test_modality_swap_views() -> None:
    f = features()
    vecs = torch.randn(N_ITEMS + 1, DIM)
    tokens = torch.randn(N_ITEMS + 1, 3, DIM)
    mask = torch.stack([f.title_mask, f.attr_mask, f.extra_mask["pre_audio"]], 1)
    seqs = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    torch.testing.assert_close(swapped_items(seqs, vecs, tokens, mask, 0.0), vecs[seqs])
    swapped = swapped_items(seqs, vecs, tokens, mask, 1.0)
    for b, t in [(0, 0), (0, 1), (1, 0)]:
        item = seqs[b, t]
        assert any(torch.equal(swapped[b, t], tokens[item, m]) for m in range(3) if mask[item, m])
    torch.testing.assert_close(swapped[1, 2], vecs[0], msg="padding is never swapped")


@pytest.mark.parametrize("name", ["sasrec", "mufasa", "cammsr", "cammsr-sparse"])
def test_model_is_causal_and_incremental_equals_full(name: str) -> None:
    torch.manual_seed(0)
    model = SeqRec(tiny(name), features()).eval()
    table = model.item_table()
    seqs = torch.randint(1, N_ITEMS + 1, (2, 10))
    hidden = model.encode(seqs, table)
    changed = seqs.clone()
    changed[:, 6:] = torch.randint(1, N_ITEMS + 1, (2, 4))
    torch.testing.assert_close(model.encode(changed, table)[:, :6], hidden[:, :6])
    live = LiveEncoder(model.encoder, LiveEncoderConfig(slots=2))
    for t in range(10):
        user, _ = live.step(torch.arange(2), table.vectors[seqs[:, t]])
        torch.testing.assert_close(user, hidden[:, t], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["sasrec", "mufasa", "cammsr"])
def test_two_training_steps_on_a_tiny_config(name: str) -> None:
    torch.manual_seed(0)
    model = SeqRec(tiny(name), features())
    seqs = [torch.randint(1, N_ITEMS + 1, (int(n),)).tolist() for n in torch.randint(4, 15, (24,))]
    split = leave_one_out(seqs, N_ITEMS)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(
        model,
        split,
        TrainConfig(epochs=2, batch_size=8, max_steps_per_epoch=1, patience=5),
        torch.device("cpu"),
        progress=False,
    )
    assert result.epochs_run == 2 and result.stopped_by == "epochs"
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "training moved no parameter"
    for group in ("all", "excl_history"):
        assert 0.0 <= result.test[group]["NDCG@10"] <= result.test[group]["HR@10"] <= 1.0
        # The kept per-user ranks are the ones the figures came from, one per test user.
        ranks = result.test["ranks"][group]
        assert len(ranks) == len(split.test)
        assert metrics_from_ranks(torch.tensor(ranks)) == result.test[group]
    gen = torch.Generator().manual_seed(0)
    seqs_b, targets_b = next(training_batches(split.train, 12, 8, gen))
    losses = model.training_losses(seqs_b, targets_b)
    assert all(torch.isfinite(v) for v in losses.values())
    expected = {"sasrec": {"rec"}, "mufasa": {"rec", "mfl_align", "mfl_cf", "mfl_structure", "mfl_dist"}}
    expected["cammsr"] = {"rec", "moe_category", "moe_balance", "swap_cl"}
    assert set(losses) == expected[name]


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = tiny("mufasa")
    model = SeqRec(cfg, features()).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, cfg, "v-test", {"dataset": "toy"})
    cfg2, state, version, meta = load_checkpoint(path)
    assert cfg2 == cfg and version == "v-test" and meta == {"dataset": "toy"}
    clone = SeqRec(cfg2, features()).eval()
    clone.load_state_dict(state)
    seqs = torch.randint(1, N_ITEMS + 1, (3, 7))
    lengths = torch.tensor([7, 3, 1])
    a = model.recommend_scores(seqs, lengths, model.item_table())
    b = clone.recommend_scores(seqs, lengths, clone.item_table())
    torch.testing.assert_close(a, b)


def test_every_preset_builds_and_evaluates() -> None:
    f = features()
    pairs = [([1, 2, 3], 4), ([5], 6)]
    for name in preset_names():
        model = SeqRec(tiny(name), f)
        res = evaluate(model, pairs, 4, torch.device("cpu"))
        assert set(res) == {"all", "excl_history"}, name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; none on this machine")
def test_cuda_matches_cpu() -> None:
    torch.manual_seed(0)
    cpu = SeqRec(tiny("mufasa"), features()).eval()
    gpu = SeqRec(tiny("mufasa"), features().to("cuda")).to("cuda").eval()
    gpu.load_state_dict(cpu.state_dict())
    seqs = torch.randint(1, N_ITEMS + 1, (3, 9))
    lengths = torch.tensor([9, 4, 1])
    a = cpu.recommend_scores(seqs, lengths, cpu.item_table())
    b = gpu.recommend_scores(seqs.cuda(), lengths.cuda(), gpu.item_table()).cpu()
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_excluded_items_are_not_negatives_of_the_training_softmax() -> None:
    torch.manual_seed(0)
    model = SeqRec(tiny("sasrec"))
    seqs = torch.randint(1, N_ITEMS // 2, (4, 12))
    targets = torch.randint(1, N_ITEMS // 2, (4, 12))  # no target among the upper half of the catalogue
    excluded = torch.arange(N_ITEMS // 2 + 1, N_ITEMS + 1)
    model.training_losses(seqs, targets)["rec"].backward()
    assert model.id_emb.weight.grad[excluded].abs().sum() > 0, "without exclusion every item is a negative"
    model.zero_grad()
    model.excluded_rows = excluded
    model.training_losses(seqs, targets)["rec"].backward()
    assert model.id_emb.weight.grad[excluded].abs().sum() == 0, "excluded items get no push from the softmax"


def test_content_baselines_add_or_replace_the_id_embedding_by_a_title_projection() -> None:
    f = features()
    torch.manual_seed(0)
    both = SeqRec(replace(tiny("sasrec"), item_encoder="id+text"), f).eval()
    text = SeqRec(replace(tiny("sasrec"), item_encoder="text"), f).eval()
    text.load_state_dict(both.state_dict())
    with torch.no_grad():
        projection = both.title_proj(f)[1:]  # (N, D)
        torch.testing.assert_close(both.item_table().vectors[1:], both.id_emb.weight[1:] + projection)
        torch.testing.assert_close(text.item_table().vectors[1:], projection)
        text.id_emb.weight.normal_()
        torch.testing.assert_close(text.item_table().vectors[1:], projection, msg="text-only ignores ID rows")


@pytest.mark.parametrize("min_epochs", [0, 3])
def test_patience_counts_only_after_min_epochs(min_epochs: int) -> None:
    torch.manual_seed(0)
    model = SeqRec(tiny("sasrec"), features())
    seqs = [torch.randint(1, N_ITEMS + 1, (int(n),)).tolist() for n in torch.randint(4, 15, (24,))]
    # lr 0: validation never changes after epoch 1, so only patience (and min_epochs) ends the run.
    cfg = TrainConfig(epochs=10, batch_size=8, max_steps_per_epoch=1, patience=1, lr=0.0, min_epochs=min_epochs)
    result = train(model, leave_one_out(seqs, N_ITEMS), cfg, torch.device("cpu"), progress=False)
    assert result.best_epoch == 1
    assert result.epochs_run == max(2, min_epochs + 1)


def _resumable_run(cfg: TrainConfig, state: Path, saved: dict | None = None) -> tuple[SeqRec, object]:
    torch.manual_seed(0)
    seqs = [torch.randint(1, N_ITEMS + 1, (int(n),)).tolist() for n in torch.randint(4, 15, (40,))]
    base = tiny("mufasa")  # dropout and the fusion losses' item sampling both draw random numbers
    model = SeqRec(replace(base, encoder=replace(base.encoder, dropout=0.3)), features())
    tag = {"model": "mufasa"}
    result = train(model, leave_one_out(seqs, N_ITEMS), cfg, torch.device("cpu"), False, None, state, saved, tag)
    return model, result


def test_a_run_continued_from_its_saved_state_equals_one_never_stopped(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=4, batch_size=8, max_steps_per_epoch=3, patience=100, lr=1e-2, warmup_steps=5)
    whole, whole_result = _resumable_run(cfg, tmp_path / "whole.pt")
    _, cut = _resumable_run(replace(cfg, epochs=2), tmp_path / "cut.pt")
    assert cut.epochs_run == 2 and cut.stopped_by == "epochs"
    saved = load_train_state(tmp_path / "cut.pt")
    assert resume_conflicts(saved, cfg, {"model": "mufasa"}) == [], "the caps may grow"
    resumed, result = _resumable_run(cfg, tmp_path / "cut.pt", saved)

    assert [h["valid"] for h in result.history] == [h["valid"] for h in whole_result.history]
    assert (result.best_epoch, result.epochs_run, result.test) == (
        whole_result.best_epoch,
        whole_result.epochs_run,
        whole_result.test,
    )
    assert [(p["first_epoch"], p["last_epoch"]) for p in result.pieces] == [(1, 2), (3, 4)]
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0, msg=name)
    last_whole, last_resumed = load_train_state(tmp_path / "whole.pt"), load_train_state(tmp_path / "cut.pt")
    for name, value in last_whole["model"].items():
        torch.testing.assert_close(last_resumed["model"][name], value, rtol=0, atol=0, msg=f"last epoch's {name}")


def test_a_saved_state_names_the_settings_it_was_made_with(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=1, batch_size=8, max_steps_per_epoch=1)
    _resumable_run(cfg, tmp_path / "s.pt")
    saved = load_train_state(tmp_path / "s.pt")
    assert resume_conflicts(saved, replace(cfg, lr=0.5), {"model": "mufasa"}) == ["lr 0.001 -> 0.5"]
    assert resume_conflicts(saved, cfg, {"model": "sasrec"}) == ["model differs"]


def test_a_run_patience_ended_is_not_trained_further_when_continued(tmp_path: Path) -> None:
    # lr 0: validation never improves after epoch 1, so patience 1 ends the run at epoch 2.
    cfg = TrainConfig(epochs=10, batch_size=8, max_steps_per_epoch=1, patience=1, lr=0.0)
    _, first = _resumable_run(cfg, tmp_path / "s.pt")
    assert (first.epochs_run, first.stopped_by) == (2, "patience")
    _, again = _resumable_run(cfg, tmp_path / "s.pt", load_train_state(tmp_path / "s.pt"))
    assert (again.epochs_run, again.stopped_by, len(again.pieces)) == (2, "patience", 1)
    assert again.test == first.test


@pytest.mark.parametrize("warmup", [0, 1000])
def test_warmup_ramps_the_learning_rate(warmup: int) -> None:
    torch.manual_seed(0)
    model = SeqRec(tiny("sasrec"), features())
    seqs = [torch.randint(1, N_ITEMS + 1, (int(n),)).tolist() for n in torch.randint(4, 15, (24,))]
    before = model.id_emb.weight.detach().clone()
    cfg = TrainConfig(epochs=1, batch_size=8, max_steps_per_epoch=1, lr=1.0, warmup_steps=warmup, clip_norm=1.0)
    train(model, leave_one_out(seqs, N_ITEMS), cfg, torch.device("cpu"), progress=False)
    # AdamW's first step moves a parameter by about the learning rate whatever the gradient's
    # size: lr 1 without warm-up, 1/1000 with it.
    moved = float((model.id_emb.weight.detach() - before).abs().max())
    assert (moved <= 1.1e-3) if warmup else (moved > 0.5)


def test_item_clicks_counts_every_occurrence_and_never_the_padding_row() -> None:
    counts = item_clicks([[1, 2, 2], [3, 2], [0, 1]], n_items=4)
    assert counts.tolist() == [0, 2, 3, 1, 0]


@pytest.mark.parametrize("name", ["mufasa", "sasrec-content"])
def test_id_evidence_weights_the_id_vector_by_clicks_and_leaves_new_items_to_content(name: str) -> None:
    torch.manual_seed(0)
    base = tiny(name)
    plain = SeqRec(base, features()).eval()
    assert "item_clicks" not in plain.state_dict(), "off by default: older checkpoints load unchanged"
    model = SeqRec(replace(base, id_evidence=4.0), features()).eval()
    model.load_state_dict(plain.state_dict(), strict=False)
    clicks = torch.zeros(N_ITEMS + 1)
    clicks[1:] = torch.arange(N_ITEMS).float() * 3  # item 1 has no clicks, item 2 has 3, ...
    model.set_item_clicks(clicks)
    with torch.no_grad():
        table = model.item_table().vectors
        full = plain.item_table().vectors
        ids = plain.id_emb.weight
        content = full - ids  # what each item is without its ID vector
        gate = (clicks / (clicks + 4.0))[:, None]
        torch.testing.assert_close(table[1:], content[1:] + gate[1:] * ids[1:])
        # No clicks: placed by content alone, as a new item is at serving.
        torch.testing.assert_close(table[1], content[1])
        assert (table[-1] - full[-1]).norm() < 0.1 * (table[1] - full[1]).norm() + 1e-6
    # Growth keeps the evidence of old items and gives new items none; it travels in the state.
    grown = grow_items(model, features(N_ITEMS + 5))
    assert grown.item_clicks.tolist()[: N_ITEMS + 1] == clicks.tolist()
    assert grown.item_clicks[N_ITEMS + 1 :].eq(0).all()
    with pytest.raises(AssertionError, match="id_evidence > 0"):
        plain.set_item_clicks(clicks)
