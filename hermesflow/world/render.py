"""Drawing scenes as RGB images: each object is a fixed 8x8 pixel template painted in its cell."""

from __future__ import annotations

import numpy as np
from PIL import Image

from hermesflow.world.scenes import BACKGROUND, CELL, COLORS, IMAGE_SIZE, SHAPES, Scene

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


def at_size(image: np.ndarray, size: int) -> np.ndarray:
    """A 32x32 world image drawn at `size` pixels (a multiple of 32), each pixel a block."""
    if size % IMAGE_SIZE:
        raise ValueError(f"world images are drawn at multiples of {IMAGE_SIZE} pixels, not {size}")
    return upscale(image, size // IMAGE_SIZE)


def to_world_size(image: np.ndarray) -> np.ndarray:
    """An RGB uint8 image of any size as 32x32: a square multiple of 32 by block means (exact on the
    world drawn larger; a generated image's soft edges average out), anything else by a box filter."""
    image = np.asarray(image)
    h, w = image.shape[:2]
    if (h, w) == (IMAGE_SIZE, IMAGE_SIZE):
        return image
    if h == w and h % IMAGE_SIZE == 0:
        k = h // IMAGE_SIZE
        blocks = image.reshape(IMAGE_SIZE, k, IMAGE_SIZE, k, 3).astype(np.float32).mean(axis=(1, 3))
        return np.rint(blocks).astype(np.uint8)
    return np.asarray(Image.fromarray(image).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX))


def save_sample_sheet(path, images: np.ndarray, columns: int = 8, rows: int = 4) -> None:
    """A grid of the first generated images (shown at 32x32), enlarged, for a person to look at."""
    shown = np.stack([to_world_size(image) for image in images[: columns * rows]])
    pad = np.pad(shown, ((0, columns * rows - len(shown)), (1, 1), (1, 1), (0, 0)), constant_values=90)
    grid = pad.reshape(rows, columns, 34, 34, 3).transpose(0, 2, 1, 3, 4).reshape(rows * 34, columns * 34, 3)
    Image.fromarray(upscale(grid, 4)).save(path)
