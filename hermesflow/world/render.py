"""Drawing scenes as RGB images: each object is a fixed 8x8 pixel template painted in its cell."""

from __future__ import annotations

import numpy as np

from hermesflow.world.scenes import BACKGROUND, CELL, COLORS, GRID, IMAGE_SIZE, SHAPES, Scene

_TEMPLATE_ART = {
    "circle": """
        ..####..
        .######.
        ########
        ########
        ########
        ########
        .######.
        ..####..""",
    "square": """
        ........
        .######.
        .######.
        .######.
        .######.
        .######.
        .######.
        ........""",
    "triangle": """
        ...##...
        ...##...
        ..####..
        ..####..
        .######.
        .######.
        ########
        ........""",
}


def _parse_art(art: str) -> np.ndarray:
    rows = [line.strip() for line in art.strip().splitlines()]
    return np.array([[ch == "#" for ch in row] for row in rows], dtype=bool)


TEMPLATES = np.stack([_parse_art(_TEMPLATE_ART[s]) for s in SHAPES])  # (n_shapes, CELL, CELL)
PALETTE = np.array([COLORS[c] for c in COLORS], dtype=np.uint8)  # (n_colors, 3)
assert TEMPLATES.shape[1:] == (CELL, CELL)


def render(scene: Scene) -> np.ndarray:
    """The scene as a (32, 32, 3) uint8 RGB image."""
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for o in scene.objects:
        patch = image[o.row * CELL : (o.row + 1) * CELL, o.col * CELL : (o.col + 1) * CELL]
        patch[TEMPLATES[SHAPES.index(o.shape)]] = COLORS[o.color]
    return image


def upscale(image: np.ndarray, factor: int = 8) -> np.ndarray:
    """Nearest-neighbour enlargement so that a person can see a 32x32 image."""
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


