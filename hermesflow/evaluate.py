"""Measuring a unified model: the paper's Table 4 (understanding, generation, gap) and Table 2
(GenEval categories), with the world's oracle in place of GPT-4o and of GenEval's detector.

- understanding_score: the model's accuracy on the questions about the real images;
- generation_score: the oracle's accuracy on the same questions about the model's images drawn
  for the same captions;
- understanding_prior: the understanding score with a blank image, what the answer prior alone gets.
Intervals are 95% normal intervals over examples (questions of one image are not independent).
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
    und, gen = _per_example(und_correct, owners, n), _per_example(gen_correct, owners, n)
    metrics = {
        "n_examples": n,
        "n_questions": len(qas),
        "judges": {"understanding": "answers vs truth", "generation": judge},
        "understanding_score": mean_ci(und),
        "generation_score": mean_ci(gen),
        "gap": mean_ci(und - gen),
        "understanding_prior": float(np.mean(prior_correct)),
        "understanding_by_type": _by_type(und_correct, types),
        "generation_by_type": _by_type(gen_correct, types),
        "understanding_prior_by_type": _by_type(prior_correct, types),
        # per example, in item order: the report pairs a round's scores with the base's on the same items
        "per_example": {"ids": [it.id for it in items], "understanding": und.tolist(), "generation": gen.tolist()},
        "sample_prompts": [it.caption for it in items[:32]],  # the prompts of the sample sheet's images, in order
    }

    geneval, geneval_counts = {}, {}
    if judge == "oracle":
        specs = [parse_prompt(it.caption) for it in items]
        for category in CATEGORIES:
            hits = [satisfied_by(scene, spec) for scene, spec in zip(scenes, specs) if spec and spec.category == category]
            if hits:
                geneval[category] = float(np.mean(hits))
                geneval_counts[category] = [int(sum(hits)), len(hits)]
        if geneval:
            geneval["overall"] = float(np.mean(list(geneval.values())))
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
    """A grid of the first generated images (shown at 32x32), enlarged, for a person to look at."""
    shown = np.stack([to_world_size(image) for image in images[: columns * rows]])
    pad = np.pad(shown, ((0, columns * rows - len(shown)), (1, 1), (1, 1), (0, 0)), constant_values=90)
    grid = pad.reshape(rows, columns, 34, 34, 3).transpose(0, 2, 1, 3, 4).reshape(rows * 34, columns * 34, 3)
    Image.fromarray(upscale(grid, 4)).save(path)
