"""The statistics every figure rests on, in one place.

- `mean_ci`: a mean of per-example scores with its 95% normal interval;
- `cluster_mean_ci`: a per-question mean with a 95% interval clustered by item (questions of one
  image are not independent);
- `paired_difference` / `pooled_paired_difference`: other − base over the same eval items, paired
  by item id, for one evaluation or several (one per training seed), the latter with an interval
  over items and seeds (`two_level_interval`);
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


SHARE, DIFFERENCE = (0.0, 1.0), (-1.0, 1.0)  # the ranges a share of right answers, and a difference of two, can take


def _within(mean: float, half: float, bounds: tuple[float, float] | None) -> dict:
    """The interval mean ± half, cut to `bounds` (the values the quantity can take: a normal interval
    for a share of 1 right answer in 4 would otherwise reach below zero)."""
    lo, hi = mean - half, mean + half
    if bounds is not None and not math.isnan(half):
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return {"mean": mean, "ci95": [float(lo), float(hi)]}


def mean_ci(values: np.ndarray, bounds: tuple[float, float] | None = None) -> dict:
    """Mean and 95% normal interval of per-example scores (cut to `bounds`, if given)."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    half = 1.96 * float(values.std(ddof=1)) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return _within(mean, half, bounds)


def cluster_mean_ci(totals: np.ndarray, counts: np.ndarray, bounds: tuple[float, float] | None = None) -> dict:
    """Per-question mean Σ totals / Σ counts of items holding `counts[i]` questions that add up to
    `totals[i]` (right answers, or a paired difference of them), with a 95% normal interval
    clustered by item: the ratio estimator's linearised variance
        var(r) = n / (n - 1) · Σ_i (totals_i − r · counts_i)² / (Σ_i counts_i)²
    (Cochran, Sampling Techniques, §6.4), so questions of one item count as one draw. Zero width when
    every item's total is r times its count (e.g. a difference of identical evaluations). `bounds`:
    the range the mean can take (SHARE, DIFFERENCE), to which the interval is cut."""
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
    return _within(r, half, bounds)


# What paired_difference compares: per item, the right answers of each evaluation (a function of its
# per-example record), and the items it keeps (all; the prompts held out from post-training; the rest).
def _understanding(e: PerExample) -> np.ndarray:
    return np.asarray(e.understanding_correct, dtype=np.float64)


def _generation(e: PerExample) -> np.ndarray:
    return np.asarray(e.generation_correct, dtype=np.float64)


DIFFERENCE_KEYS = {
    "understanding": (_understanding, None),
    "understanding_unseen": (_understanding, "unseen"),
    "understanding_seen": (_understanding, "seen"),
    "generation": (_generation, None),
    "generation_unseen": (_generation, "unseen"),
    "generation_seen": (_generation, "seen"),
    "gap": (lambda e: _understanding(e) - _generation(e), None),
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


def pooled_paired_difference(base: PerExample | list[PerExample], others: list[PerExample], key: str) -> dict:
    """Mean and 95% interval of other − base, per question, over several evaluations `others` (one
    per training seed; their `per_example`) each paired with the same `base` evaluation by item id, or
    with the base of its own seed when `base` is a list (one arm against another, seed by seed)
    (`two_level_interval`: it covers the choice of eval items and of training seeds).
    `key` is one of DIFFERENCE_KEYS; `*_unseen` keeps the items whose prompts are held out of
    post-training, `*_seen` the others."""
    if key not in DIFFERENCE_KEYS:
        raise UsageError(f"unknown difference {key!r}; expected one of {sorted(DIFFERENCE_KEYS)}")
    if not others:
        raise UsageError("no evaluations to compare with the base")
    score, part = DIFFERENCE_KEYS[key]
    bases = base if isinstance(base, list) else [base] * len(others)
    if len(bases) != len(others):
        raise UsageError(f"{len(others)} evaluations against {len(bases)} bases: pairing by seed needs one base per seed")
    base = bases[0]
    diffs = []
    for i, (own, other) in enumerate(zip(bases, others)):
        aligned, counts = _aligned(base, other, f"evaluation {i + 1} of {len(others)} against the base")
        own = own if own is base else _aligned(base, own, f"base {i + 1} of {len(bases)}")[0]
        diffs.append(score(aligned) - score(own))
    keep = np.ones(len(counts), dtype=bool)
    if part is not None:
        if base.unseen is None or None in base.unseen:
            raise UsageError(f"{key} needs world prompts: these items are not all world captions")
        keep = np.asarray(base.unseen, dtype=bool) == (part == "unseen")
        if not keep.any():
            raise UsageError(f"{key}: none of these items has a {'held-out' if part == 'unseen' else 'seen'} prompt")
    result = two_level_interval(np.asarray(diffs)[:, keep], counts[keep])
    return {**result, "n_items": int(keep.sum()), "n_questions": int(counts[keep].sum()), "seeds": len(others)}


def two_level_interval(totals: np.ndarray, counts: np.ndarray) -> dict:
    """The per-question mean of `totals` (S seeds × n items: each item's summed difference in right
    answers, over `counts` questions) with a 95% interval that covers both the eval items and the
    training seeds. Two parts of the variance:
    - items: the ratio estimator's variance of the seed-averaged item totals (`cluster_mean_ci`);
    - seeds: the variance of the S per-seed means over S (what another set of seeds would move the
      mean by, which averaging over seeds alone leaves out), less the sampling noise of the seeds'
      answers that the items' part already holds (the mean square of the item-by-seed residuals).
    The half-width is sqrt((z·se_items)² + (t·se_seeds)²), z the normal quantile and t Student's with
    S − 1 degrees of freedom, so three seeds whose means disagree widen it as they should. Coverage of
    a true zero, simulated (tests/test_evaluate.py): 0.95-0.97 at 3 and 5 seeds for a per-seed SD of
    0 to 0.1. With one seed there is no seed spread to measure: the interval covers the items only,
    and says so."""
    totals, counts = np.atleast_2d(np.asarray(totals, dtype=np.float64)), np.asarray(counts, dtype=np.float64)
    seeds, n = totals.shape
    m = counts.sum()
    items = cluster_mean_ci(totals.mean(axis=0), counts)
    r = items["mean"]
    se_items = (items["ci95"][1] - r) / 1.96
    if seeds == 1 or n < 2:  # one seed: no seed spread to measure (one item: no interval at all)
        return {**items, "interval": "items only (one seed)", "se_items": se_items, "se_seeds": None}
    from scipy.stats import t as student_t  # here, not at import: scipy.stats takes most of a second to load

    per_seed = totals.sum(axis=1) / m
    residual = totals - totals.mean(axis=0) - (per_seed - r)[:, None] * counts
    noise = float((residual**2).sum()) / ((seeds - 1) * seeds * m**2) * n / (n - 1)
    se_seeds = math.sqrt(max(float(np.var(per_seed, ddof=1)) / seeds - noise, 0.0))
    half = math.sqrt((1.96 * se_items) ** 2 + (float(student_t.ppf(0.975, seeds - 1)) * se_seeds) ** 2)
    return {"mean": r, "ci95": [r - half, r + half], "interval": f"items and seeds (t with {seeds - 1} df for seeds)",
            "se_items": se_items, "se_seeds": se_seeds}


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
