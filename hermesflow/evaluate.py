"""Measuring a unified model: the paper's Table 4 (understanding, generation, gap) and Table 2
(GenEval categories), with the world's oracle in place of GPT-4o and of GenEval's detector.

- understanding_score: the model's accuracy on the questions about the real images;
- generation_score: the oracle's accuracy on the same questions about the model's images drawn
  for the same captions;
- understanding_prior: the understanding score with a blank image, what the answer prior alone gets.
All three are per question (the share of answers that are right, as the paper's Table 4 averages
answers); the per-image means are kept as `*_per_image`. Intervals are 95% normal intervals,
clustered by image because the questions of one image are not independent: the linearised
standard error of a ratio estimator (`cluster_mean_ci`), with no resampling, so they are exact
functions of the answers. Differences between two evaluations of the same items with the same
sampling seed get paired intervals (`paired_difference`, and `pooled_paired_difference` over seeds).

On the world, the prompts held out from post-training data (`world.holdout`) are scored apart:
`*_unseen` and `*_seen` keys, `geneval_unseen`; every claim about generation should use the unseen
ones. single_object and two_object have no unseen prompts (`prompt_holdout` says so).
The generated images are judged by the oracle when every item has a world scene; otherwise by the
model itself (self-VQA), or, when given, by an external judge (`hermesflow.judges.VLMJudge`, a VLM
behind an OpenAI-compatible endpoint: the paper's GPT-4o role); `judges` in the metrics says which
judge made each number ("oracle", "self" or "vlm:<model>").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from hermesflow.backbones import Backbone, GenerationConfig
from hermesflow.data import HomologousData
from hermesflow.errors import UsageError
from hermesflow.world import oracle
from hermesflow.world.build import world_records
from hermesflow.world.holdout import describe as describe_holdout
from hermesflow.world.holdout import is_held_out
from hermesflow.world.prompts import CATEGORIES, parse_prompt, satisfied_by
from hermesflow.world.questions import QA, QUESTION_TYPES, answer_on_scene
from hermesflow.world.render import to_world_size, upscale
from hermesflow.world.scenes import Scene


@dataclass
class EvalItem:
    id: str
    image: np.ndarray
    caption: str
    qa: tuple[QA, ...]
    scene: Scene | None = None  # known for the world: the oracle can judge generated images


def world_eval_items(n: int, seed: int, image_size: int = 32) -> list[EvalItem]:
    """The world's eval split, drawn at `image_size` (rounded down to a multiple of 32, at least 32)."""
    size = max(32, image_size // 32 * 32)
    return [
        EvalItem(r["id"], image, r["caption"], tuple(QA(q["question"], tuple(q["choices"]), q["answer"], q["type"]) for q in r["qa"]),
                 Scene.from_json(r["scene"]))
        for r, image in world_records(n, seed, "eval", image_size=size)
    ]


def data_eval_items(data: HomologousData, n: int) -> list[EvalItem]:
    """The first `n` records of the user's held-out data that have questions."""
    records = [r for r in data.records if r.qa][:n]
    if not records:
        raise UsageError(f"{data.path}: no record has qa; evaluation needs questions")
    return [EvalItem(r.id, r.load_image(), r.caption, r.qa, r.scene) for r in records]


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


# What paired_difference compares: per item, the right answers of each evaluation (a function of
# per_example), and the items it keeps (all, or the prompts held out from post-training).
DIFFERENCE_KEYS = {
    "understanding": (lambda e: np.asarray(e["understanding_correct"], dtype=np.float64), False),
    "generation": (lambda e: np.asarray(e["generation_correct"], dtype=np.float64), False),
    "generation_unseen": (lambda e: np.asarray(e["generation_correct"], dtype=np.float64), True),
    "gap": (lambda e: np.subtract(e["understanding_correct"], e["generation_correct"], dtype=np.float64), False),
}


def _aligned(base: dict, other: dict, what: str) -> tuple[dict, np.ndarray]:
    """`other`'s per_example reordered to `base`'s item order; refused unless both hold the same items
    with the same question counts (a paired difference needs the same eval items)."""
    a, b = base.get("per_example"), other.get("per_example")
    if not a or not b or "questions" not in a or "questions" not in b:
        raise UsageError(f"{what}: metrics without per-question counts (made before they were recorded); evaluate again")
    if sorted(a["ids"]) != sorted(b["ids"]):
        raise UsageError(f"{what}: the two evaluations are of different items ({len(a['ids'])} and {len(b['ids'])}); "
                         "paired differences need the same eval items and seed")
    where = {item: i for i, item in enumerate(b["ids"])}
    order = np.array([where[item] for item in a["ids"]])
    b = {k: (np.asarray(v)[order].tolist() if isinstance(v, list) and len(v) == len(order) else v) for k, v in b.items()}
    if b["questions"] != a["questions"]:
        raise UsageError(f"{what}: the same items hold different numbers of questions; paired differences need the same questions")
    return b, np.asarray(a["questions"], dtype=np.float64)


def pooled_paired_difference(base: dict, others: list[dict], key: str) -> dict:
    """Mean and 95% interval of other − base, per question, over several evaluations `others` (one
    per training seed) each paired with the same `base` evaluation by item id.

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
        diffs.append(score(aligned) - score(base["per_example"]))
    keep = np.ones(len(counts), dtype=bool)
    if unseen_only:
        flags = base["per_example"].get("unseen")
        if flags is None or None in flags:
            raise UsageError("generation_unseen needs world prompts: these items are not all world captions")
        keep = np.asarray(flags, dtype=bool)
        if not keep.any():
            raise UsageError("generation_unseen: none of these items has a held-out prompt")
    result = cluster_mean_ci(np.mean(diffs, axis=0)[keep], counts[keep])
    return {**result, "n_items": int(keep.sum()), "n_questions": int(counts[keep].sum()), "seeds": len(others)}


def paired_difference(base: dict, other: dict, key: str) -> dict:
    """Mean and 95% interval of other − base, per question, clustered and paired by item: two
    evaluations (metrics.json dicts) of the same items with the same sampling seed. See
    `pooled_paired_difference` for several seeds."""
    return pooled_paired_difference(base, [other], key)


def _by_type(correct: list[bool], types: list[str]) -> dict:
    out = {}
    for t in QUESTION_TYPES + tuple(sorted(set(types) - set(QUESTION_TYPES))):
        picked = [c for c, k in zip(correct, types) if k == t]
        if picked:
            out[t] = float(np.mean(picked))
    return out


def _geneval(hits: np.ndarray, categories: np.ndarray) -> tuple[dict, dict]:
    """GenEval's score per category (share of prompts satisfied), `overall` the mean over the
    categories present, and [satisfied, prompts] per category."""
    scores, counts = {}, {}
    for category in CATEGORIES:
        picked = hits[categories == category]
        if len(picked):
            scores[category] = float(picked.mean())
            counts[category] = [int(picked.sum()), len(picked)]
    if scores:
        scores["overall"] = float(np.mean(list(scores.values())))
    return scores, counts


def evaluate(backbone: Backbone, items: list[EvalItem], sampling: GenerationConfig, similarity=None,
             external_judge=None) -> tuple[dict, np.ndarray]:
    """All metrics for the backbone on `items`, images drawn with `sampling`; also returns the generated images.
    Each phase runs over all items in one call (batching it otherwise would change the sampled images),
    so the progress bar counts phases, with their elapsed time and an estimate of the rest."""
    bar = tqdm(total=4 + (similarity is not None), desc=f"evaluate {len(items)} examples", unit="phase", dynamic_ncols=True)
    bar.set_postfix_str("answer questions")
    inputs = backbone.prepare_images([it.image for it in items])
    owners = [i for i, it in enumerate(items) for _ in it.qa]
    qas = [qa for it in items for qa in it.qa]
    questions, choices, truth = [q.question for q in qas], [list(q.choices) for q in qas], [q.answer for q in qas]
    types = [q.type for q in qas]

    und_answers = backbone.answer(inputs[owners], questions, choices)
    und_correct = [a == t for a, t in zip(und_answers, truth)]
    blank = backbone.prepare_images([np.zeros_like(items[0].image)])
    prior_correct = [a == t for a, t in zip(backbone.answer(blank[[0] * len(owners)], questions, choices), truth)]
    bar.update(2)
    bar.set_postfix_str("generate images")

    tokens = backbone.generate([it.caption for it in items], 1, sampling)
    generated = backbone.decode(tokens)
    bar.update()
    bar.set_postfix_str("judge images")
    judge = "oracle" if all(it.scene is not None for it in items) else "self"
    if external_judge is not None:
        judge = external_judge.name
        answers = external_judge.answer(generated, owners, questions, choices, [f"item {it.id}" for it in items])
        gen_correct = [a == t for a, t in zip(answers, truth)]
    elif judge == "oracle":
        scenes = oracle.parse_batch(generated)
        gen_correct = [answer_on_scene(q, scenes[o]) == t for q, o, t in zip(questions, owners, truth)]
    else:  # no exact judge for this data: the model answers about its own images, and says so
        gen_inputs = backbone.prepare_generated(tokens)
        gen_correct = [a == t for a, t in zip(backbone.answer(gen_inputs[owners], questions, choices), truth)]

    bar.update()
    n = len(items)
    counts = np.bincount(owners, minlength=n).astype(np.float64)
    und_c = np.bincount(owners, weights=np.asarray(und_correct, dtype=np.float64), minlength=n)
    gen_c = np.bincount(owners, weights=np.asarray(gen_correct, dtype=np.float64), minlength=n)
    und, gen = und_c / np.maximum(counts, 1), gen_c / np.maximum(counts, 1)
    prior = np.bincount(owners, weights=np.asarray(prior_correct, dtype=np.float64), minlength=n) / np.maximum(counts, 1)
    specs = [parse_prompt(it.caption) for it in items]
    world = all(spec is not None for spec in specs)  # the hold-out is defined over world prompts only
    unseen = np.array([world and is_held_out(spec) for spec in specs], dtype=bool)
    metrics = {
        "n_examples": n,
        "n_questions": len(qas),
        "judges": {"understanding": "answers vs truth", "generation": judge},
        "scores": "per question; intervals clustered by image (ratio estimator); *_per_image: per-image means",
        "understanding_score": cluster_mean_ci(und_c, counts),
        "generation_score": cluster_mean_ci(gen_c, counts),
        "gap": cluster_mean_ci(und_c - gen_c, counts),
        "understanding_prior": float(np.mean(prior_correct)),
        "understanding_score_per_image": mean_ci(und),
        "generation_score_per_image": mean_ci(gen),
        "gap_per_image": mean_ci(und - gen),
        "understanding_prior_per_image": float(prior.mean()),
        "understanding_by_type": _by_type(und_correct, types),
        "generation_by_type": _by_type(gen_correct, types),
        "understanding_prior_by_type": _by_type(prior_correct, types),
        # per example, in item order: paired differences between evaluations of the same items
        "per_example": {"ids": [it.id for it in items], "understanding": und.tolist(), "generation": gen.tolist(),
                        "questions": counts.astype(int).tolist(), "understanding_correct": und_c.astype(int).tolist(),
                        "generation_correct": gen_c.astype(int).tolist(),
                        "unseen": unseen.tolist() if world else [None] * n,
                        "category": [spec.category if spec else None for spec in specs]},
        "sample_prompts": [it.caption for it in items[:32]],  # the prompts of the sample sheet's images, in order
    }
    if world:
        metrics["prompt_holdout"] = describe_holdout()
        metrics["unseen_categories"] = sorted({s.category for s, u in zip(specs, unseen) if u}, key=CATEGORIES.index)
        for part, keep in (("unseen", unseen), ("seen", ~unseen)):
            metrics[f"n_examples_{part}"] = int(keep.sum())
            for key, totals in (("understanding_score", und_c), ("generation_score", gen_c), ("gap", und_c - gen_c)):
                metrics[f"{key}_{part}"] = cluster_mean_ci(totals[keep], counts[keep]) if keep.any() else None

    geneval, geneval_counts = {}, {}
    if judge == "oracle":
        hits = np.array([spec is not None and satisfied_by(scene, spec) for scene, spec in zip(scenes, specs)])
        categories = np.array([spec.category if spec else "" for spec in specs])
        geneval, geneval_counts = _geneval(hits, categories)
        if world:
            for part, keep in (("unseen", unseen), ("seen", ~unseen)):
                metrics[f"geneval_{part}"], metrics[f"geneval_counts_{part}"] = _geneval(hits[keep], categories[keep])
    metrics["geneval"] = geneval
    metrics["geneval_counts"] = geneval_counts  # [prompts satisfied, prompts] per category

    if similarity is not None:
        bar.set_postfix_str("caption images")
        captions = [c[0] for c in backbone.sample_captions(inputs, 1, GenerationConfig(temperature=0.0))]
        metrics["caption_similarity"] = mean_ci(similarity.similarity(captions, [it.caption for it in items]).numpy())
        metrics["caption_examples"] = [{"id": it.id, "true": it.caption, "greedy": c} for it, c in zip(items[:8], captions)]
        bar.update()
    bar.close()
    metrics["settings"] = {"steps": sampling.steps, "guidance": sampling.guidance, "temperature": sampling.temperature, "seed": sampling.seed,
                           "dtype": str(backbone.dtype).removeprefix("torch."), "model_type": backbone.model_type}
    return metrics, generated


def format_table(metrics: dict) -> str:
    """The metrics as a small text table for the terminal."""

    def ci(m: dict) -> str:
        return f"{m['mean']:.3f}  [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"

    lines = [
        f"{'generation judge':<22}{metrics['judges']['generation']}",
        f"{'understanding_score':<22}{ci(metrics['understanding_score'])}",
        f"{'generation_score':<22}{ci(metrics['generation_score'])}",
        f"{'gap':<22}{ci(metrics['gap'])}",
        f"{'understanding_prior':<22}{metrics['understanding_prior']:.3f}",
    ]
    if "prompt_holdout" in metrics:  # the world: prompts held out from post-training, scored apart
        for part in ("unseen", "seen"):
            for key in ("understanding_score", "generation_score"):
                value = metrics[f"{key}_{part}"]
                lines.append(f"{key.removesuffix('_score') + '_' + part:<22}{ci(value) if value else '-'}")
        lines.append(f"{'unseen prompts':<22}{metrics['n_examples_unseen']} of {metrics['n_examples']} "
                     f"({', '.join(metrics['unseen_categories']) or 'none'}; "
                     f"{', '.join(metrics['prompt_holdout']['always_seen'])} are always seen)")
    lines.append(f"{'per image':<22}understanding {metrics['understanding_score_per_image']['mean']:.3f}, "
                 f"generation {metrics['generation_score_per_image']['mean']:.3f}, "
                 f"prior {metrics['understanding_prior_per_image']:.3f}")
    if "caption_similarity" in metrics:
        lines.append(f"{'caption_similarity':<22}{ci(metrics['caption_similarity'])}")
    lines.append("by question type       understanding  generation  prior")
    for t, v in metrics["understanding_by_type"].items():
        lines.append(f"  {t:<21}{v:>13.3f}{metrics['generation_by_type'].get(t, float('nan')):>12.3f}"
                     f"{metrics['understanding_prior_by_type'].get(t, float('nan')):>7.3f}")
    if metrics["geneval"]:
        lines.append("geneval")
        lines += [f"  {k:<21}{v:.3f}" for k, v in metrics["geneval"].items()]
    if metrics.get("geneval_unseen"):
        lines.append("geneval, unseen prompts")
        lines += [f"  {k:<21}{v:.3f}" for k, v in metrics["geneval_unseen"].items()]
    return "\n".join(lines)


def save_sample_sheet(path: Path, images: np.ndarray, columns: int = 8, rows: int = 4) -> None:
    """A grid of the first generated images (shown at 32x32), enlarged, for a person to look at."""
    shown = np.stack([to_world_size(image) for image in images[: columns * rows]])
    pad = np.pad(shown, ((0, columns * rows - len(shown)), (1, 1), (1, 1), (0, 0)), constant_values=90)
    grid = pad.reshape(rows, columns, 34, 34, 3).transpose(0, 2, 1, 3, 4).reshape(rows * 34, columns * 34, 3)
    Image.fromarray(upscale(grid, 4)).save(path)
