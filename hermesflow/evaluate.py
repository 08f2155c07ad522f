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

The generated images are judged by the `judge` a recipe passes (the world's oracle when every item
has a world scene, or `hermesflow.judges.VLMJudge`, a VLM behind an OpenAI-compatible endpoint: the
paper's GPT-4o role), else by the model itself (self-VQA); `judges` in the metrics says which judge
made each number ("oracle", "self" or "vlm:<model>"). A data set's own numbers (on the world: the
prompts held out from post-training scored apart, GenEval-style categories) are added by the recipe
from `World.metrics`.
"""

from __future__ import annotations

import math

import numpy as np
from tqdm import tqdm

from hermesflow.backbones import Backbone, GenerationConfig
from hermesflow.errors import UsageError
from hermesflow.progress import phase
from hermesflow.records import QUESTION_TYPES, QUESTIONS_HINT, EvalItem, HomologousData
from hermesflow.results import Evaluation, Interval, PerExample
from hermesflow.stats import DIFFERENCE, SHARE, cluster_mean_ci, mean_ci


def data_eval_items(data: HomologousData, n: int) -> list[EvalItem]:
    """The first `n` records of the user's held-out data that have questions."""
    records = [r for r in data.records if r.qa][:n]
    if not records:
        raise UsageError(f"{data.path}: no record has qa; evaluation needs questions: {QUESTIONS_HINT}")
    return [EvalItem(r.id, r.load_image(), r.caption, r.qa, r.scene) for r in records]


def _by_type(correct: list[bool], types: list[str]) -> dict:
    out = {}
    for t in QUESTION_TYPES + tuple(sorted(set(types) - set(QUESTION_TYPES))):
        picked = [c for c, k in zip(correct, types) if k == t]
        if picked:
            out[t] = float(np.mean(picked))
    return out


def evaluate(backbone: Backbone, items: list[EvalItem], sampling: GenerationConfig, similarity=None,
             judge=None, choice_score: str = "sum") -> tuple[Evaluation, np.ndarray]:
    """All metrics for the backbone on `items`, images drawn with `sampling` and judged by `judge` (an
    object with `name` and `answer`, e.g. the world's oracle or a VLM; None: the model itself); also
    returns the generated images.
    Each phase runs over all items in one call (batching it otherwise would change the sampled images);
    the bar counts phases, and a second bar the batches, decoding steps or tokens inside the current one."""
    inputs = backbone.prepare_images([it.image for it in items])
    owners = [i for i, it in enumerate(items) for _ in it.qa]
    qas = [qa for it in items for qa in it.qa]
    questions, choices, truth = [q.question for q in qas], [list(q.choices) for q in qas], [q.answer for q in qas]
    types = [q.type for q in qas]
    bar = tqdm(total=4 + (similarity is not None), desc=f"evaluate {len(items)} items", unit="phase", dynamic_ncols=True)

    def step(label: str):
        bar.set_postfix_str(label)
        return phase(label)

    with step(f"answer {len(qas)} questions about the true images"):
        und_answers = backbone.answer(inputs[owners], questions, choices, score=choice_score)
    und_correct = [a == t for a, t in zip(und_answers, truth)]
    bar.update()
    blank = backbone.prepare_images([np.zeros_like(items[0].image)])
    with step(f"answer {len(qas)} questions about a blank image (the prior)"):
        prior_correct = [a == t for a, t in zip(backbone.answer(blank[[0] * len(owners)], questions, choices, score=choice_score), truth)]
    bar.update()
    with step(f"draw {len(items)} images"):
        tokens = backbone.generate([it.caption for it in items], 1, sampling)
    generated = backbone.decode(tokens)
    bar.update()
    with step(f"judge {len(qas)} questions about the drawn images ({judge.name if judge is not None else 'the model itself'})"):
        if judge is not None:
            answers = judge.answer(generated, owners, questions, choices, [f"item {it.id}" for it in items])
            gen_correct = [a == t for a, t in zip(answers, truth)]
        else:  # no judge for this data: the model answers about its own images, and says so
            gen_inputs = backbone.prepare_generated(tokens)
            gen_correct = [a == t for a, t in zip(backbone.answer(gen_inputs[owners], questions, choices, score=choice_score), truth)]
    bar.update()
    n = len(items)
    counts = np.bincount(owners, minlength=n).astype(np.float64)
    und_c = np.bincount(owners, weights=np.asarray(und_correct, dtype=np.float64), minlength=n)
    gen_c = np.bincount(owners, weights=np.asarray(gen_correct, dtype=np.float64), minlength=n)
    und, gen = und_c / np.maximum(counts, 1), gen_c / np.maximum(counts, 1)
    prior = np.bincount(owners, weights=np.asarray(prior_correct, dtype=np.float64), minlength=n) / np.maximum(counts, 1)
    caption_similarity = caption_examples = None
    if similarity is not None:
        with step(f"caption {len(items)} images"):
            captions = [c[0] for c in backbone.sample_captions(inputs, 1, GenerationConfig(temperature=0.0))]
        caption_similarity = Interval.of(mean_ci(similarity.similarity(captions, [it.caption for it in items]).numpy()))
        caption_examples = [{"id": it.id, "true": it.caption, "greedy": c} for it, c in zip(items[:8], captions)]
        bar.update()
    bar.close()
    result = Evaluation(
        n_examples=n, n_questions=len(qas),
        judges={"understanding": "answers vs truth", "generation": judge.name if judge is not None else "self"},
        understanding_score=Interval.of(cluster_mean_ci(und_c, counts, SHARE)),
        generation_score=Interval.of(cluster_mean_ci(gen_c, counts, SHARE)),
        gap=Interval.of(cluster_mean_ci(und_c - gen_c, counts, DIFFERENCE)),
        understanding_prior=float(np.mean(prior_correct)),
        understanding_score_per_image=Interval.of(mean_ci(und, SHARE)),
        generation_score_per_image=Interval.of(mean_ci(gen, SHARE)),
        gap_per_image=Interval.of(mean_ci(und - gen, DIFFERENCE)),
        understanding_prior_per_image=float(prior.mean()),
        understanding_by_type=_by_type(und_correct, types),
        generation_by_type=_by_type(gen_correct, types),
        understanding_prior_by_type=_by_type(prior_correct, types),
        per_example=PerExample(ids=[it.id for it in items], understanding=und.tolist(), generation=gen.tolist(),
                               questions=counts.astype(int).tolist(), understanding_correct=und_c.astype(int).tolist(),
                               generation_correct=gen_c.astype(int).tolist()),
        sample_prompts=[it.caption for it in items[:32]],
        settings={"steps": sampling.steps, "guidance": sampling.guidance, "temperature": sampling.temperature, "seed": sampling.seed,
                  "dtype": str(backbone.dtype).removeprefix("torch."), "model_type": backbone.model_type,
                  "choice_score": choice_score},
        caption_similarity=caption_similarity, caption_examples=caption_examples)
    return result, generated


def format_table(result: Evaluation) -> str:
    """An evaluation as a small text table for the terminal."""

    def ci(m: Interval | None) -> str:
        if m is None:
            return "-"
        if any(math.isnan(x) for x in m.ci95):  # one item: no spread to measure, as the report says it
            return f"{m.mean:.3f}  (one item: no interval)"
        return f"{m.mean:.3f}  [{m.ci95[0]:.3f}, {m.ci95[1]:.3f}]"

    lines = [f"WARNING: {w}" for w in result.warnings] + [
        f"{'generation judge':<22}{result.judges['generation']}",
        f"{'understanding_score':<22}{ci(result.understanding_score)}",
        f"{'generation_score':<22}{ci(result.generation_score)}",
        f"{'gap':<22}{ci(result.gap)}",
        f"{'understanding_prior':<22}{result.understanding_prior:.3f}",
    ]
    if result.prompt_holdout is not None:  # the world: prompts held out from post-training, scored apart
        for name, part in (("unseen", result.unseen), ("seen", result.seen)):
            lines.append(f"{'understanding_' + name:<22}{ci(part.understanding_score)}")
            lines.append(f"{'generation_' + name:<22}{ci(part.generation_score)}")
        lines.append(f"{'unseen prompts':<22}{result.unseen.n_examples} of {result.n_examples} "
                     f"({', '.join(result.unseen_categories) or 'none'}; "
                     f"{', '.join(result.prompt_holdout['always_seen'])} are always seen)")
    if result.understanding_score_per_image is not None:
        lines.append(f"{'per image':<22}understanding {result.understanding_score_per_image.mean:.3f}, "
                     f"generation {result.generation_score_per_image.mean:.3f}, "
                     f"prior {result.understanding_prior_per_image:.3f}")
    if result.caption_similarity is not None:
        lines.append(f"{'caption_similarity':<22}{ci(result.caption_similarity)}")
    lines.append("by question type       understanding  generation  prior")
    for t, v in result.understanding_by_type.items():
        lines.append(f"  {t:<21}{v:>13.3f}{result.generation_by_type.get(t, float('nan')):>12.3f}"
                     f"{result.understanding_prior_by_type.get(t, float('nan')):>7.3f}")
    if result.geneval:
        lines.append("geneval")
        lines += [f"  {k:<21}{v:.3f}" for k, v in result.geneval.items()]
    if result.unseen is not None and result.unseen.geneval:
        lines.append("geneval, unseen prompts")
        lines += [f"  {k:<21}{v:.3f}" for k, v in result.unseen.geneval.items()]
    return "\n".join(lines)
