"""TIFA-style multiple-choice questions about a prompt, and their exact answers on a scene.

Questions are derived from the prompt (as TIFA derives them from the text), so they can be asked of
the real image and of any image generated for that prompt. Each prompt also gets one question whose
answer is "no" (a shape the prompt does not name), so that "yes" alone does not score.
"""

from __future__ import annotations

import random
import re

from hermesflow.records import QA, QUESTION_TYPES  # noqa: F401 (the world's question types)
from hermesflow.world.prompts import PromptSpec
from hermesflow.world.scenes import COLOR_NAMES, NUMBERS, RELATIONS, SHAPES, Obj, Scene, plural, relation

YES_NO = ("yes", "no")


def _an(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def ask_object(shape: str, color: str | None = None) -> str:
    return f"is there {_an(f'{color} {shape}' if color else shape)}?"


def ask_count(shape: str) -> str:
    return f"how many {plural(shape)} are there?"


def ask_color(shape: str) -> str:
    return f"what color is the {shape}?"


def ask_shape(color: str) -> str:
    return f"what shape is the {color} object?"


def ask_spatial(shape1: str, shape2: str) -> str:
    return f"where is the {shape1} relative to the {shape2}?"


_ALT_S, _ALT_C = "|".join(SHAPES), "|".join(COLOR_NAMES)
_PARSERS = (
    ("object", re.compile(rf"is there an? (?:(?P<c>{_ALT_C}) )?(?P<s>{_ALT_S})\?")),
    ("count", re.compile(rf"how many (?P<s>{_ALT_S})s are there\?")),
    ("color", re.compile(rf"what color is the (?P<s>{_ALT_S})\?")),
    ("shape", re.compile(rf"what shape is the (?P<c>{_ALT_C}) object\?")),
    ("spatial", re.compile(rf"where is the (?P<s>{_ALT_S}) relative to the (?P<s2>{_ALT_S})\?")),
)


def _single(values: set[str]) -> str | None:
    return next(iter(values)) if len(values) == 1 else None


def answer_on_scene(question: str, scene: Scene) -> str | None:
    """The exact answer to a world question about a scene; None when the scene leaves it undefined
    (the object asked about is missing, or several objects answer differently)."""
    for kind, pattern in _PARSERS:
        m = pattern.fullmatch(question.strip().lower())
        if m:
            break
    else:
        raise ValueError(f"not a question of the shapes world: {question!r}")
    g = m.groupdict()

    def having(shape: str | None = None, color: str | None = None) -> list[Obj]:
        return [o for o in scene.objects if shape in (None, o.shape) and color in (None, o.color)]

    if kind == "object":
        return "yes" if having(g["s"], g["c"]) else "no"
    if kind == "count":
        n = len(having(g["s"]))
        return NUMBERS[n] if n < len(NUMBERS) else None
    if kind == "color":
        return _single({o.color for o in having(g["s"])})
    if kind == "shape":
        return _single({o.shape for o in having(color=g["c"])})
    return _single({relation(a, b) for a in having(g["s"]) for b in having(g["s2"])})


def questions_for(spec: PromptSpec, scene: Scene, rng: random.Random) -> list[QA]:
    """TIFA-style questions for a prompt, answered on the scene drawn for it."""
    named = [shape for shape, _ in spec.objects]
    asked: list[tuple[str, tuple[str, ...], str]] = []
    for shape, color in spec.objects:
        if spec.category == "counting":
            asked.append((ask_count(shape), NUMBERS, "count"))
        else:
            asked.append((ask_object(shape), YES_NO, "object"))
        if color is not None:
            asked.append((ask_color(shape), COLOR_NAMES, "color"))
            asked.append((ask_shape(color), SHAPES, "shape"))
    if spec.relation is not None:
        asked.append((ask_spatial(named[0], named[1]), RELATIONS, "spatial"))
    absent = rng.choice([s for s in SHAPES if s not in named])
    asked.append((ask_object(absent), YES_NO, "object"))

    qas = []
    for question, choices, kind in asked:
        answer = answer_on_scene(question, scene)
        assert answer in choices, f"scene {scene.key()} does not answer {question!r}"
        qas.append(QA(question, tuple(choices), answer, kind))
    return qas
