"""Measuring a unified model: the paper's Table 4 (understanding, generation, gap) and Table 2
(GenEval categories), with the world's oracle in place of GPT-4o and of GenEval's detector.

- understanding_score: the model's accuracy on the questions about the real images;
- generation_score: the oracle's accuracy on the same questions about the model's images drawn
  for the same captions;
- understanding_prior: the understanding score with a blank image, what the answer prior alone gets.
Intervals are 95% normal intervals over examples (questions of one image are not independent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from hermesflow.data import read_homologous
from hermesflow.errors import UsageError
from hermesflow.settings import EvalConfig
from hermesflow.world import oracle
from hermesflow.world.build import world_records
from hermesflow.world.prompts import CATEGORIES, parse_prompt, satisfied_by
from hermesflow.world.questions import QA, QUESTION_TYPES, answer_on_scene
from hermesflow.world.render import upscale


@dataclass
class EvalItem:
    id: str
    image: np.ndarray
    caption: str
    qa: tuple[QA, ...]


def world_eval_items(n: int, seed: int) -> list[EvalItem]:
    return [
        EvalItem(r["id"], image, r["caption"], tuple(QA(q["question"], tuple(q["choices"]), q["answer"], q["type"]) for q in r["qa"]))
        for r, image in world_records(n, seed, "eval")
    ]


def data_eval_items(path: Path, n: int) -> list[EvalItem]:
    records = [r for r in read_homologous(path).records if r.qa][:n]
    if not records:
        raise UsageError(f"{path}: no record has qa; evaluation needs questions")
    return [EvalItem(r.id, r.load_image(), r.caption, r.qa) for r in records]


def mean_ci(values: np.ndarray) -> dict:
    """Mean and 95% normal interval of per-example scores."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    half = 1.96 * float(values.std(ddof=1)) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"mean": mean, "ci95": [mean - half, mean + half]}


def _per_example(correct: list[bool], owners: list[int], n: int) -> np.ndarray:
    totals, counts = np.zeros(n), np.zeros(n)
    np.add.at(totals, owners, np.asarray(correct, dtype=np.float64))
    np.add.at(counts, owners, 1.0)
    return totals / np.maximum(counts, 1)


def _by_type(correct: list[bool], types: list[str]) -> dict:
    out = {}
    for t in QUESTION_TYPES + tuple(sorted(set(types) - set(QUESTION_TYPES))):
        picked = [c for c, k in zip(correct, types) if k == t]
        if picked:
            out[t] = float(np.mean(picked))
    return out


def evaluate(model, items: list[EvalItem], cfg: EvalConfig, similarity=None) -> tuple[dict, np.ndarray]:
    """All metrics for `model` on `items`; also returns the generated images."""
    images = np.stack([it.image for it in items])
    owners = [i for i, it in enumerate(items) for _ in it.qa]
    qas = [qa for it in items for qa in it.qa]
    questions, choices, truth = [q.question for q in qas], [list(q.choices) for q in qas], [q.answer for q in qas]
    types = [q.type for q in qas]

    und_answers = model.answer(images[owners], questions, choices)
    und_correct = [a == t for a, t in zip(und_answers, truth)]
    blank = np.zeros_like(images[owners])
    prior_correct = [a == t for a, t in zip(model.answer(blank, questions, choices), truth)]

    tokens = model.generate([it.caption for it in items], n=1, steps=cfg.steps, guidance=cfg.guidance,
                            temperature=cfg.temperature, seed=cfg.seed)
    generated = model.decode(tokens)
    scenes = oracle.parse_batch(generated)
    gen_correct = [answer_on_scene(q, scenes[o]) == t for q, o, t in zip(questions, owners, truth)]

    n = len(items)
    und, gen = _per_example(und_correct, owners, n), _per_example(gen_correct, owners, n)
    metrics = {
        "n_examples": n,
        "n_questions": len(qas),
        "understanding_score": mean_ci(und),
        "generation_score": mean_ci(gen),
        "gap": mean_ci(und - gen),
        "understanding_prior": float(np.mean(prior_correct)),
        "understanding_by_type": _by_type(und_correct, types),
        "generation_by_type": _by_type(gen_correct, types),
        "understanding_prior_by_type": _by_type(prior_correct, types),
    }

    geneval = {}
    specs = [parse_prompt(it.caption) for it in items]
    for category in CATEGORIES:
        hits = [satisfied_by(scene, spec) for scene, spec in zip(scenes, specs) if spec and spec.category == category]
        if hits:
            geneval[category] = float(np.mean(hits))
    if geneval:
        geneval["overall"] = float(np.mean(list(geneval.values())))
    metrics["geneval"] = geneval

    if similarity is not None:
        captions = [c[0] for c in model.sample_captions(images, n=1, temperature=0.0)]
        metrics["caption_similarity"] = mean_ci(similarity.similarity(captions, [it.caption for it in items]).numpy())
        metrics["caption_examples"] = [{"id": it.id, "true": it.caption, "greedy": c} for it, c in zip(items[:8], captions)]
    metrics["settings"] = {"steps": cfg.steps, "guidance": cfg.guidance, "temperature": cfg.temperature, "seed": cfg.seed}
    return metrics, generated


def format_table(metrics: dict) -> str:
    """The metrics as a small text table for the terminal."""

    def ci(m: dict) -> str:
        return f"{m['mean']:.3f}  [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"

    lines = [
        f"{'understanding_score':<22}{ci(metrics['understanding_score'])}",
        f"{'generation_score':<22}{ci(metrics['generation_score'])}",
        f"{'gap':<22}{ci(metrics['gap'])}",
        f"{'understanding_prior':<22}{metrics['understanding_prior']:.3f}",
    ]
    if "caption_similarity" in metrics:
        lines.append(f"{'caption_similarity':<22}{ci(metrics['caption_similarity'])}")
    lines.append("by question type       understanding  generation  prior")
    for t, v in metrics["understanding_by_type"].items():
        lines.append(f"  {t:<21}{v:>13.3f}{metrics['generation_by_type'].get(t, float('nan')):>12.3f}"
                     f"{metrics['understanding_prior_by_type'].get(t, float('nan')):>7.3f}")
    if metrics["geneval"]:
        lines.append("geneval")
        lines += [f"  {k:<21}{v:.3f}" for k, v in metrics["geneval"].items()]
    return "\n".join(lines)


def save_sample_sheet(path: Path, images: np.ndarray, columns: int = 8, rows: int = 4) -> None:
    """A grid of the first generated images, enlarged, for a person to look at."""
    shown = images[: columns * rows]
    pad = np.pad(shown, ((0, columns * rows - len(shown)), (1, 1), (1, 1), (0, 0)), constant_values=90)
    grid = pad.reshape(rows, columns, 34, 34, 3).transpose(0, 2, 1, 3, 4).reshape(rows * 34, columns * 34, 3)
    Image.fromarray(upscale(grid, 4)).save(path)
