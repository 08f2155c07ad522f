"""Choosing a preference pair from scored samples, in round 0 and in the self-play rounds (Eq. 10).

The same rules serve both branches: captions scored by similarity to y (understanding) and images
scored by self-VQA (generation, which also requires the winner to pass a threshold: the paper keeps
x_w only if Acc(x_w) > 0.6). An image's ranking score may differ from the accuracy the threshold
tests: the graded self-score (mean probability of the correct answers) ranks, so that images of
equal hard accuracy are ordered, while the 0.6 threshold stays on the hard accuracy (`Sample.accuracy`).
Pure functions over small records, so that curation can store, reload and re-score pairs between
rounds. Every function returns (pair, reason): the pair is None when it is dropped, and the reason
says why, so the round manifest can count drops by cause.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

# Reasons for a kept pair.
INITIAL = "initial"            # round 0 (or no previous pair): best vs worst of the new samples
IMPROVED = "improved"          # Eq. 10, first case: (s_max, w_{i-1})
NOT_IMPROVED = "not_improved"  # Eq. 10, second case: (s_max, l_{i-1})
PERTURBED = "perturbed"        # best sample over an image drawn for a perturbed caption (`contrast_pair`)
# Reasons for a dropped pair.
TIE = "tie"                            # round 0: the best sample does not score above the worst
INVERTED = "inverted"                  # Eq. 10's new winner does not score above its loser
BELOW_THRESHOLD = "below_threshold"    # the winner does not pass `min_chosen_score`
NOT_WORSE = "rejected_not_worse"       # `contrast_pair`: the given rejected sample scores at least as well as the best


@dataclass(frozen=True)
class Sample:
    """One sampled output and its score: `key` identifies it (a caption's text, or an index into
    stored image token ids); `score` ranks it (similarity, self-VQA accuracy or the graded
    self-score; higher is better); `accuracy` is what the threshold tests when that is not the
    score itself (the hard self-VQA accuracy of a graded image), None when it is."""

    key: str | int
    score: float
    accuracy: float | None = None

    @property
    def gate(self) -> float:
        """The value `min_chosen_score` is compared with."""
        return self.score if self.accuracy is None else self.accuracy


@dataclass(frozen=True)
class Pair:
    """A preference pair: `chosen` (the winner, y_w or x_w) over `rejected` (y_l or x_l)."""

    chosen: Sample
    rejected: Sample


def initial_pair(samples: Sequence[Sample], min_chosen_score: float | None = None) -> tuple[Pair | None, str]:
    """Round 0 (paper §4.1): best sample → chosen, worst → rejected.

    Dropped with TIE when the best does not score strictly above the worst (a pair of equals
    teaches nothing and its direction would be arbitrary), and with BELOW_THRESHOLD when
    `min_chosen_score` is given and the best's `gate` (its accuracy, else its score) is not strictly
    above it. Among equal scores
    the first sample in order wins, so a run is reproducible.
    """
    best, worst = _best(samples), min(samples, key=lambda s: s.score)
    if best.score <= worst.score:
        return None, TIE
    return _threshold(Pair(best, worst), min_chosen_score, INITIAL)


def update_pair(previous: Pair | None, samples: Sequence[Sample],
                min_chosen_score: float | None = None) -> tuple[Pair | None, str]:
    """Round i ≥ 1 (paper Eq. 9–10), with s_max the best of the new samples:

        (w_i, l_i) = (s_max, w_{i−1})  if score(s_max) > score(w_{i−1})
                   = (s_max, l_{i−1})  otherwise

    If the model improved, its old winner becomes the bar to beat; if not, the old loser keeps the
    pair easy (the paper's "smoother learning gradient"). Then the pair is dropped (INVERTED) if
    score(w_i) ≤ score(l_i), and the threshold rule applies
    as in `initial_pair`. With no previous pair (it was dropped, or the example is new) this is
    `initial_pair` on the new samples. The previous pair's scores should come from the same judge
    as the new samples (the generation branch re-scores old images with the current model).
    """
    if previous is None:
        return initial_pair(samples, min_chosen_score)
    _check_finite(previous.chosen, previous.rejected)
    s_max = _best(samples)
    if s_max.score > previous.chosen.score:
        pair, reason = Pair(s_max, previous.chosen), IMPROVED
    else:
        pair, reason = Pair(s_max, previous.rejected), NOT_IMPROVED
    if pair.chosen.score <= pair.rejected.score:
        return None, INVERTED
    return _threshold(pair, min_chosen_score, reason)


def contrast_pair(samples: Sequence[Sample], rejected: Sample,
                  min_chosen_score: float | None = None) -> tuple[Pair | None, str]:
    """The best sample over a given `rejected` one (an image drawn for a perturbed caption, judged
    on the true caption's questions): pairs that differ in one named attribute, whatever the round
    (Eq. 10 does not apply: its loser would be a sample of the true caption). Dropped with NOT_WORSE
    when the rejected scores at least as well as the best, then the threshold rule applies."""
    best = _best(samples)
    _check_finite(rejected)
    if best.score <= rejected.score:
        return None, NOT_WORSE
    return _threshold(Pair(best, rejected), min_chosen_score, PERTURBED)


def _best(samples: Sequence[Sample]) -> Sample:
    if not samples:
        raise ValueError("no samples to choose a pair from")
    _check_finite(*samples)
    return max(samples, key=lambda s: s.score)  # max() keeps the first of equal scores


def _check_finite(*samples: Sample) -> None:
    # NaN compares false with everything and would silently pick an arbitrary pair.
    bad = [s for s in samples if not (math.isfinite(s.score) and math.isfinite(s.gate))]
    if bad:
        raise ValueError(f"sample scores must be finite numbers, got {bad[0]}")


def _threshold(pair: Pair, min_chosen_score: float | None, reason: str) -> tuple[Pair | None, str]:
    if min_chosen_score is not None and pair.chosen.gate <= min_chosen_score:
        return None, BELOW_THRESHOLD
    return pair, reason
