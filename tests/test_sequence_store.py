"""One contract, run against the RocksDB store and the in-memory twin."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.state.sequence_store import (
    ClickToAppend,
    InMemorySequenceStore,
    RocksSequenceStore,
    SequenceStore,
)

Factory = Callable[[int], SequenceStore]


@pytest.fixture(params=["rocksdb", "memory"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    def factory(max_len: int) -> SequenceStore:
        if request.param == "rocksdb":
            return RocksSequenceStore(tmp_path / "seq", max_len=max_len)
        return InMemorySequenceStore(max_len=max_len)

    return factory


def c(user: str, item: str, n: int) -> ClickToAppend:
    return ClickToAppend(user, item, f"{user}-e{n}", 1_700_000_000_000 + n)


def test_appends_in_order_per_user(make_store: Factory) -> None:
    store = make_store(100)
    applied = store.append_many([c("u1", "a", 1), c("u2", "x", 2), c("u1", "b", 3), c("u10", "z", 4)])
    assert applied == [True, True, True, True]
    assert store.sequence("u1") == ["a", "b"]
    assert store.sequence("u10") == ["z"], "user ids that share a prefix stay apart"
    assert store.records("u2")[0].event_time_ms == 1_700_000_000_002
    assert store.length("u1") == 2 and store.length("nobody") == 0
    assert store.sequence("nobody") == []
    assert store.n_users() == 3
    assert sorted(store.users()) == ["u1", "u10", "u2"]


def test_redelivered_events_are_not_appended_twice(make_store: Factory) -> None:
    store = make_store(100)
    store.append_many([c("u1", "a", 1), c("u1", "b", 2)])
    again = store.append_many([c("u1", "b", 2), c("u1", "c", 3), c("u1", "c", 3)])
    assert again == [False, True, False], "duplicates across and inside batches are refused"
    assert store.total("u1") == 3, "duplicates are not counted"
    assert store.sequence("u1") == ["a", "b", "c"]


@pytest.mark.parametrize("cap", [1, 3, 4])
def test_cap_keeps_the_latest(make_store: Factory, cap: int) -> None:
    store = make_store(cap)
    clicks = [c("u1", f"i{n}", n) for n in range(7)]
    store.append_many(clicks[:2])
    store.append_many(clicks[2:])  # crosses the cap inside one batch
    assert store.sequence("u1") == [f"i{n}" for n in range(7)][-cap:]
    assert store.length("u1") == cap
    assert store.total("u1") == 7, "total counts evicted clicks too"
    assert store.total("nobody") == 0
    # A still-live event is a duplicate; an evicted one is not remembered any more.
    assert store.append(clicks[-1]) is False
    assert store.sequence("u1")[-1] == "i6"


def test_one_at_a_time_equals_batched(make_store: Factory, tmp_path: Path) -> None:
    clicks = [c(f"u{n % 3}", f"i{n}", n) for n in range(40)] + [c("u1", "i1", 1)]
    batched = make_store(8)
    batched.append_many(clicks)
    single = InMemorySequenceStore(max_len=8)
    for click in clicks:
        single.append(click)
    for user in ("u0", "u1", "u2"):
        assert batched.records(user) == single.records(user)


def test_rocksdb_store_survives_reopen(tmp_path: Path) -> None:
    store = RocksSequenceStore(tmp_path / "seq", max_len=5)
    store.append_many([c("u1", f"i{n}", n) for n in range(8)])
    store.close()
    reopened = RocksSequenceStore(tmp_path / "seq", max_len=5)
    assert reopened.sequence("u1") == ["i3", "i4", "i5", "i6", "i7"]
    assert reopened.n_users() == 1
    assert reopened.append(c("u1", "i7", 7)) is False, "de-duplication survives a restart"
    reopened.close()


def test_applied_offsets_are_recorded_with_the_clicks(make_store: Factory) -> None:
    store = make_store(10)
    assert store.applied_offset(0) == -1
    store.append_many([c("u1", "a", 1), c("u2", "b", 2)], positions={0: 41, 3: 7})
    assert store.applied_offset(0) == 41 and store.applied_offset(3) == 7
    store.append_many([c("u1", "a", 1)], positions={0: 42})  # a duplicate still advances the offset
    assert store.applied_offset(0) == 42
    store.append_many([], positions={0: 40})  # never moves backwards
    assert store.applied_offset(0) == 42


def test_has_event_follows_the_live_sequence(make_store: Factory) -> None:
    store = make_store(2)
    store.append_many([c("u1", "a", 1), c("u1", "b", 2)])
    assert store.has_event("u1", "u1-e1") and store.has_event("u1", "u1-e2")
    assert not store.has_event("u2", "u1-e1"), "event ids are per user"
    store.append(c("u1", "c", 3))
    assert not store.has_event("u1", "u1-e1"), "an evicted event is no longer held"
    assert store.has_event("u1", "u1-e3")


def test_item_clicks_count_each_applied_click_once(make_store: Factory) -> None:
    store = make_store(3)
    store.append_many([c("u1", "new", 1), c("u2", "new", 1), c("u1", "old", 2), c("u1", "new", 1)])
    store.append_many([c("u2", "new", 1), c("u3", "new", 5)])  # one redelivery, one new click
    assert store.item_clicks("new") == 3
    assert store.item_clicks("old") == 1
    assert store.item_clicks("never") == 0
    store.append_many([c("u1", "x", n) for n in range(10, 20)])  # the cap evicts u1's clicks
    assert store.item_clicks("new") == 3, "evidence counts clicks ever applied, not live ones"
    store.close()


def test_item_impressions_add_up_per_item(make_store: Factory) -> None:
    store = make_store(3)
    assert store.item_impressions("new") == 0
    store.add_impressions({"new": 2, "other": 1})
    store.add_impressions({"new": 3})
    store.add_impressions({})
    assert (store.item_impressions("new"), store.item_impressions("other")) == (5, 1)
    assert store.item_clicks("new") == 0, "impressions are not clicks"
    store.close()


def test_item_evidence_survives_a_restart(tmp_path: Path) -> None:
    store = RocksSequenceStore(tmp_path / "seq", max_len=5)
    store.append_many([c(f"u{n}", "new", n) for n in range(4)])
    store.close()
    reopened = RocksSequenceStore(tmp_path / "seq", max_len=5)
    assert reopened.item_clicks("new") == 4
    reopened.add_impressions({"new": 7})
    reopened.close()
    reopened = RocksSequenceStore(tmp_path / "seq", max_len=5)
    assert (reopened.item_clicks("new"), reopened.item_impressions("new")) == (4, 7)
    reopened.append_many([c("u0", "new", 0), c("u9", "new", 9)])  # a redelivery and a new click
    assert reopened.item_clicks("new") == 5
    reopened.close()


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 5), st.integers(0, 30)), max_size=8),
            st.sampled_from("abc"),
        ),
        max_size=25,
    ),
    cap=st.integers(1, 6),
    cache_users=st.integers(0, 2),
)
def test_cached_sequences_equal_what_the_database_holds(
    tmp_path_factory: pytest.TempPathFactory, steps: list, cap: int, cache_users: int
) -> None:
    """The RocksDB store serves recent users' sequences from memory: after any appends (duplicates,
    the cap, users evicted from the cache and read back), they equal the twin's and a fresh
    store's read of the same database."""
    path = tmp_path_factory.mktemp("seq")
    store = RocksSequenceStore(path, max_len=cap, cache_users=cache_users)
    twin = InMemorySequenceStore(max_len=cap)
    for batch, read in steps:
        # (user, item, event number): a repeated (user, event number) is a redelivery
        clicks = [ClickToAppend(u, f"i{item}", f"{u}-e{n}", 1_700_000_000_000 + n) for u, item, n in batch]
        assert store.append_many(clicks) == twin.append_many(clicks)
        assert store.sequence(read) == twin.sequence(read)
    store.close()
    reopened = RocksSequenceStore(path, max_len=cap, cache_users=0)
    for user in "abc":
        assert reopened.sequence(user) == twin.sequence(user)
