"""The statistics every figure rests on, in one place.

- `mean_ci`: a mean of per-example scores with its 95% normal interval;
- `cluster_mean_ci`: a per-question mean with a 95% interval clustered by item (questions of one
  image are not independent);
- `paired_difference` / `pooled_paired_difference`: other − base over the same eval items, paired
  by item id, for one evaluation or several (one per training seed);
- `wilson`: the 95% Wilson interval of a proportion (sound for small counts);
- `mean_by`: the mean of values grouped by item (an image's questions).
"""

from __future__ import annotations

import math

import numpy as np

from hermesflow.errors import UsageError
from hermesflow.results import PerExample


def mean_by(rows, values, n: int) -> np.ndarray:
    """The mean of `values` per item (`rows[i]` is value i's item, of `n`); 0 for an item with none."""
    totals, counts = np.zeros(n), np.zeros(n)
    np.add.at(totals, list(rows), np.asarray(values, dtype=np.float64))
    np.add.at(counts, list(rows), 1.0)
    return totals / np.maximum(counts, 1)


def mean_ci(values: np.ndarray) -> dict:
    """Mean and 95% normal interval of per-example scores."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    half = 1.96 * float(values.std(ddof=1)) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"mean": mean, "ci95": [mean - half, mean + half]}


def cluster_mean_ci(totals: np.ndarray, counts: np.ndarray) -> dict:
    """Per-question mean Σ totals / Σ counts of items holding `counts[i]` questions that add up to
    `totals[i]` (right answers, or a paired difference of them), with a 95% normal interval
    clustered by item: the ratio estimator's linearised variance
        var(r) = n / (n - 1) · Σ_i (totals_i − r · counts_i)² / (Σ_i counts_i)²
    (Cochran, Sampling Techniques, §6.4), so questions of one item count as one draw. Zero width when
    every item's total is r times its count (e.g. a difference of identical evaluations)."""
    totals, counts = np.asarray(totals, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    if totals.shape != counts.shape or totals.ndim != 1:
        raise ValueError(f"totals and counts must be 1-d of one length, got {totals.shape} and {counts.shape}")
    n, m = len(counts), counts.sum()
    if m <= 0:
        raise ValueError("no questions to average")
    r = float(totals.sum() / m)
    if n < 2:
        return {"mean": r, "ci95": [float("nan"), float("nan")]}
    half = 1.96 * math.sqrt(n / (n - 1) * float(((totals - r * counts) ** 2).sum())) / m
    return {"mean": r, "ci95": [r - half, r + half]}


# What paired_difference compares: per item, the right answers of each evaluation (a function of its
# per-example record), and the items it keeps (all, or the prompts held out from post-training).
DIFFERENCE_KEYS = {
    "understanding": (lambda e: np.asarray(e.understanding_correct, dtype=np.float64), False),
    "generation": (lambda e: np.asarray(e.generation_correct, dtype=np.float64), False),
    "generation_unseen": (lambda e: np.asarray(e.generation_correct, dtype=np.float64), True),
    "gap": (lambda e: np.subtract(e.understanding_correct, e.generation_correct, dtype=np.float64), False),
}


def _aligned(base: PerExample, other: PerExample, what: str) -> tuple[PerExample, np.ndarray]:
    """`other` reordered to `base`'s item order; refused unless both hold the same items with the same
    question counts (a paired difference needs the same eval items)."""
    if base.questions is None or other.questions is None:
        raise UsageError(f"{what}: metrics without per-question counts (made before they were recorded); evaluate again")
    if sorted(base.ids) != sorted(other.ids):
        raise UsageError(f"{what}: the two evaluations are of different items ({len(base.ids)} and {len(other.ids)}); "
                         "paired differences need the same eval items and seed")
    other = other.reordered(base.ids)
    if other.questions != base.questions:
        raise UsageError(f"{what}: the same items hold different numbers of questions; paired differences need the same questions")
    return other, np.asarray(base.questions, dtype=np.float64)


def pooled_paired_difference(base: PerExample, others: list[PerExample], key: str) -> dict:
    """Mean and 95% interval of other − base, per question, over several evaluations `others` (one
    per training seed; their `per_example`) each paired with the same `base` evaluation by item id.

    Each item's difference is averaged over the seeds and the items are the clusters of
    `cluster_mean_ci`: the interval covers the choice of eval items (the arm's seed-average being
    the quantity estimated), not the spread between seeds, which the std over seeds shows.
    `key` is one of DIFFERENCE_KEYS; `generation_unseen` keeps the held-out prompts only."""
    if key not in DIFFERENCE_KEYS:
        raise UsageError(f"unknown difference {key!r}; expected one of {sorted(DIFFERENCE_KEYS)}")
    if not others:
        raise UsageError("no evaluations to compare with the base")
    score, unseen_only = DIFFERENCE_KEYS[key]
    diffs = []
    for i, other in enumerate(others):
        aligned, counts = _aligned(base, other, f"evaluation {i + 1} of {len(others)} against the base")
        diffs.append(score(aligned) - score(base))
    keep = np.ones(len(counts), dtype=bool)
    if unseen_only:
        if base.unseen is None or None in base.unseen:
            raise UsageError("generation_unseen needs world prompts: these items are not all world captions")
        keep = np.asarray(base.unseen, dtype=bool)
        if not keep.any():
            raise UsageError("generation_unseen: none of these items has a held-out prompt")
    result = cluster_mean_ci(np.mean(diffs, axis=0)[keep], counts[keep])
    return {**result, "n_items": int(keep.sum()), "n_questions": int(counts[keep].sum()), "seeds": len(others)}


def paired_difference(base: PerExample, other: PerExample, key: str) -> dict:
    """Mean and 95% interval of other − base, per question, clustered and paired by item: two
    evaluations (their `per_example`) of the same items with the same sampling seed. See
    `pooled_paired_difference` for several seeds."""
    return pooled_paired_difference(base, [other], key)


def wilson(hits: int, n: int) -> tuple[float, float]:
    """95% Wilson interval of a proportion (sound for the small counts of GenEval categories)."""
    if n == 0:
        return float("nan"), float("nan")
    z, p = 1.96, hits / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
