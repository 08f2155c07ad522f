"""The prompt-level hold-out: which world prompts post-training never sees, so generation can be
measured on prompts the model was not post-trained on.

Generation depends only on the prompt, so a scene-level split (`scenes.split_of`) leaves most eval
captions word for word in the curation data. The hold-out is over `PromptSpec`s (what a prompt asks
for, whatever its phrasing), fixed by rule rather than by a seed so every run holds out the same
specs. About half of each category's specs are held out where a category has enough of them; the
rules are Latin-square-like, so every shape, colour, count and relation still appears in some seen
spec of the category (post-training never has to invent a word):

    colors       (shape, colour): held out when shape index + colour index is even (9 of 18)
    counting     (shape, count): held out when shape index + count is even (5 of 9)
    position     (unordered shape pair, relation written with the lower-index shape first):
                 held out when pair index + relation index is even (6 of 12, i.e. 12 of 24 ordered specs;
                 "a circle left of a square" and "a square right of a circle" are held out together)
    color_attr   the two (shape, colour) objects: held out when the sum of their four indices is even (48 of 90)

single_object (3 specs) and two_object (3 shape pairs) cannot lose a spec without a shape never
being drawn alone or together in post-training: they stay SEEN, and every evaluation says so
(`ALWAYS_SEEN`). Pretraining is not restricted: only post-training data (`recipes.run.train_data`) is.
"""

from __future__ import annotations

from hermesflow.world.prompts import CATEGORIES, PromptSpec
from hermesflow.world.scenes import COLOR_NAMES, RELATIONS, SHAPES

HELD_OUT_CATEGORIES = ("counting", "colors", "position", "color_attr")
ALWAYS_SEEN = tuple(c for c in CATEGORIES if c not in HELD_OUT_CATEGORIES)
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_PAIRS = ((0, 1), (0, 2), (1, 2))  # unordered shape pairs by index


def spec_key(spec: PromptSpec) -> tuple:
    """What a prompt asks for, independent of phrasing and of the order two symmetric objects are named in."""
    if spec.category == "position":
        (s1, _), (s2, _) = spec.objects
        rel = spec.relation
        if SHAPES.index(s1) > SHAPES.index(s2):  # "a square right of a circle" is "a circle left of a square"
            s1, s2, rel = s2, s1, INVERSE[rel]
        return (spec.category, s1, s2, rel)
    if spec.category in ("two_object", "color_attr"):
        return (spec.category, *sorted(spec.objects, key=lambda o: (o[0], o[1] or "")))
    return (spec.category, spec.objects, spec.count)


def is_held_out(spec: PromptSpec) -> bool:
    """True for the specs post-training must never see (the rules of the module docstring)."""
    shape, color = SHAPES.index, COLOR_NAMES.index
    if spec.category == "colors":
        (s, c), = spec.objects
        return (shape(s) + color(c)) % 2 == 0
    if spec.category == "counting":
        return (shape(spec.objects[0][0]) + spec.count) % 2 == 0
    if spec.category == "position":
        _, s1, s2, rel = spec_key(spec)
        if s1 == s2:  # "a circle left of a circle": parseable (a sampled caption may say it), never a world prompt
            return False
        return (_PAIRS.index((shape(s1), shape(s2))) + RELATIONS.index(rel)) % 2 == 0
    if spec.category == "color_attr":
        return sum(shape(s) + color(c) for s, c in spec.objects) % 2 == 0
    if spec.category in ALWAYS_SEEN:
        return False
    raise ValueError(f"unknown category {spec.category!r}; expected one of {CATEGORIES}")


def all_specs(category: str) -> list[PromptSpec]:
    """Every spec the world's `sample_scene` can draw for a category (two named objects differ in
    shape, and in colour when colours are named)."""
    pairs = [(a, b) for a in SHAPES for b in SHAPES if a != b]
    color_pairs = [(a, b) for a in COLOR_NAMES for b in COLOR_NAMES if a != b]
    if category == "single_object":
        return [PromptSpec(category, ((s, None),)) for s in SHAPES]
    if category == "colors":
        return [PromptSpec(category, ((s, c),)) for s in SHAPES for c in COLOR_NAMES]
    if category == "counting":
        return [PromptSpec(category, ((s, None),), count=n) for s in SHAPES for n in (2, 3, 4)]
    if category == "two_object":
        return [PromptSpec(category, ((a, None), (b, None))) for a, b in pairs]
    if category == "position":
        return [PromptSpec(category, ((a, None), (b, None)), relation=r) for a, b in pairs for r in RELATIONS]
    if category == "color_attr":
        return [PromptSpec(category, ((a, c), (b, d))) for a, b in pairs for c, d in color_pairs]
    raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")


def describe() -> dict:
    """The hold-out as it goes into metrics.json: held-out and total distinct specs per category."""
    counts = {}
    for category in CATEGORIES:
        keys = {spec_key(s): is_held_out(s) for s in all_specs(category)}
        counts[category] = [sum(keys.values()), len(keys)]
    return {"rule": "hermesflow.world.holdout", "held_out_categories": list(HELD_OUT_CATEGORIES),
            "always_seen": list(ALWAYS_SEEN), "held_out_specs": counts}
