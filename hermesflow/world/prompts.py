"""Prompts in GenEval's six categories: their structured form, phrasings, parsing and truth.

A `PromptSpec` is what a prompt asks for; `satisfied_by(scene, spec)` is GenEval's rule for the
category, applied exactly to a scene:
- single_object: at least one object of the shape;  two_object: at least one of each shape;
- counting: exactly `count` objects of the shape;  colors: an object of the shape and colour;
- position: an object of the first shape at `relation` to one of the second;
- color_attr: an object of each (colour, shape).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace

from hermesflow.records import GENEVAL_CATEGORIES
from hermesflow.world.scenes import (
    COLOR_NAMES,
    GRID,
    NUMBERS,
    RELATIONS,
    SHAPES,
    Obj,
    Scene,
    plural,
    relation,
)

CATEGORIES = GENEVAL_CATEGORIES  # the world writes prompts in each of GenEval's categories

# Placeholders: {c1} {s1} colour and shape of the first object, {c2} {s2} of the second,
# {n} a number word, {p1} the first shape's plural, {r} a relation phrase.
PHRASINGS = {
    "single_object": ("a photo of a {s1}", "a {s1}", "an image of a {s1}"),
    "two_object": ("a photo of a {s1} and a {s2}", "a {s1} and a {s2}", "an image of a {s1} and a {s2}"),
    "counting": ("a photo of {n} {p1}", "{n} {p1}", "an image of {n} {p1}"),
    "colors": ("a photo of a {c1} {s1}", "a {c1} {s1}", "an image of a {c1} {s1}"),
    "position": ("a photo of a {s1} {r} a {s2}", "a {s1} {r} a {s2}", "an image of a {s1} {r} a {s2}"),
    "color_attr": (
        "a photo of a {c1} {s1} and a {c2} {s2}",
        "a {c1} {s1} and a {c2} {s2}",
        "an image of a {c1} {s1} and a {c2} {s2}",
    ),
}
RELATION_PHRASES = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}


@dataclass(frozen=True)
class PromptSpec:
    """What a prompt asks for. `objects` holds (shape, colour or None) for each named object."""

    category: str
    objects: tuple[tuple[str, str | None], ...]
    count: int | None = None
    relation: str | None = None


def satisfied_by(scene: Scene, spec: PromptSpec) -> bool:
    """GenEval's rule for the prompt's category, evaluated on a scene."""

    def matching(shape: str, color: str | None) -> list[Obj]:
        return [o for o in scene.objects if o.shape == shape and (color is None or o.color == color)]

    if spec.category == "counting":
        return len(matching(spec.objects[0][0], None)) == spec.count
    if spec.category == "position":
        (s1, c1), (s2, c2) = spec.objects
        return any(relation(a, b) == spec.relation for a in matching(s1, c1) for b in matching(s2, c2))
    return all(matching(shape, color) for shape, color in spec.objects)


def _article_fix(text: str) -> str:
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def phrase(spec: PromptSpec, variant: int = 0) -> str:
    """The prompt text for a spec, in one of its category's phrasings."""
    fields = {"r": RELATION_PHRASES.get(spec.relation or "", "")}
    for i, (shape, color) in enumerate(spec.objects, start=1):
        fields[f"s{i}"], fields[f"c{i}"], fields[f"p{i}"] = shape, color or "", plural(shape)
    if spec.count is not None:
        fields["n"] = NUMBERS[spec.count]
    template = PHRASINGS[spec.category][variant % len(PHRASINGS[spec.category])]
    return _article_fix(template.format(**fields))


def _pattern(template: str) -> re.Pattern:
    alternatives = {
        "s": SHAPES,
        "c": COLOR_NAMES,
        "p": tuple(plural(s) for s in SHAPES),
        "n": NUMBERS,
        "r": tuple(RELATION_PHRASES.values()),
    }
    regex = ""
    for part in re.split(r"(\{\w\d?\})", template):
        slot = re.fullmatch(r"\{(\w)(\d?)\}", part)
        if slot:
            regex += f"(?P<{slot[1]}{slot[2]}>{'|'.join(alternatives[slot[1]])})"
        else:  # "a" and "an" are interchangeable, since phrase() picks the article by the next word
            regex += re.sub(r"\ban?\b", "an?", re.escape(part))
    return re.compile(regex)


_PATTERNS = [(cat, _pattern(t)) for cat, templates in PHRASINGS.items() for t in templates]


def parse_prompt(text: str) -> PromptSpec | None:
    """The spec of a world prompt, or None if the text is not one of the world's phrasings."""
    text = " ".join(text.lower().split())
    for category, pattern in _PATTERNS:
        m = pattern.fullmatch(text)
        if not m:
            continue
        g = m.groupdict()
        if category == "counting":
            shape = g["p1"][:-1]
            return PromptSpec(category, ((shape, None),), count=NUMBERS.index(g["n"]))
        objects = tuple((g[f"s{i}"], g.get(f"c{i}")) for i in (1, 2) if f"s{i}" in g)
        rel = next((k for k, v in RELATION_PHRASES.items() if v == g.get("r")), None)
        return PromptSpec(category, objects, relation=rel)
    return None


def sample_scene(category: str, rng: random.Random) -> tuple[Scene, PromptSpec]:
    """A random scene made to satisfy a random prompt of the category, and that prompt.

    Scenes hold exactly the objects their prompt names (1 to 4); unnamed attributes are random.
    Two named objects always differ in shape, and in colour when colours are named.
    """
    cells = [divmod(c, GRID) for c in rng.sample(range(GRID * GRID), 4)]
    shapes = rng.sample(SHAPES, 2)
    colors = rng.sample(COLOR_NAMES, 2)
    if category in ("single_object", "colors"):
        o = Obj(shapes[0], colors[0], *cells[0])
        return Scene((o,)), PromptSpec(category, ((o.shape, o.color if category == "colors" else None),))
    if category == "counting":
        n = rng.randint(2, 4)
        objects = tuple(Obj(shapes[0], rng.choice(COLOR_NAMES), *cells[i]) for i in range(n))
        return Scene(objects), PromptSpec(category, ((shapes[0], None),), count=n)
    if category == "position":
        free = [divmod(c, GRID) for c in range(GRID * GRID) if divmod(c, GRID) != cells[0]]
        a = Obj(shapes[0], rng.choice(COLOR_NAMES), *cells[0])
        b = Obj(shapes[1], rng.choice(COLOR_NAMES), *rng.choice(free))
        while relation(a, b) is None:  # diagonal: redraw the second cell until the relation is defined
            b = Obj(b.shape, b.color, *rng.choice(free))
        return Scene((a, b)), PromptSpec(category, ((a.shape, None), (b.shape, None)), relation=relation(a, b))
    if category == "two_object":
        a = Obj(shapes[0], rng.choice(COLOR_NAMES), *cells[0])
        b = Obj(shapes[1], rng.choice(COLOR_NAMES), *cells[1])
        return Scene((a, b)), PromptSpec(category, ((a.shape, None), (b.shape, None)))
    if category == "color_attr":
        a, b = Obj(shapes[0], colors[0], *cells[0]), Obj(shapes[1], colors[1], *cells[1])
        return Scene((a, b)), PromptSpec(category, ((a.shape, a.color), (b.shape, b.color)))
    raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")


def perturbed_spec(spec: PromptSpec, rng: random.Random, keep=None) -> PromptSpec | None:
    """`spec` with exactly one attribute swapped: an attribute slot (an object's shape, a named
    colour, the count, the relation) is drawn uniformly, then a new value for it. Named objects keep
    distinct shapes (and distinct named colours), as the world's prompts do, and counts stay in 2-4.
    With `keep`, only the specs it accepts are drawn from; None when it accepts none."""
    slots: list[list[PromptSpec]] = []
    for i, (shape, color) in enumerate(spec.objects):
        others = [o for j, o in enumerate(spec.objects) if j != i]

        def with_object(new: tuple[str, str | None], i=i) -> PromptSpec:
            return replace(spec, objects=spec.objects[:i] + (new,) + spec.objects[i + 1 :])

        slots.append([with_object((s, color)) for s in SHAPES if s != shape and s not in {o[0] for o in others}])
        if color is not None:
            slots.append([with_object((shape, c)) for c in COLOR_NAMES if c != color and c not in {o[1] for o in others}])
    if spec.count is not None:
        slots.append([replace(spec, count=n) for n in (2, 3, 4) if n != spec.count])
    if spec.relation is not None:
        slots.append([replace(spec, relation=r) for r in RELATIONS if r != spec.relation])
    if keep is not None:
        slots = [[s for s in slot if keep(s)] for slot in slots]
    slots = [s for s in slots if s]
    return rng.choice(rng.choice(slots)) if slots else None
