"""The shapes world: the oracle is exact on rendered scenes, robust on imperfect ones, and its
verdicts change when a scene is perturbed in the way a prompt or question cares about."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest

from hermesflow.errors import UsageError
from hermesflow.world import (
    CATEGORIES,
    Obj,
    Scene,
    answer,
    parse_batch,
    parse_prompt,
    phrase,
    questions_for,
    render,
    sample_scene,
    satisfies,
)
from hermesflow.world.build import world_records, write_world
from hermesflow.world.holdout import ALWAYS_SEEN, HELD_OUT_CATEGORIES, all_specs, is_held_out, spec_key
from hermesflow.world.prompts import PHRASINGS, PromptSpec
from hermesflow.world.scenes import COLOR_NAMES, GRID, SHAPES, relation, split_of


def _scenes(n: int, seed: int = 0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        scene, spec = sample_scene(CATEGORIES[i % len(CATEGORIES)], rng)
        out.append((scene, spec, questions_for(spec, scene, rng)))
    return out


SCENES = _scenes(2400)


def test_oracle_recovers_every_object_and_answers_every_question():
    images = np.stack([render(scene) for scene, _, _ in SCENES])
    parsed = parse_batch(images)
    assert parsed == [scene for scene, _, _ in SCENES]
    for image, (scene, spec, qas) in zip(images, SCENES):
        assert satisfies(image, spec)
        for qa in qas:
            assert answer(image, qa.question) == qa.answer


def test_every_phrasing_parses_back_to_its_spec():
    for scene, spec, _ in SCENES[:600]:
        for variant in range(len(PHRASINGS[spec.category])):
            assert parse_prompt(phrase(spec, variant)) == spec


def test_every_category_and_object_count_appears():
    counts = {len(scene.objects) for scene, _, _ in SCENES}
    assert counts == {1, 2, 3, 4}
    assert {spec.category for _, spec, _ in SCENES} == set(CATEGORIES)


def _other(values, current):
    return next(v for v in values if v != current)


def _free_cell(scene: Scene) -> tuple[int, int]:
    used = {o.cell for o in scene.objects}
    return divmod(next(c for c in range(GRID * GRID) if c not in used), GRID)


def _breaking_perturbations(scene: Scene, spec):
    """Scenes that violate the prompt, each made by one small edit of the true scene."""
    objs = list(scene.objects)
    first = next(o for o in objs if o.shape == spec.objects[0][0])
    rest = [o for o in objs if o is not first]
    if spec.category in ("single_object", "two_object"):
        yield "removed", Scene(tuple(rest))
        yield "shape swapped", Scene((*rest, dataclasses.replace(first, shape=_other([s for s in SHAPES if s not in {o for o, _ in spec.objects}], None))))
    elif spec.category == "counting":
        yield "removed", Scene(tuple(rest))
        yield "shape swapped", Scene((*rest, dataclasses.replace(first, shape=_other(SHAPES, first.shape))))
    elif spec.category in ("colors", "color_attr"):
        yield "recoloured", Scene((*rest, dataclasses.replace(first, color=_other(COLOR_NAMES, first.color))))
        yield "removed", Scene(tuple(rest))
    elif spec.category == "position":
        other = rest[0]
        for r, c in [(r, c) for r in range(GRID) for c in range(GRID)]:
            moved = dataclasses.replace(first, row=r, col=c)
            if moved.cell != other.cell and relation(moved, other) not in (None, spec.relation):
                yield "moved", Scene((other, moved))
                break


@pytest.mark.parametrize("category", CATEGORIES)
def test_perturbations_break_the_prompt_and_change_an_answer(category):
    checked = 0
    for scene, spec, qas in SCENES:
        if spec.category != category:
            continue
        for how, broken in _breaking_perturbations(scene, spec):
            image = render(broken)
            assert not satisfies(image, spec), f"{how} {broken} still satisfies {spec}"
            changed = [qa for qa in qas if answer(image, qa.question) != qa.answer]
            assert changed, f"{how} {broken}: no question about {phrase(spec)!r} changed its answer"
            checked += 1
    assert checked >= 300


def _noisy(image: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    return np.clip(image + rng.normal(0, sigma, image.shape), 0, 255).astype(np.uint8)


def test_oracle_is_exact_under_pixel_noise():
    rng = np.random.default_rng(0)
    scenes = [scene for scene, _, _ in SCENES[:600]]
    images = np.stack([_noisy(render(s), rng, 20.0) for s in scenes])
    assert parse_batch(images) == scenes


def test_stray_pixels_blobs_and_partial_shapes_are_not_objects():
    rng = np.random.default_rng(1)
    image = np.zeros((32, 32, 3), np.uint8)
    # stray pixels: 40 random bright pixels scattered over the board
    ys, xs = rng.integers(0, 32, 40), rng.integers(0, 32, 40)
    image[ys, xs] = (230, 30, 30)
    # a blob: a whole cell filled with one colour
    image[0:8, 8:16] = (40, 70, 240)
    # a partial shape: the top half of a circle in cell (3, 3)
    half = render(Scene((Obj("circle", "green", 3, 3),)))
    image[24:28, 24:32] = half[24:28, 24:32]
    # a two-coloured square: half red, half blue
    square = render(Scene((Obj("square", "red", 2, 0),)))
    image[16:24, 0:8] = square[16:24, 0:8]
    image[20:24, 0:8][square[20:24, 0:8].any(-1)] = (40, 70, 240)
    assert parse_batch(image) == [Scene(())]


def test_oracle_rejects_wrong_shaped_input():
    with pytest.raises(ValueError, match="shape"):
        parse_batch(np.zeros((16, 16, 3), np.uint8))


def test_undefined_answers_are_none():
    image = render(Scene((Obj("circle", "red", 0, 0), Obj("circle", "blue", 1, 1))))
    assert answer(image, "what color is the circle?") is None  # two circles of two colours
    assert answer(image, "what color is the square?") is None  # no square
    assert answer(image, "is there a square?") == "no"


def test_world_is_deterministic_and_splits_do_not_overlap(tmp_path):
    a = write_world(tmp_path / "a", n=50, seed=3, split="train")
    b = write_world(tmp_path / "b", n=50, seed=3, split="train")
    assert a.read_text() == b.read_text()
    for line in a.read_text().splitlines():
        rec = json.loads(line)
        assert (tmp_path / "a" / rec["image"]).read_bytes() == (tmp_path / "b" / rec["image"]).read_bytes()
    train = {Scene.from_json(r["scene"]).key() for r, _ in world_records(1500, seed=1, split="train")}
    evals = {Scene.from_json(r["scene"]).key() for r, _ in world_records(1500, seed=2, split="eval")}
    assert train and evals and not train & evals
    assert all(split_of(Scene.from_json(r["scene"])) == "eval" for r, _ in world_records(50, seed=5, split="eval"))


def test_world_refuses_a_non_empty_output(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        write_world(tmp_path / "out", n=5, seed=0, split="train")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


# The prompt-level hold-out: generation is measured on prompts post-training never saw.



def test_holdout_is_a_fixed_rule_over_specs_ignoring_phrasing():
    for category in CATEGORIES:
        for spec in all_specs(category):
            texts = {phrase(spec, v) for v in range(3)}
            assert {is_held_out(parse_prompt(t)) for t in texts} == {is_held_out(spec)}  # every phrasing agrees
    # the order two objects are named in does not matter, nor the direction a relation is said in
    left = PromptSpec("position", (("circle", None), ("square", None)), relation="left of")
    right = PromptSpec("position", (("square", None), ("circle", None)), relation="right of")
    assert spec_key(left) == spec_key(right) and is_held_out(left) == is_held_out(right)
    a = PromptSpec("color_attr", (("circle", "red"), ("square", "blue")))
    b = PromptSpec("color_attr", (("square", "blue"), ("circle", "red")))
    assert is_held_out(a) == is_held_out(b)


@pytest.mark.parametrize("category", CATEGORIES)
def test_holdout_covers_each_category_as_documented(category):
    specs = all_specs(category)
    held = [s for s in specs if is_held_out(s)]
    seen = [s for s in specs if not is_held_out(s)]
    if category in ALWAYS_SEEN:
        assert not held
        return
    assert category in HELD_OUT_CATEGORIES
    assert 0.4 <= len(held) / len(specs) <= 0.6  # about half, where there are enough specs
    # every word of the category still appears in a seen spec: post-training never lacks a shape, colour, count or relation
    def words(group):
        return {w for s in group for obj in s.objects for w in obj if w} | {s.count for s in group} | {s.relation for s in group}
    assert words(seen) == words(specs)


def test_post_training_world_data_holds_no_held_out_prompt_and_eval_has_enough_unseen(tmp_path):
    write_world(tmp_path / "seen", n=120, seed=1, split="train", prompts="seen")
    records = [json.loads(line) for line in (tmp_path / "seen" / "data.jsonl").read_text().splitlines()]
    assert len(records) == 120 and not any(is_held_out(parse_prompt(r["caption"])) for r in records)
    assert {r["category"] for r in records} == set(CATEGORIES)
    everything = [r for r, _ in world_records(120, seed=1, split="train")]  # the default (pretraining's world) keeps them
    assert any(is_held_out(parse_prompt(r["caption"])) for r in everything)
    unseen = [r for r, _ in world_records(500, seed=0, split="eval") if is_held_out(parse_prompt(r["caption"]))]
    assert len(unseen) >= 150 and {r["category"] for r in unseen} == set(HELD_OUT_CATEGORIES)
    with pytest.raises(UsageError, match="prompts must be one of"):
        next(world_records(1, seed=0, split="train", prompts="unseen"))


def test_the_world_command_leaves_held_out_prompts_out_of_train_data_unless_asked(tmp_path):
    from hermesflow.cli import main

    def held_out(folder):
        lines = (folder / "data.jsonl").read_text().splitlines()
        return sum(is_held_out(parse_prompt(json.loads(line)["caption"])) for line in lines)

    assert main(["world", "--out", str(tmp_path / "train"), "--n", "60", "--split", "train"]) == 0
    assert held_out(tmp_path / "train") == 0  # post-training data by default: evaluation's unseen prompts stay unseen
    assert main(["world", "--out", str(tmp_path / "all"), "--n", "60", "--split", "train", "--prompts", "all"]) == 0
    assert main(["world", "--out", str(tmp_path / "eval"), "--n", "60", "--split", "eval"]) == 0
    assert held_out(tmp_path / "all") > 0 and held_out(tmp_path / "eval") > 0


def test_the_selection_and_test_draws_share_no_scene_and_no_sampling_seed():
    from hermesflow.world.build import draw_seed, world_eval_items
    from hermesflow.world.scenes import draw_of

    selection = {it.scene.key() for s in range(3) for it in world_eval_items(120, s, draw="selection")}
    test = {it.scene.key() for s in range(3) for it in world_eval_items(120, s, draw="test")}
    assert selection and test and not selection & test
    assert {draw_of(it.scene) for it in world_eval_items(60, 0, draw="test")} == {"test"}
    assert [draw_seed(s, "test") for s in range(5)] == list(range(5))
    assert not {draw_seed(s, "selection") for s in range(1000)} & set(range(1000))
    items = world_eval_items(6, 0, draw="selection")
    assert items[0].id == "selection-0-000000" and len({it.id for it in items}) == 6
