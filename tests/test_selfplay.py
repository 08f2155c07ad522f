"""Pair selection in round 0 (paper §4.1) and in the self-play rounds (Eq. 9–10)."""

import pytest

from hermesflow.selfplay import (
    BELOW_THRESHOLD, IMPROVED, INITIAL, INVERTED, NOT_IMPROVED, TIE, Pair, Sample, initial_pair, update_pair,
)


def samples(*scores: float) -> list[Sample]:
    return [Sample(i, s) for i, s in enumerate(scores)]


PREVIOUS = Pair(Sample("w_prev", 0.7), Sample("l_prev", 0.3))


def test_initial_pair_is_best_over_worst():
    assert initial_pair(samples(0.5, 0.9, 0.1, 0.4)) == (Pair(Sample(1, 0.9), Sample(2, 0.1)), INITIAL)


def test_initial_ties_are_dropped():
    assert initial_pair(samples(0.5, 0.5, 0.5)) == (None, TIE)
    assert initial_pair(samples(0.5)) == (None, TIE)


def test_initial_equal_best_scores_pick_the_first():
    pair, _ = initial_pair(samples(0.9, 0.1, 0.9, 0.1))
    assert pair == Pair(Sample(0, 0.9), Sample(1, 0.1))


def test_initial_threshold_is_strict():  # the paper keeps x_w only if Acc(x_w) > 0.6
    assert initial_pair(samples(0.6, 0.2), min_chosen_score=0.6) == (None, BELOW_THRESHOLD)
    assert initial_pair(samples(0.61, 0.2), min_chosen_score=0.6)[1] == INITIAL


def test_improved_pairs_new_best_with_previous_winner():
    assert update_pair(PREVIOUS, samples(0.2, 0.8, 0.5)) == (Pair(Sample(1, 0.8), Sample("w_prev", 0.7)), IMPROVED)


def test_not_improved_pairs_new_best_with_previous_loser():
    assert update_pair(PREVIOUS, samples(0.2, 0.6)) == (Pair(Sample(1, 0.6), Sample("l_prev", 0.3)), NOT_IMPROVED)


def test_equal_to_previous_winner_is_not_an_improvement():  # Eq. 10 needs s(y_max) > s(y_w)
    assert update_pair(PREVIOUS, samples(0.7)) == (Pair(Sample(0, 0.7), Sample("l_prev", 0.3)), NOT_IMPROVED)


@pytest.mark.parametrize("best", [0.3, 0.1])
def test_inverted_or_equal_pair_is_dropped(best):
    assert update_pair(PREVIOUS, samples(best, 0.0)) == (None, INVERTED)


def test_no_previous_pair_falls_back_to_initial():
    new = samples(0.2, 0.9, 0.4)
    assert update_pair(None, new) == initial_pair(new)
    assert update_pair(None, samples(0.4, 0.4)) == (None, TIE)


def test_update_threshold_applies_to_the_new_winner():
    assert update_pair(PREVIOUS, samples(0.5), min_chosen_score=0.6) == (None, BELOW_THRESHOLD)
    assert update_pair(PREVIOUS, samples(0.8), min_chosen_score=0.6)[1] == IMPROVED


def test_update_equal_best_scores_pick_the_first():
    pair, _ = update_pair(PREVIOUS, [Sample("a", 0.9), Sample("b", 0.9)])
    assert pair.chosen.key == "a"


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="no samples"):
        initial_pair([])
    with pytest.raises(ValueError, match="finite"):
        update_pair(PREVIOUS, samples(0.5, float("nan")))
