"""The shapes world as the method's recipes hand it to the components: the world's exact judge of
generated images, its prompt grammar (a caption with one attribute swapped, a caption true of a
scene, questions from a scene) and its own metrics (prompts held out of post-training, GenEval-style
categories). Components see only these methods (`hermesflow.judges.World`), never the world's
scenes or prompt specs, so a data set with its own judge could take the world's place.
"""

from __future__ import annotations

import random
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from hermesflow.data import read_data
from hermesflow.errors import DataError
from hermesflow.options import DataOptions
from hermesflow.records import QA, EvalItem, HomologousData, Record
from hermesflow.results import Evaluation, Interval, Part
from hermesflow.stats import DIFFERENCE, SHARE, cluster_mean_ci, mean_by
from hermesflow.world.holdout import describe as describe_holdout
from hermesflow.world.holdout import is_held_out
from hermesflow.world.oracle import parse_batch
from hermesflow.world.prompts import CATEGORIES, parse_prompt, perturbed_spec, phrase, satisfied_by
from hermesflow.world.questions import answer_on_scene, questions_for
from hermesflow.world.scenes import Scene


class ShapesWorld:
    """The shapes world's judge and prompt grammar. `name` is what metrics call its judgement."""

    name = "oracle"

    def knows(self, record: Record | EvalItem) -> bool:
        """Whether the oracle can judge images for this record: it carries a world scene."""
        return record.scene is not None

    def answer(self, images: np.ndarray, owners: list[int], questions: list[str], choices: list[list[str]],
               names: list[str] | None = None) -> list[str | None]:
        """The exact answer to each question about image `owners[i]`, from the objects the oracle
        parses out of it (None where the question does not apply). The same call as a VLM judge's."""
        scenes = parse_batch(images)
        return [answer_on_scene(q, scenes[o]) for q, o in zip(questions, owners)]

    def accuracy(self, images: np.ndarray, qa: tuple, owners: list[int]) -> np.ndarray:
        """The share of image j's record's questions (`qa[owners[j]]`) the oracle's answers get right."""
        rows = [j for j, r in enumerate(owners) for _ in qa[r]]
        asked = [q for r in owners for q in qa[r]]
        answers = self.answer(images, rows, [q.question for q in asked], [list(q.choices) for q in asked])
        return mean_by(rows, [float(a == q.answer) for a, q in zip(answers, asked)], len(owners))

    def reads(self, caption: str) -> bool:
        """Whether the caption is in the world's phrasing (its prompt parser reads it)."""
        return parse_prompt(caption) is not None

    def perturbed(self, caption: str, key: str) -> str | None:
        """The caption with one attribute swapped (`perturbed_spec`), in the same phrasing; the swap is
        drawn from `key` (seed, round and record id), so a rerun perturbs alike, and only among the
        prompts post-training may see (never a held-out one). None when the world's prompt parser does
        not read the caption, or when every swap of it is held out."""
        spec = parse_prompt(caption)
        if spec is None:
            return None
        said = " ".join(caption.lower().split())
        variant = next((v for v in range(3) if phrase(spec, v) == said), 0)
        swapped = perturbed_spec(spec, random.Random(f"hermesflow-perturb/{key}"), keep=lambda s: not is_held_out(s))
        return None if swapped is None else phrase(swapped, variant)

    def holds_out(self, caption: str) -> bool:
        """Whether the caption names a prompt the world keeps out of post-training (`world.holdout`), so
        that generation can be measured on prompts no training data contains."""
        spec = parse_prompt(caption)
        return spec is not None and is_held_out(spec)

    def true_of(self, caption: str, record: Record) -> bool | None:
        """Whether a caption in the world's phrasing holds for the record's scene (None: not a world
        phrasing, or no scene)."""
        spec = parse_prompt(caption) if record.scene is not None else None
        return None if spec is None else bool(satisfied_by(scene_of(record), spec))

    def questions(self, record: Record, seed: int = 0) -> list[QA] | None:
        """The world's exact questions for a record with a scene and a world caption (None otherwise)."""
        spec = parse_prompt(record.caption)
        if record.scene is None or spec is None:
            return None
        return questions_for(spec, scene_of(record), random.Random(zlib.crc32(f"{seed}:{record.id}".encode())))

    def metrics(self, items: list[EvalItem], generated: np.ndarray, result: Evaluation) -> Evaluation:
        """`result` (`evaluate.evaluate`'s evaluation of `items`, whose images were `generated`) with the
        world's numbers added: which prompts post-training held out, scored apart (`unseen`, `seen`; on
        world captions only), GenEval-style categories where the oracle judged the images, and the
        per-example record completed by `unseen` and `category`."""
        per = result.per_example
        n = len(items)
        specs = [parse_prompt(it.caption) for it in items]
        world = all(spec is not None for spec in specs)  # the hold-out is defined over world prompts only
        unseen = np.array([world and is_held_out(spec) for spec in specs], dtype=bool)
        per = replace(per, unseen=unseen.tolist() if world else [None] * n, category=[spec.category if spec else None for spec in specs])
        counts = np.asarray(per.questions, dtype=np.float64)
        und_c = np.asarray(per.understanding_correct, dtype=np.float64)
        gen_c = np.asarray(per.generation_correct, dtype=np.float64)
        hits = categories = None
        if result.judges["generation"] == self.name:
            scenes = parse_batch(generated)
            hits = np.array([spec is not None and satisfied_by(scene, spec) for scene, spec in zip(scenes, specs)])
            categories = np.array([spec.category if spec else "" for spec in specs])
        geneval, geneval_counts = geneval_scores(hits, categories) if hits is not None else ({}, {})
        result = replace(result, per_example=per, geneval=geneval, geneval_counts=geneval_counts)
        if not world:
            return result

        def part(keep: np.ndarray) -> Part:
            scores = [cluster_mean_ci(totals[keep], counts[keep], bounds) if keep.any() else None
                      for totals, bounds in ((und_c, SHARE), (gen_c, SHARE), (und_c - gen_c, DIFFERENCE))]
            return Part(int(keep.sum()), *map(Interval.of, scores),
                        *(geneval_scores(hits[keep], categories[keep]) if hits is not None else (None, None)))

        return replace(result, prompt_holdout=describe_holdout(), unseen=part(unseen), seen=part(~unseen),
                       unseen_categories=sorted({s.category for s, u in zip(specs, unseen) if u}, key=CATEGORIES.index))


def scene_of(record: Record | EvalItem) -> Scene:
    """A record's scene graph (records keep it opaque: as `read_scenes` parsed it, or as the file held it)."""
    return record.scene if isinstance(record.scene, Scene) else read_scene(record.scene)


def read_scene(items: list[dict]) -> Scene:
    """A scene graph from its JSON (a list of {shape, color, row, col}), checked: known shapes and
    colours, cells on the grid, one object per cell."""
    try:
        return Scene.from_json(items)
    except KeyError as e:
        raise ValueError(f'field "scene" is not a valid scene (an object has no {e})') from None
    except (TypeError, ValueError) as e:
        raise ValueError(f'field "scene" is not a valid scene ({e})') from None


def read_scenes(data: HomologousData, skip_bad: bool = False) -> HomologousData:
    """`data` with every record's scene read by the world (`read_scene`), so a bad one is refused
    before any work with its line and id, or with `skip_bad` left out and listed."""
    records, problems = [], []
    for record in data.records:
        try:
            records.append(record if record.scene is None else replace(record, scene=scene_of(record)))
        except ValueError as e:
            problems.append(f"{data.where(record)}: {e}")
    if problems and not skip_bad:
        raise DataError(problems)
    if not records:
        raise DataError([*problems, f"{data.path}: no usable records"])
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    return replace(data, records=records, skipped=data.skipped + problems)


def read_world_data(path: str | Path, options: DataOptions, **kwargs) -> HomologousData:
    """`data.read_data` with the scenes read by the world (`read_scenes`): how the CLI and the recipes
    read a user's data."""
    return read_scenes(read_data(path, options, **kwargs), kwargs.get("skip_bad", options.skip_bad))


def geneval_scores(hits: np.ndarray, categories: np.ndarray) -> tuple[dict, dict]:
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


WORLD = ShapesWorld()
