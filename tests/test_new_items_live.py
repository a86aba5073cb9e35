"""The live new-items bench's plain parts: when new items are published, and how hits are counted."""

from __future__ import annotations

import pytest

from streamrec.bench.new_items_live import interleave, live_figures, print_hit_rates
from streamrec.datasets.schema import Event, Item
from streamrec.stream.schemas import RecommendationRecord, ScoredItem


def ev(n: int, user: str, item: str) -> Event:
    return Event(user, item, 1000 + n, f"e{n}")


def test_each_new_item_is_published_lead_clicks_before_its_first_click() -> None:
    clicks = [ev(0, "a", "w1"), ev(1, "b", "w2"), ev(2, "a", "n1"), ev(3, "c", "n1"), ev(4, "b", "n2")]
    new = {"n1": Item("n1", "one"), "n2": Item("n2", "two"), "n3": Item("n3", "never clicked")}
    steps = interleave(clicks, new, lead=1)
    order = [s.item.item_id if s.item else s.click.event_id for s in steps]
    assert order == ["n3", "e0", "n1", "e1", "e2", "n2", "e3", "e4"]
    assert [s.click for s in steps if s.click] == clicks, "every click once, in order"


def rec(event: str, user: str, items: list[str], version: str, new: tuple[str, ...] = ()) -> RecommendationRecord:
    scored = [ScoredItem(i, 1.0, new=i in new) for i in items]
    return RecommendationRecord(user, scored, version, event, 0, 0)


def test_a_hit_is_the_clicked_item_in_the_users_previous_list_counted_by_that_lists_version() -> None:
    clicks = [ev(0, "a", "w1"), ev(1, "a", "n1"), ev(2, "a", "w2"), ev(3, "b", "n1"), ev(4, "b", "w1")]
    answers = {
        "e0": rec("e0", "a", ["n1", "w3"], "v1", new=("n1",)),  # e1 clicks n1: a new-item hit for v1
        "e1": rec("e1", "a", ["w3", "w4"], "v1"),  # e2 clicks w2: a warm miss for v1
        "e2": rec("e2", "a", ["w1"], "v2"),
        "e3": rec("e3", "b", ["w1", "n2"], "v2"),  # e4 clicks w1: a warm hit for v2; e3 had no previous list
    }
    out = live_figures(clicks, answers, {"n1", "n2"})
    assert out["live_hit_rate"]["all"]["new"] == {"clicks": 1, "hits": 1, "hit_rate": 1.0}
    assert out["live_hit_rate"]["all"]["warm"] == {"clicks": 2, "hits": 1, "hit_rate": 0.5}
    assert out["live_hit_rate"]["v1"]["warm"]["hit_rate"] == 0.0
    assert out["live_hit_rate"]["v2"]["warm"]["hit_rate"] == 1.0
    assert out["recommended_slots"] == 7
    assert out["share_new_items"] == 2 / 7 and out["share_flagged_new"] == 1 / 7
    assert out["share_new_items_by_version"] == {"v1": 1 / 4, "v2": 1 / 3}
    # By stretch of the replay (clicks e0-e4 in 5 stretches, one click each; e0 and e3 had no
    # previous list): e1 a new hit, e2 a warm miss, e4 a warm hit.
    by_stretch = live_figures(clicks, answers, {"n1", "n2"}, segments=5)["live_hit_rate_by_stretch"]
    assert by_stretch == {
        "stretch 2 of 5": {"new": {"clicks": 1, "hits": 1, "hit_rate": 1.0}},
        "stretch 3 of 5": {"warm": {"clicks": 1, "hits": 0, "hit_rate": 0.0}},
        "stretch 5 of 5": {"warm": {"clicks": 1, "hits": 1, "hit_rate": 1.0}},
    }


def test_the_printed_table_has_a_row_per_version_and_stretch_and_kind(capsys: pytest.CaptureFixture[str]) -> None:
    clicks = [ev(0, "a", "w1"), ev(1, "a", "n1"), ev(2, "a", "w2")]
    answers = {"e0": rec("e0", "a", ["n1", "w3"], "v1", new=("n1",)), "e1": rec("e1", "a", ["w3"], "v2")}
    print_hit_rates(live_figures(clicks, answers, {"n1"}, segments=3))
    lines = capsys.readouterr().out.splitlines()[1:]  # after the header
    assert [line.split()[:3] for line in lines] == [
        ["all", "new", "1"],
        ["all", "warm", "1"],
        ["v1", "new", "1"],
        ["v2", "warm", "1"],
        ["stretch", "2", "of"],
        ["stretch", "3", "of"],
    ]
    assert lines[2].split()[-1] == "50.0%", "v1 gave one of its two slots to a new item"
    assert lines[3].split()[-1] == "0.0%", "v2's list held no new item"
