"""Evaluation's numbers: per-question scores with intervals clustered by image, paired intervals on
differences (alone and pooled over seeds), and seen/unseen prompts scored apart."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from hermesflow.backbones import GenerationConfig
from hermesflow.errors import UsageError
from hermesflow.evaluate import format_table
from hermesflow.recipes.run import judged_evaluation
from hermesflow.records import QA, EvalItem
from hermesflow.results import Evaluation, PerExample
from hermesflow.stats import cluster_mean_ci, paired_difference, pooled_paired_difference
from hermesflow.world.holdout import is_held_out
from hermesflow.world.prompts import PromptSpec, phrase
from hermesflow.world.questions import ask_color, ask_object
from hermesflow.world.render import render
from hermesflow.world.scenes import Obj, Scene


def test_cluster_mean_is_per_question_with_the_ratio_estimators_interval():
    totals, counts = np.array([2.0, 0.0, 3.0]), np.array([2.0, 1.0, 5.0])
    r = 5 / 8  # answers, not images: the per-image mean would be (1 + 0 + 0.6) / 3
    residuals = totals - r * counts  # 0.75, -0.625, -0.125
    half = 1.96 * math.sqrt(3 / 2 * float((residuals ** 2).sum())) / 8
    got = cluster_mean_ci(totals, counts)
    assert got["mean"] == pytest.approx(r)
    assert got["ci95"] == pytest.approx([r - half, r + half])
    assert cluster_mean_ci(np.array([1.0, 2.0]), np.array([2.0, 4.0]))["ci95"] == [0.5, 0.5]  # every item at r: zero width


def per_example(ids, questions, und, gen, unseen=None):
    n = len(ids)
    return PerExample(ids, [u / q for u, q in zip(und, questions)], [g / q for g, q in zip(gen, questions)], questions, und, gen,
                      unseen if unseen is not None else [False] * n)


BASE = per_example(["a", "b", "c", "d"], [2, 4, 3, 1], und=[1, 3, 3, 0], gen=[0, 2, 1, 1], unseen=[True, False, True, False])


def test_paired_difference_on_hand_made_numbers():
    # the other evaluation lists the same items in another order: pairing is by id
    other = per_example(["d", "c", "b", "a"], [1, 3, 4, 2], und=[1, 3, 4, 1], gen=[1, 3, 2, 2])
    d = np.array([2.0, 0.0, 2.0, 0.0])  # generation, per item in BASE's order: a 0->2, b 2->2, c 1->3, d 1->1
    counts = np.array([2.0, 4.0, 3.0, 1.0])
    mean = 4 / 10
    half = 1.96 * math.sqrt(4 / 3 * float(((d - mean * counts) ** 2).sum())) / 10
    got = paired_difference(BASE, other, "generation")
    assert got["mean"] == pytest.approx(mean) and got["ci95"] == pytest.approx([mean - half, mean + half])
    assert got["n_items"] == 4 and got["n_questions"] == 10
    unseen = paired_difference(BASE, other, "generation_unseen")  # items a and c: (2 + 2) / (2 + 3)
    assert unseen["mean"] == pytest.approx(4 / 5) and unseen["n_items"] == 2
    assert paired_difference(BASE, other, "understanding")["mean"] == pytest.approx(2 / 10)  # a +0, b +1, c 0, d +1
    assert paired_difference(BASE, other, "gap")["mean"] == pytest.approx(2 / 10 - 4 / 10)
    # understanding apart on held-out (a, c: 0 + 0 of 5 questions) and seen prompts (b, d: 1 + 1 of 5)
    assert paired_difference(BASE, other, "understanding_unseen")["mean"] == pytest.approx(0.0)
    assert paired_difference(BASE, other, "understanding_seen")["mean"] == pytest.approx(2 / 5)
    assert paired_difference(BASE, other, "generation_seen")["mean"] == pytest.approx(0.0)  # b 2->2, d 1->1


def test_identical_evaluations_differ_by_zero_with_zero_width():
    for key in ("understanding", "understanding_unseen", "understanding_seen", "generation", "generation_unseen", "gap"):
        got = paired_difference(BASE, BASE, key)
        assert got["mean"] == 0 and got["ci95"] == [0.0, 0.0]


def test_pooled_difference_averages_each_items_difference_over_seeds():
    up = per_example(["a", "b", "c", "d"], [2, 4, 3, 1], und=[1, 3, 3, 0], gen=[2, 4, 3, 1])  # +2 +2 +2 +0
    same = BASE
    pooled = pooled_paired_difference(BASE, [up, same], "generation")
    d, counts = np.array([1.0, 1.0, 1.0, 0.0]), np.array([2.0, 4.0, 3.0, 1.0])
    mean = 3 / 10
    se_items = math.sqrt(4 / 3 * float(((d - mean * counts) ** 2).sum())) / 10  # items: the seed-averaged differences
    # seeds: the per-seed means 0.6 and 0 (variance 0.18, over 2 seeds 0.09), less the answers' noise the items' part
    # holds: item-by-seed residuals ±(0.4, -0.2, 0.1, -0.3), squares 0.6, / (1 · 2 · 10²) · 4/3 = 0.004
    se_seeds = math.sqrt(0.09 - 0.004)
    half = math.sqrt((1.96 * se_items) ** 2 + (12.7062047 * se_seeds) ** 2)  # t quantile, 1 df
    assert pooled["mean"] == pytest.approx(mean) and pooled["ci95"] == pytest.approx([mean - half, mean + half])
    assert pooled["se_items"] == pytest.approx(se_items) and pooled["se_seeds"] == pytest.approx(se_seeds)
    assert pooled["seeds"] == 2
    assert pooled["mean"] == pytest.approx(np.mean([paired_difference(BASE, o, "generation")["mean"] for o in (up, same)]))


def test_paired_difference_refuses_other_items_or_questions():
    with pytest.raises(UsageError, match="different items"):
        paired_difference(BASE, per_example(["a", "b", "c", "e"], [2, 4, 3, 1], [0] * 4, [0] * 4), "generation")
    with pytest.raises(UsageError, match="different numbers of questions"):
        paired_difference(BASE, per_example(["a", "b", "c", "d"], [2, 4, 3, 2], [0] * 4, [0] * 4), "generation")
    with pytest.raises(UsageError, match="unknown difference"):
        paired_difference(BASE, BASE, "caption")
    with pytest.raises(UsageError, match="per-question counts"):
        paired_difference(PerExample(["a"], [1.0], [0.0]), BASE, "generation")  # metrics from before per-question counts


class ScriptedModel:
    """A stand-in backbone: answers right exactly the questions listed, draws each item's scene or a blank image."""

    model_type, dtype, image_size = "scripted", torch.float32, 32

    def __init__(self, right: set[str], drawn: set[int], scenes: list[Scene]):
        self.right, self.drawn, self.scenes = right, drawn, scenes

    def prepare_images(self, images):
        return torch.arange(len(images))

    def answer(self, inputs, questions, choices, score="sum"):
        return [c[0] if q in self.right else c[-1] for q, c in zip(questions, choices)]

    def generate(self, captions, n, sampling):
        return list(range(len(captions)))

    def decode(self, tokens):
        blank = np.zeros((32, 32, 3), np.uint8)
        return np.stack([render(self.scenes[i]) if i in self.drawn else blank for i in tokens])


def test_evaluate_scores_per_question_and_scores_unseen_prompts_apart():
    seen = PromptSpec("single_object", (("circle", None),))
    held = PromptSpec("colors", (("square", "green"),))
    assert is_held_out(held) and not is_held_out(seen)
    scenes = [Scene((Obj("circle", "green", 0, 0),)), Scene((Obj(held.objects[0][0], held.objects[0][1], 1, 1),))]
    shape1, color1 = held.objects[0]
    qa0 = (QA(ask_object("circle"), ("yes", "no"), "yes", "object"),)
    qa1 = (QA(ask_object(shape1), ("yes", "no"), "yes", "object"), QA(ask_color(shape1), (color1, "grey"), color1, "color"),
           QA(ask_object("triangle"), ("no", "yes"), "no", "object"))
    items = [EvalItem("s", render(scenes[0]), phrase(seen), qa0, scenes[0]), EvalItem("u", render(scenes[1]), phrase(held), qa1, scenes[1])]
    # understanding: item s 1/1, item u 1/3 (only the triangle question)  -> per question 2/4, per image (1 + 1/3) / 2
    # generation: item s drawn (1/1), item u blank (only "no triangle" right: 1/3)
    model = ScriptedModel(right={ask_object("circle"), ask_object("triangle")}, drawn={0}, scenes=scenes)
    result, _ = judged_evaluation(model, items, GenerationConfig(seed=0), None)  # the oracle judges, the world adds its numbers
    assert result.understanding_score.mean == pytest.approx(2 / 4)
    assert result.understanding_score_per_image.mean == pytest.approx((1 + 1 / 3) / 2)
    assert result.generation_score.mean == pytest.approx(2 / 4)
    assert result.understanding_prior == pytest.approx(2 / 4)  # the blank image: the same scripted answers
    assert result.generation_unseen.mean == pytest.approx(1 / 3) and result.unseen.generation_score.mean == pytest.approx(1 / 3)
    assert result.seen.generation_score.mean == pytest.approx(1.0)
    assert result.unseen_categories == ["colors"] and result.unseen.n_examples == 1
    assert result.unseen.geneval == {"colors": 0.0, "overall": 0.0}
    assert result.seen.geneval["single_object"] == 1.0
    assert "single_object" in result.prompt_holdout["always_seen"]
    assert result.per_example.questions == [1, 3] and result.per_example.unseen == [False, True]
    assert result.per_example.generation_correct == [1, 1]
    # metrics.json keeps its keys (files written before the type read back unchanged) and reads back as the same result
    metrics = result.to_json()
    assert metrics["generation_score_unseen"]["mean"] == pytest.approx(1 / 3) and metrics["n_examples_unseen"] == 1
    assert metrics["geneval_unseen"] == {"colors": 0.0, "overall": 0.0} and metrics["judges"]["generation"] == "oracle"
    assert metrics["per_example"]["unseen"] == [False, True] and metrics["understanding_score_per_image"]["mean"] == pytest.approx((1 + 1 / 3) / 2)
    assert json.dumps(Evaluation.from_json(json.loads(json.dumps(metrics))).to_json()) == json.dumps(metrics)  # one item: NaN intervals


def test_metrics_from_before_per_question_scores_still_read_and_a_foreign_file_is_refused(tmp_path):
    old = {"n_examples": 2, "n_questions": 3, "judges": {"understanding": "answers vs truth", "generation": "oracle"},
           "understanding_score": {"mean": 0.5, "ci95": [0.1, 0.9]}, "generation_score": {"mean": 0.25, "ci95": [0.0, 0.6]},
           "gap": {"mean": 0.25, "ci95": [-0.2, 0.7]}, "understanding_prior": 0.3, "understanding_by_type": {"object": 0.5},
           "generation_by_type": {"object": 0.25}, "understanding_prior_by_type": {"object": 0.3},
           "per_example": {"ids": ["a", "b"], "understanding": [1.0, 0.0], "generation": [0.5, 0.0]},
           "sample_prompts": ["a circle", "a square"], "geneval": {}, "geneval_counts": {}}  # as written on 2026-11-27
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(old))
    result = Evaluation.read(path)
    assert result.per_example.questions is None and result.understanding_score_per_image is None
    assert "per image" not in format_table(result) and "0.500  [0.100, 0.900]" in format_table(result)
    path.write_text(json.dumps({"step": 1, "loss": 0.5}))
    with pytest.raises(UsageError, match=r"metrics.json: no 'n_examples'"):
        Evaluation.read(path)


@pytest.mark.parametrize("seeds", [3, 5])
@pytest.mark.parametrize("seed_sd", [0.0, 0.02, 0.037])
def test_the_interval_over_seeds_covers_a_true_zero_95_percent_of_the_time(seeds, seed_sd):
    """Simulated: 500 items of 2-5 questions, item effects that vary, each training seed shifting every
    answer's chance by a draw of SD `seed_sd`; a true mean change of zero. Averaging over seeds alone
    (the interval before) covered it 83% of the time at SD 0.02 and 63% at 0.037."""
    from hermesflow.stats import two_level_interval

    rng = np.random.default_rng(seeds * 100 + int(seed_sd * 1000))
    hits, draws = 0, 2000
    for _ in range(draws):
        counts = rng.integers(2, 6, 500)
        chance = rng.uniform(0.25, 0.75, 500)
        effect = rng.normal(0.0, 0.05, 500)
        base = rng.binomial(counts, chance)
        shift = rng.normal(0.0, seed_sd, seeds)
        arm = rng.binomial(counts[None, :], np.clip(chance + effect + shift[:, None], 0, 1))
        lo, hi = two_level_interval(arm - base, counts)["ci95"]
        hits += lo <= 0 <= hi
    assert 0.93 <= hits / draws <= 0.99


def test_the_verdict_names_each_change_its_interval_its_significance_and_the_judge():
    from dataclasses import replace

    from hermesflow.report import verdict

    def evaluation(per: PerExample, world: bool) -> Evaluation:
        score = {"mean": 0.5, "ci95": [0.4, 0.6]}
        return Evaluation.from_json({
            "n_examples": len(per.ids), "n_questions": sum(per.questions), "judges": {"understanding": "answers vs truth",
                                                                                    "generation": "oracle" if world else "self"},
            "understanding_score": score, "generation_score": score, "gap": score, "understanding_prior": 0.3,
            "understanding_by_type": {}, "generation_by_type": {}, "understanding_prior_by_type": {},
            "per_example": per.to_json(), "settings": {"draw": "test" if world else None},
            **({"prompt_holdout": {"always_seen": []}, "unseen_categories": [], "n_examples_unseen": 2, "n_examples_seen": 2}
               if world else {})})

    many = ["i%d" % i for i in range(40)]
    base = PerExample(many, [0.5] * 40, [0.5] * 40, [2] * 40, [1] * 40, [1] * 40, [i % 2 == 0 for i in range(40)])
    better = replace(base, generation_correct=[2] * 40)  # every item's generation +1 of 2 questions; understanding unchanged
    line = verdict(evaluation(base, True), evaluation(better, True), "round 1")
    assert line.startswith("Verdict, round 1 vs base (40 items, test draw; generation judged by oracle;")
    assert "generation on unseen prompts +0.500 [+0.500, +0.500] (significant)" in line
    assert "understanding +0.000 [+0.000, +0.000] (not significant)" in line
    foreign = verdict(evaluation(replace(base, unseen=[None] * 40), False), evaluation(replace(better, unseen=[None] * 40), False), "round 1")
    assert "generation on unseen prompts: n/a" in foreign and "generation +0.500" in foreign and "judged by self" in foreign
    assert "your held-out data" in foreign


def test_numbers_at_chance_are_flagged_in_the_metrics_and_the_table():
    score = {"mean": 0.5, "ci95": [0.4, 0.6]}
    per = PerExample(["a", "b"], [0.5, 0.5], [0.5, 0.5], [2, 2], [1, 1], [1, 1], [None, None])
    metrics = {"n_examples": 2, "n_questions": 4, "judges": {"understanding": "answers vs truth", "generation": "self"},
               "understanding_score": score, "generation_score": score, "gap": score, "understanding_prior": 0.45,
               "understanding_by_type": {}, "generation_by_type": {}, "understanding_prior_by_type": {}, "per_example": per.to_json()}
    at_chance = Evaluation.from_json(metrics)
    assert len(at_chance.warnings) == 2 and "blank-image prior 0.450 lies inside" in at_chance.warnings[0]
    assert at_chance.to_json()["warnings"] == at_chance.warnings and format_table(at_chance).startswith("WARNING: understanding is at chance")
    fine = Evaluation.from_json({**metrics, "understanding_prior": 0.2, "judges": {**metrics["judges"], "generation": "oracle"}})
    assert fine.warnings == [] and "warnings" not in fine.to_json()


def test_an_interval_of_a_share_stays_between_zero_and_one():
    from hermesflow.stats import DIFFERENCE, SHARE, cluster_mean_ci, mean_ci

    one_in_eight = cluster_mean_ci(np.array([1.0, 0, 0, 0]), np.array([2.0, 2, 2, 2]), SHARE)
    assert one_in_eight["mean"] == 0.125 and one_in_eight["ci95"][0] == 0.0 < one_in_eight["ci95"][1] < 1  # not -0.12
    unbounded = cluster_mean_ci(np.array([1.0, 0, 0, 0]), np.array([2.0, 2, 2, 2]))
    assert unbounded["ci95"][0] < 0 and unbounded["ci95"][1] == one_in_eight["ci95"][1]
    assert mean_ci(np.array([1.0, 1, 1, 0.9]), SHARE)["ci95"][1] == 1.0
    assert cluster_mean_ci(np.array([-2.0, -2, -1, -2]), np.array([2.0, 2, 2, 2]), DIFFERENCE)["ci95"][0] == -1.0
