"""The cold-start protocol never lets a held-out item into training or histories."""

from __future__ import annotations

from streamrec.bench.coldstart import coldstart_split


def test_held_out_items_appear_only_as_cold_targets() -> None:
    seqs = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [2, 4, 6, 8, 10, 1], [3, 5], [9, 8, 7, 6]]
    cs = coldstart_split(seqs, n_items=10, holdout=0.3, seed=1)
    split, cold_test, cold = cs.train, cs.cold_test, cs.held_out
    assert len(cold) == 3
    for seq in split.train:
        assert not set(seq) & cold
    for hist, target in split.valid + split.test:
        assert not set(hist) & cold and target not in cold
    assert cold_test, "some user's last click is a held-out item"
    for hist, target in cold_test:
        assert target in cold and not set(hist) & cold
    users_tested = len(split.test) + len(cold_test)
    assert users_tested == sum(1 for s in seqs if len(s) >= 3 and [r for r in s[:-1] if r not in cold])


def test_cold_validation_pairs_end_on_a_held_out_second_last_click_and_never_see_the_test_click() -> None:
    seqs = [[1, 2, 3, 4, 5, 6], [6, 7, 8, 9, 10, 2], [2, 4, 6, 8, 10, 1], [3, 5, 7, 9, 1, 2], [9, 8, 7, 6, 5]]
    cs = coldstart_split(seqs, n_items=10, holdout=0.3, seed=1)
    assert cs.cold_valid, "some user's second-last click is a held-out item"
    expected = [
        ([r for r in s[:-2] if r not in cs.held_out], s[-2])
        for s in seqs
        if s[-2] in cs.held_out and [r for r in s[:-2] if r not in cs.held_out]
    ]
    assert cs.cold_valid == expected
