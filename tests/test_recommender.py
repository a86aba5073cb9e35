"""The worker's plain core, with RocksDB stores and both index kinds, no Kafka."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.models.content_baseline import ContentBaseline, ContentBaselineConfig
from streamrec.serving.recommender import Recommender
from streamrec.serving.serving_model import BaselineServingModel, UserEncoding, UserHistory
from streamrec.state.catalogue_store import CatalogueStore
from streamrec.state.item_index import ExactItemIndex, FaissItemIndex
from streamrec.state.sequence_store import InMemorySequenceStore, RocksSequenceStore
from streamrec.stream.schemas import CatalogueRecord, ClickRecord

T0 = 1_800_000_000_000
CFG = ContentBaselineConfig(dim=32, buckets=4096)


def catalogue(n: int) -> list[CatalogueRecord]:
    cats = [("Makeup", "Lips"), ("Skin Care", "Face"), ("Hair Care", "Shampoo")]
    return [CatalogueRecord(f"i{k}", "upsert", T0, f"product {k} shade {k % 5}", cats[k % 3], "Acme") for k in range(n)]


def make(tmp_path: Path, exact: bool = False) -> Recommender:
    model = BaselineServingModel(ContentBaseline(CFG))
    index = ExactItemIndex(CFG.dim) if exact else FaissItemIndex(CFG.dim)
    return Recommender(
        RocksSequenceStore(tmp_path / "seq", max_len=50), CatalogueStore(tmp_path / "cat", CFG.dim), index, model, 5
    )


def click(n: int, user: str, item: str) -> ClickRecord:
    return ClickRecord(f"e{n}", user, item, T0 + n)


def test_recommendations_exclude_history_and_carry_the_event(tmp_path: Path) -> None:
    rec = make(tmp_path)
    assert rec.apply_catalogue(catalogue(30)) == 30
    clicks = [click(n, f"u{n % 4}", f"i{(n * 7) % 30}") for n in range(24)]
    result = rec.handle_clicks(clicks)
    assert len(result.recommendations) == 24 and not result.rejected
    history: dict[str, set[str]] = {}
    for c in clicks:
        history.setdefault(c.user_id, set()).add(c.item_id)
    for c, r in zip(clicks, result.recommendations, strict=True):
        assert (r.user_id, r.event_id, r.event_time) == (c.user_id, c.event_id, c.event_time)
        assert len(r.items) == 5
        assert not ({i.item_id for i in r.items} & history[c.user_id])
        assert r.model_version == "content-v1"
        scores = [i.score for i in r.items]
        assert scores == sorted(scores, reverse=True)


def test_unknown_items_are_rejected_and_duplicates_counted(tmp_path: Path) -> None:
    rec = make(tmp_path)
    rec.apply_catalogue(catalogue(10))
    first = rec.handle_clicks([click(1, "u", "i1"), click(2, "u", "nope"), click(3, "u", "i2")])
    assert [(pos, err.reason) for pos, err in first.rejected] == [(1, "unknown_item")]
    again = rec.handle_clicks([click(3, "u", "i2"), click(4, "u", "i3")])
    assert again.duplicates == 1
    assert rec.sequences.sequence("u") == ["i1", "i2", "i3"]


def test_withdrawn_items_are_never_recommended(tmp_path: Path) -> None:
    rec = make(tmp_path, exact=True)
    rec.apply_catalogue(catalogue(8))
    top = rec.handle_clicks([click(1, "u", "i0")]).recommendations[0].items[0].item_id
    rec.apply_catalogue([CatalogueRecord(top, "withdraw", T0)])
    again = rec.handle_clicks([click(2, "u", "i3")]).recommendations[0]
    assert top not in {i.item_id for i in again.items}
    assert len(rec.index) == 7


def test_state_and_index_rebuild_after_reopen(tmp_path: Path) -> None:
    rec = make(tmp_path)
    rec.apply_catalogue(catalogue(12))
    before = rec.handle_clicks([click(1, "u", "i4"), click(2, "u", "i5")]).recommendations[-1]
    rec.close()
    reopened = make(tmp_path)
    assert len(reopened.index) == 12
    assert reopened.sequences.sequence("u") == ["i4", "i5"]
    after = reopened.handle_clicks([click(2, "u", "i5")]).recommendations[0]
    assert [i.item_id for i in after.items] == [i.item_id for i in before.items]


def test_same_results_with_in_memory_twins(tmp_path: Path) -> None:
    model = BaselineServingModel(ContentBaseline(CFG))
    real = make(tmp_path)
    twin = Recommender(
        InMemorySequenceStore(50), CatalogueStore(tmp_path / "cat2", CFG.dim), ExactItemIndex(CFG.dim), model, 5
    )
    for r in (real, twin):
        r.apply_catalogue(catalogue(40))
    clicks = [click(n, f"u{n % 3}", f"i{(n * 11) % 40}") for n in range(15)]
    a = real.handle_clicks(clicks).recommendations
    b = twin.handle_clicks(clicks).recommendations
    assert [[i.item_id for i in r.items] for r in a] == [[i.item_id for i in r.items] for r in b]


@pytest.mark.parametrize("n_hist", [1, 49, 50, 51])
def test_user_vector_uses_only_the_latest_history(tmp_path: Path, n_hist: int) -> None:
    rec = make(tmp_path / str(n_hist), exact=True)
    rec.apply_catalogue(catalogue(60))
    rows = list(range(n_hist))
    full = rec.model.encode_users([UserHistory("u", rows, n_hist)], rec._matrix, False).vectors
    tail = rec.model.encode_users([UserHistory("u", rows[-CFG.history :], n_hist)], rec._matrix, False).vectors
    assert full.shape == (1, CFG.dim)
    assert abs(float((full * tail).sum()) - 1.0) < 1e-5


class WindowedModel(BaselineServingModel):
    """The content baseline reading only its latest `window` clicks, recording what it was given."""

    def __init__(self, window: int) -> None:
        super().__init__(ContentBaseline(CFG))
        self.window = window
        self.seen: list[UserHistory] = []

    @property
    def history_window(self) -> int:
        return self.window

    def encode_users(self, histories: list[UserHistory], *args: object, **kwargs: object) -> UserEncoding:
        self.seen.extend(histories)
        return super().encode_users(histories, *args, **kwargs)


def test_the_model_gets_its_window_and_the_whole_history_stays_excluded(tmp_path: Path) -> None:
    model = WindowedModel(window=3)
    rec = Recommender(
        RocksSequenceStore(tmp_path / "seq", max_len=50), CatalogueStore(tmp_path / "cat", CFG.dim),
        ExactItemIndex(CFG.dim), model, 20,
    )  # fmt: skip
    rec.apply_catalogue(catalogue(30))
    clicked = [f"i{k}" for k in (4, 9, 4, 17, 2, 25, 11, 9)]  # a repeat inside and outside the window
    for n, item in enumerate(clicked):
        result = rec.handle_clicks([click(n, "u", item)])
    last = model.seen[-1]
    assert last.rows == [rec.catalogue.get(i).row for i in clicked[-3:]] and last.total == len(clicked)
    got = {s.item_id for s in result.recommendations[0].items}
    assert len(got) == 20 and not got & set(clicked), "an item clicked before the window was recommended"
    rec.close()


@settings(max_examples=60, deadline=None)
@given(
    placed=st.lists(st.booleans(), min_size=1, max_size=40),
    picks=st.lists(st.integers(0, 39), max_size=80),
    n=st.integers(1, 12),
)
def test_the_baseline_reads_the_latest_placed_rows_from_the_end(placed: list[bool], picks: list[int], n: int) -> None:
    from streamrec.serving.serving_model import _latest_placed

    matrix = np.zeros((len(placed), 4), dtype=np.float32)
    matrix[np.array(placed)] = 1.0
    rows = [p % len(placed) for p in picks]
    assert _latest_placed(rows, matrix, n) == [r for r in rows if np.any(matrix[r])][-n:]
