"""New items (issue 16): content-placed items are scored through the calibration and flagged, their
evidence fades it and survives restarts, and the exploration quota never takes more than its slots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.models.cold_start import (
    CalibrationGrid,
    ColdStartConfig,
    calibrated_scores,
    calibration_spent,
    evidence_fade,
)
from streamrec.models.content_baseline import ContentBaseline, ContentBaselineConfig
from streamrec.models.seqrec import SeqRec
from streamrec.serving.new_items import ExploreConfig, FadeConfig, NewItems
from streamrec.serving.recommender import Recommender
from streamrec.serving.serving_model import BaselineServingModel
from streamrec.state.catalogue_store import CatalogueStore
from streamrec.state.item_index import FaissItemIndex
from streamrec.state.sequence_store import RocksSequenceStore
from streamrec.stream.schemas import CatalogueRecord, ClickRecord
from tests.test_models import features, tiny

T0 = 1_800_000_000_000
CFG = ContentBaselineConfig(dim=32, buckets=4096)
COLD = ColdStartConfig(scale=1.0, offset=5.0, full_evidence=3, fit="none")


class CalibratedModel(BaselineServingModel):
    """The content baseline, but items named new-* count as placed by content and are calibrated."""

    @property
    def cold_start(self) -> ColdStartConfig:
        return COLD

    def placed_by_content(self, item_ids: list[str]) -> list[bool]:
        return [i.startswith("new-") for i in item_ids]


def items(n: int) -> list[CatalogueRecord]:
    return [CatalogueRecord(f"i{k}", "upsert", T0, f"product {k} shade {k % 5}", ("Makeup",), "Acme") for k in range(n)]


def new_item(name: str = "new-lipstick") -> CatalogueRecord:
    return CatalogueRecord(name, "upsert", T0, "lipstick shade 3", ("Makeup",), "Acme")


def make(
    tmp_path: Path,
    explore: ExploreConfig | None = None,
    clock: list[float] | None = None,
    fade: FadeConfig | None = None,
    model: BaselineServingModel | None = None,
) -> Recommender:
    now = clock if clock is not None else [1000.0]
    return Recommender(
        RocksSequenceStore(tmp_path / "seq", max_len=50),
        CatalogueStore(tmp_path / "cat", CFG.dim),
        FaissItemIndex(CFG.dim),
        model or CalibratedModel(ContentBaseline(CFG)),
        5,
        explore=explore,
        clock=lambda: now[0],
        fade=fade,
    )


def click(n: int, user: str, item: str) -> ClickRecord:
    return ClickRecord(f"e{n}-{user}", user, item, T0 + n)


def top_of(rec: Recommender, n: int, user: str, item: str) -> list:
    return rec.handle_clicks([click(n, user, item)]).recommendations[0].items


def test_a_new_item_is_held_apart_scored_through_the_calibration_and_flagged(tmp_path: Path) -> None:
    rec = make(tmp_path)
    rec.apply_catalogue([*items(20), new_item()])
    row = rec.catalogue.get("new-lipstick").row
    assert row in rec.new_items and len(rec.index) == 20, "the new item is scored apart, not in the index"
    got = top_of(rec, 1, "u1", "i3")
    assert got[0].item_id == "new-lipstick" and got[0].new and not got[0].explore
    assert not any(s.new for s in got[1:]), "warm items are not flagged"
    warm_best = got[1].score
    assert np.isfinite(got[0].score) and got[0].score <= warm_best + COLD.offset + 1.0, "offset 5 on a cosine"


def test_evidence_fades_the_calibration_then_the_item_joins_the_index(tmp_path: Path) -> None:
    rec = make(tmp_path)
    rec.apply_catalogue([*items(20), new_item()])
    first = top_of(rec, 1, "u1", "i3")[0]
    rec.handle_clicks([click(2, "u2", "new-lipstick")])
    second = top_of(rec, 3, "u1", "i4")
    fresh = next(s for s in second if s.item_id == "new-lipstick")
    assert fresh.new and fresh.score < first.score, "one click of three: two thirds of the offset left"
    rec.handle_clicks([click(4, "u3", "new-lipstick"), click(5, "u4", "new-lipstick")])
    assert len(rec.new_items) == 0 and len(rec.index) == 21, "full evidence: the item joined the index"
    later = top_of(rec, 6, "u1", "i5")
    assert not any(s.new for s in later)


def test_a_restart_keeps_item_evidence(tmp_path: Path) -> None:
    rec = make(tmp_path)
    rec.apply_catalogue([*items(20), new_item()])
    rec.handle_clicks([click(1, "u2", "new-lipstick"), click(2, "u3", "new-lipstick")])
    before = top_of(rec, 3, "u1", "i3")
    rec.close()
    again = make(tmp_path)
    assert again.sequences.item_clicks("new-lipstick") == 2
    assert again.catalogue.get("new-lipstick").row in again.new_items
    after = top_of(again, 4, "u1", "i3")  # a redelivered click: same state, same answer
    assert [(s.item_id, s.new) for s in after] == [(s.item_id, s.new) for s in before]
    again.handle_clicks([click(5, "u4", "new-lipstick")])
    assert len(again.new_items) == 0, "the third click after the restart completes the evidence"
    again.close()


def test_an_unseen_item_gets_a_finite_score_comparable_with_warm_items() -> None:
    torch.manual_seed(0)
    f = features()
    model = SeqRec(tiny("mufasa"), f).eval()
    with torch.no_grad():
        warm = model.item_table().vectors[1:]  # (N, D)
        unseen = model.item_table(f, torch.zeros(f.n_rows, dtype=torch.long)).vectors[1:]  # content alone
        users = torch.randn(8, warm.shape[1])  # (U, D)
        raw = users @ unseen.T  # (U, N)
        cal = calibrated_scores(raw, torch.zeros(raw.shape[1]), ColdStartConfig(scale=1.5, offset=0.3))
        warm_scores = users @ warm.T
    assert torch.isfinite(cal).all() and torch.isfinite(raw).all()
    lo, hi = warm_scores.min(1, keepdim=True).values, warm_scores.max(1, keepdim=True).values
    spread = hi - lo
    assert ((raw >= lo - spread) & (raw <= hi + spread)).all(), "content-only scores on the warm scale"


def test_the_fade_runs_from_one_to_zero_over_full_evidence() -> None:
    cfg = ColdStartConfig(scale=2.0, offset=1.0, full_evidence=4)
    fade = evidence_fade(torch.tensor([0, 1, 2, 4, 9]), cfg)
    assert fade.tolist() == [1.0, 0.75, 0.5, 0.0, 0.0]
    raw = torch.tensor([[0.5, 0.5, 0.5, 0.5, 0.5]])
    assert calibrated_scores(raw, torch.tensor([0, 1, 2, 4, 9]), cfg).tolist() == [[2.0, 1.625, 1.25, 0.5, 0.5]]


def test_impressions_without_clicks_fade_the_calibration_and_clicks_buy_more() -> None:
    cfg = ColdStartConfig(scale=1.0, offset=1.0, full_evidence=4, impressions_per_click=10)
    clicks = torch.tensor([0, 0, 0, 1, 1, 2])
    shown = torch.tensor([0, 5, 10, 10, 20, 15])
    # (1 - clicks/4) * (1 - shown / (10 (clicks + 1)))
    assert evidence_fade(clicks, cfg, shown).tolist() == [1.0, 0.5, 0.0, 0.375, 0.0, 0.25]
    off = ColdStartConfig(scale=1.0, offset=1.0, full_evidence=4)
    assert evidence_fade(clicks, off, shown).tolist() == evidence_fade(clicks, off).tolist(), "0 = by clicks only"
    assert [calibration_spent(int(n), int(m), cfg) for n, m in zip(clicks, shown, strict=True)] == [
        False,
        False,
        True,
        False,
        True,
        False,
    ]
    assert calibration_spent(4, 0, cfg) and not calibration_spent(3, 1000, off)


def test_a_new_item_shown_without_clicks_leaves_the_pool_and_a_restart_keeps_its_impressions(tmp_path: Path) -> None:
    rec = make(tmp_path, fade=FadeConfig(impressions_per_click=3))  # 3 impressions per click + 1
    rec.apply_catalogue([*items(20), new_item()])
    scores = []
    for n in range(2):
        got = top_of(rec, n, f"u{n}", "i3")
        scores.append(next(s.score for s in got if s.item_id == "new-lipstick"))
    assert scores[1] < scores[0], "each impression without a click takes a third of the offset"
    assert rec.sequences.item_impressions("new-lipstick") == 2
    rec.handle_clicks([click(0, "u0", "i3")])  # a redelivery: its list is not a new impression
    assert rec.sequences.item_impressions("new-lipstick") == 2
    rec.close()
    again = make(tmp_path, fade=FadeConfig(impressions_per_click=3))
    assert again.catalogue.get("new-lipstick").row in again.new_items, "two of three impressions: still held"
    top_of(again, 7, "u7", "i3")
    assert len(again.new_items) == 0 and len(again.index) == 21, "the third impression spent the calibration"
    assert not any(s.new for s in top_of(again, 8, "u8", "i3"))
    again.close()


def test_a_click_buys_a_new_item_more_impressions(tmp_path: Path) -> None:
    rec = make(tmp_path, fade=FadeConfig(impressions_per_click=2))
    rec.apply_catalogue([*items(20), new_item()])
    top_of(rec, 1, "u1", "i3")
    rec.handle_clicks([click(2, "u2", "new-lipstick")])  # u2's own list excludes the item it clicked
    top_of(rec, 3, "u3", "i3")
    assert rec.sequences.item_impressions("new-lipstick") == 2
    assert rec.catalogue.get("new-lipstick").row in rec.new_items, "one click: a budget of 2 x 2 impressions"
    top_of(rec, 4, "u4", "i3")
    top_of(rec, 5, "u5", "i3")
    assert len(rec.new_items) == 0, "four impressions and one click: spent"
    rec.close()


class LearnedModel(CalibratedModel):
    """As CalibratedModel, with the clicks its ID rows were trained on for some new items."""

    def __init__(self, trained: dict[str, int]) -> None:
        super().__init__(ContentBaseline(CFG))
        self.trained = trained

    def trained_clicks(self, item_ids: list[str]) -> list[int]:
        return [self.trained.get(i, 0) for i in item_ids]


def test_fading_by_trained_clicks_keeps_the_calibration_until_the_model_learns_the_item(tmp_path: Path) -> None:
    """fade_by="trained": clicks seen do not fade a new item under a model that never learned it
    (a frozen model); a version trained on its clicks does."""
    rec = make(tmp_path, fade=FadeConfig(fade_by="trained"), model=LearnedModel({}))
    rec.apply_catalogue([*items(20), new_item()])
    first = top_of(rec, 1, "u1", "i3")[0]
    rec.handle_clicks([click(n, f"v{n}", "new-lipstick") for n in range(2, 6)])  # 4 clicks, full_evidence 3
    again = next(s for s in top_of(rec, 9, "u1", "i4") if s.item_id == "new-lipstick")
    assert again.new and again.score == pytest.approx(first.score, abs=0.2), "no fade: the model has not learned it"
    rec.swap_model(rec.prepare_model(LearnedModel({"new-lipstick": 3})))
    assert len(rec.new_items) == 0 and len(rec.index) == 21, "learned from 3 clicks: scored like any other"
    rec.close()


def test_the_fade_counts_evidence_and_budgets_impressions_by_clicks_seen() -> None:
    cfg = ColdStartConfig(scale=1.0, offset=1.0, full_evidence=4, impressions_per_click=10, fade_by="trained")
    trained, seen, shown = torch.tensor([0, 2, 0]), torch.tensor([3, 2, 0]), torch.tensor([20, 15, 5])
    # (1 - trained/4) * (1 - shown / (10 (seen + 1)))
    assert evidence_fade(trained, cfg, shown, seen).tolist() == [0.5, 0.25, 0.5]
    assert not calibration_spent(0, 39, cfg, clicks=3) and calibration_spent(0, 40, cfg, clicks=3)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    users=st.integers(1, 5),
    pool=st.integers(0, 12),
    k=st.integers(1, 8),
    slots=st.integers(0, 4),
)
def test_the_quota_never_exceeds_its_slots_and_flags_them(
    data: st.DataObject, users: int, pool: int, k: int, slots: int
) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    n_main, dim = 30, 4
    matrix = rng.normal(size=(n_main + pool, dim)).astype(np.float32)  # rows 0..29 warm, the rest pooled
    explore = ExploreConfig(slots=slots, max_age_s=100.0)
    held = NewItems(ColdStartConfig(scale=1.0, offset=0.0, fit="none"), explore)
    now = 1000.0
    ages = data.draw(st.lists(st.floats(0, 300), min_size=pool, max_size=pool))
    for j, age in enumerate(ages):
        held.offer(n_main + j, f"n{j}", False, now - age, 0, now)
    u = rng.normal(size=(users, dim)).astype(np.float32)
    main = u @ matrix[:n_main].T
    order = np.argsort(-main, axis=1)[:, :k]
    main_scores, main_ids = np.take_along_axis(main, order, 1).astype(np.float32), order.astype(np.int64)
    exclude = [set(rng.choice(n_main + pool, size=3, replace=False).tolist()) for _ in range(users)]
    for b in range(users):  # the main index never returns history
        keep = [i for i in range(k) if int(main_ids[b, i]) not in exclude[b]]
        main_ids[b] = np.array([*main_ids[b, keep], *[-1] * (k - len(keep))])
        main_scores[b] = np.array([*main_scores[b, keep], *[-np.inf] * (k - len(keep))], dtype=np.float32)
    out = held.rank(u, main_scores, main_ids, matrix, exclude, k, now)
    young = {n_main + j for j, age in enumerate(ages) if age < 100.0}
    for b in range(users):
        listed = [int(i) for i in out.ids[b] if i >= 0]
        assert len(listed) == len(set(listed)), "no item twice"
        assert not set(listed) & exclude[b], "never the user's history"
        assert out.explore[b].sum() <= slots
        assert all(int(out.ids[b, s]) in young for s in np.flatnonzero(out.explore[b])), "quota slots hold young items"
        available = len(young - exclude[b])
        assert sum(int(i) in young for i in listed) >= min(slots, available, k), "the quota is filled when it can be"


@pytest.mark.parametrize("slots", [1, 2])
def test_recommendations_flag_exploration_slots(tmp_path: Path, slots: int) -> None:
    clock = [1000.0]
    rec = make(tmp_path, ExploreConfig(slots=slots, max_age_s=3600), clock)
    rec.apply_catalogue(items(20))
    clock[0] += 7200  # the first twenty are two hours old when the next three arrive
    # Unlike anything the user clicked: they reach the list only through the quota.
    rec.apply_catalogue(
        [CatalogueRecord(f"young-{x}", "upsert", T0, f"garden hose {x}", ("Garden",), "Other") for x in "abc"]
    )
    got = top_of(rec, 1, "u1", "i3")
    flagged = [s.item_id for s in got if s.explore]
    assert len(flagged) == slots and all(i.startswith("young-") for i in flagged)
    assert [s.item_id for s in got if s.item_id.startswith("young-")] == flagged
    assert len(rec.index) == 20, "the old items joined the index once they were too old to explore"


class KnowsEverything(BaselineServingModel):
    """A model swapped in later that has an ID row for every item (e.g. after fine-tuning)."""

    @property
    def cold_start(self) -> ColdStartConfig:
        return COLD


def test_a_swap_to_a_model_that_knows_the_item_keeps_its_calibration_until_the_evidence_is_complete(
    tmp_path: Path,
) -> None:
    rec = make(tmp_path)
    rec.apply_catalogue([*items(20), new_item()])
    rec.handle_clicks([click(1, "u2", "new-lipstick")])
    rec.swap_model(rec.prepare_model(KnowsEverything(ContentBaseline(CFG))))
    assert rec.catalogue.get("new-lipstick").row in rec.new_items, "the item arrived unseen: still calibrated"
    assert top_of(rec, 2, "u1", "i3")[0].new
    rec.handle_clicks([click(3, "u3", "new-lipstick"), click(4, "u4", "new-lipstick")])
    assert len(rec.new_items) == 0 and len(rec.index) == 21


def test_an_id_map_gives_unseen_items_a_predicted_id_vector_and_round_trips(tmp_path: Path) -> None:
    from dataclasses import replace as dc_replace

    from streamrec.models.checkpoint import load_checkpoint, save_checkpoint
    from streamrec.models.cold_start import fit_id_map, map_ids

    torch.manual_seed(0)
    f = features()
    model = SeqRec(tiny("mufasa"), f).eval()
    with torch.no_grad():
        model.id_emb.weight[3] = 0.0  # an item never trained: no ID vector
        content = model.fusion(f)[0]  # (N+1, D)
        warm = torch.tensor([r for r in range(1, f.n_rows) if r != 3])
        id_map = fit_id_map(content[warm], model.id_emb.weight[warm], ridge=0.1)
        model.set_id_map(id_map)
        table = model.item_table().vectors
        torch.testing.assert_close(table[3], map_ids(content[3:4], id_map)[0] + content[3])
        torch.testing.assert_close(table[5], model.id_emb.weight[5] + content[5], msg="warm items keep their own")
    save_checkpoint(tmp_path / "m.pt", model, model.cfg, "v1", {})
    cfg, state, _, _ = load_checkpoint(tmp_path / "m.pt")
    again = SeqRec(cfg, f).eval()
    again.load_state_dict(state)
    torch.testing.assert_close(again.item_table().vectors, table)
    plain = SeqRec(dc_replace(cfg, cold=ColdStartConfig()), f)
    assert "id_map" not in plain.state_dict(), "models without a map keep the old state dict"


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.sampled_from([0.5, 1.0, 2.0]), n_new=st.integers(1, 9))
def test_fast_calibration_ranks_equal_the_reference(seed: int, scale: float, n_new: int) -> None:
    from streamrec.models.cold_start import ndcg10_by_offset, ndcg10_reference

    g = torch.Generator().manual_seed(seed)
    n_items, b = 30, 7
    # Small integer scores make ties common; some history entries are -inf; row 0 is padding.
    s = torch.randint(-4, 5, (b, n_items + 1), generator=g).float()
    s[torch.rand(b, n_items + 1, generator=g) < 0.1] = float("-inf")
    s[:, 0] = float("-inf")
    new_rows = torch.randperm(n_items, generator=g)[:n_new] + 1
    targets = torch.randint(1, n_items + 1, (b,), generator=g)
    s[torch.arange(b), targets] = torch.randint(-4, 5, (b,), generator=g).float()  # a target is never masked
    offsets = torch.tensor([0.0, -1.0, 0.5, 1.0, 3.0])

    def batches():  # noqa: ANN202 - the ScoreBatches callable
        return iter([(s, targets)])

    torch.testing.assert_close(
        ndcg10_by_offset(batches, new_rows, scale, offsets), ndcg10_reference(batches, new_rows, scale, offsets)
    )


def grid_of(points: list[tuple[float, float]]) -> CalibrationGrid:
    """A grid of (warm, cold) validation NDCG@10 points, offset = index; warm alone 0.1, 90 warm
    and 10 cold validation pairs."""
    rows = [{"scale": 1.0, "offset": float(i), "warm_ndcg10": w, "cold_ndcg10": c} for i, (w, c) in enumerate(points)]
    return CalibrationGrid(rows, warm_alone=0.1, n_warm=90, n_cold=10)


@settings(max_examples=60, deadline=None)
@given(
    points=st.lists(
        st.tuples(st.floats(0.0, 0.1), st.floats(0.0, 0.1)),  # (warm, cold) validation NDCG@10
        min_size=1,
        max_size=30,
    ),
    floors=st.lists(st.floats(0.5, 1.0), min_size=2, max_size=4),
)
def test_a_lower_warm_floor_never_buys_fewer_cold_hits_and_every_choice_keeps_its_floor(
    points: list[tuple[float, float]], floors: list[float]
) -> None:
    grid = grid_of(points)
    by_offset = {p["offset"]: p for p in grid.points}
    chosen = {}
    for floor in sorted(floors, reverse=True):
        pick = by_offset[grid.choose(ColdStartConfig(fit="warm_floor", warm_floor=floor)).offset]
        if any(p["warm_ndcg10"] >= floor * 0.1 for p in grid.points):
            assert pick["warm_ndcg10"] >= floor * 0.1, "the choice costs warm items more than the floor allows"
        chosen[floor] = pick["cold_ndcg10"]
    cold_by_floor = [chosen[f] for f in sorted(chosen, reverse=True)]
    assert cold_by_floor == sorted(cold_by_floor), "a lower floor chose fewer cold hits"
    pooled = by_offset[grid.choose(ColdStartConfig(fit="pooled")).offset]
    best = max(90 * p["warm_ndcg10"] + 10 * p["cold_ndcg10"] for p in grid.points)
    assert 90 * pooled["warm_ndcg10"] + 10 * pooled["cold_ndcg10"] == best


@settings(max_examples=60, deadline=None)
@given(
    points=st.lists(st.tuples(st.floats(0.001, 0.1), st.floats(0.0, 0.1)), min_size=1, max_size=30),
    share=st.floats(0.1, 1.0),
)
def test_the_cold_share_fit_keeps_the_most_warm_quality_among_points_giving_new_items_their_share(
    points: list[tuple[float, float]], share: float
) -> None:
    grid = grid_of(points)
    pick = grid.points[int(grid.choose(ColdStartConfig(fit="cold_share", cold_share=share)).offset)]
    meeting = [p for p in grid.points if p["cold_ndcg10"] >= share * p["warm_ndcg10"]]
    if meeting:
        assert pick in meeting, "the choice does not give new items their share"
        assert pick["warm_ndcg10"] == max(p["warm_ndcg10"] for p in meeting)
    else:
        best_ratio = max(p["cold_ndcg10"] / p["warm_ndcg10"] for p in grid.points)
        assert pick["cold_ndcg10"] / pick["warm_ndcg10"] == best_ratio, "not the point closest to the share"


def test_the_cli_offers_every_fit_rule_and_only_those() -> None:
    from streamrec.cli import build_parser
    from streamrec.models.cold_start import FITS

    bench = next(a for a in build_parser()._subparsers._group_actions[0].choices["bench"]._actions if a.choices)
    coldstart = bench.choices["coldstart"]
    fit = next(a for a in coldstart._actions if a.dest == "fit")
    assert tuple(fit.choices) == FITS
