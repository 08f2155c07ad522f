"""The shapes world's vocabulary, scenes and their spatial relations.

A scene is a set of coloured shapes on a GRID x GRID board, at most one object per cell. Because
objects sit on a grid, "left of", "above" etc. are exact: the relation between two cells is the
direction of the larger of the column and row offsets, and undefined when they are equal.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

GRID = 4  # cells per side
CELL = 8  # pixels per cell side
IMAGE_SIZE = GRID * CELL  # 32

SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 70, 240),
    "yellow": (240, 230, 30),
    "purple": (160, 40, 210),
    "orange": (250, 140, 20),
}
COLOR_NAMES = tuple(COLORS)
BACKGROUND = (0, 0, 0)
RELATIONS = ("left of", "right of", "above", "below")
NUMBERS = ("zero", "one", "two", "three", "four")
MAX_OBJECTS = 4


@dataclass(frozen=True, order=True)
class Obj:
    """One object: a shape of a colour in grid cell (row, col)."""

    shape: str
    color: str
    row: int
    col: int

    @property
    def cell(self) -> int:
        return self.row * GRID + self.col


@dataclass(frozen=True)
class Scene:
    """The objects of one image, kept sorted by cell so equal scenes compare equal."""

    objects: tuple[Obj, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(sorted(self.objects, key=lambda o: o.cell)))
        cells = [o.cell for o in self.objects]
        if len(set(cells)) != len(cells):
            raise ValueError(f"two objects share a cell in {self.objects}")
        for o in self.objects:
            if o.shape not in SHAPES or o.color not in COLORS:
                raise ValueError(f"unknown shape or colour in {o}")
            if not (0 <= o.row < GRID and 0 <= o.col < GRID):
                raise ValueError(f"cell out of the {GRID}x{GRID} grid in {o}")

    def key(self) -> str:
        """A canonical string for the scene, stable across runs and Python versions."""
        return ";".join(f"{o.shape},{o.color},{o.row},{o.col}" for o in self.objects)

    def to_json(self) -> list[dict]:
        return [{"shape": o.shape, "color": o.color, "row": o.row, "col": o.col} for o in self.objects]

    @classmethod
    def from_json(cls, items: list[dict]) -> "Scene":
        return cls(tuple(Obj(d["shape"], d["color"], int(d["row"]), int(d["col"])) for d in items))


def relation(a: Obj, b: Obj) -> str | None:
    """Where `a` is relative to `b` along the dominant axis; None when the offsets tie."""
    dc, dr = a.col - b.col, a.row - b.row
    if abs(dc) == abs(dr):
        return None
    if abs(dc) > abs(dr):
        return "left of" if dc < 0 else "right of"
    return "above" if dr < 0 else "below"


DRAWS = ("selection", "test")


def draw_of(scene: Scene) -> str:
    """Which half of the eval split a scene belongs to, by a second hash of its content: "selection"
    (where recipes and settings are compared and chosen) or "test" (where what was chosen is
    reported). The two draws share no scene."""
    digest = hashlib.sha1(f"hermesflow-draw/{scene.key()}".encode()).digest()
    return DRAWS[digest[0] % 2]


def split_of(scene: Scene, eval_fraction: float = 0.2) -> str:
    """Assign a scene to 'train' or 'eval' by a hash of its content, so splits never overlap."""
    digest = hashlib.sha1(scene.key().encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction else "train"


def plural(shape: str) -> str:
    return shape + "s"
