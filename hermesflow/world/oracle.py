"""The exact oracle: parses any 32x32 image of the shapes world back into its objects.

It is the project's judge of generated images (GenEval's detector and the paper's GPT-4o judge in
one), so it must be exact on rendered scenes and conservative on imperfect ones: a cell holds an
object only when its foreground matches a shape template closely (IoU) and is mostly one palette
colour. Noise, stray pixels, partial shapes and blobs are read as empty cells, never as objects.
All cells of a batch are classified at once with array operations.
"""

from __future__ import annotations

import numpy as np

from hermesflow.world.prompts import PromptSpec, parse_prompt, satisfied_by
from hermesflow.world.questions import answer_on_scene
from hermesflow.world.render import PALETTE, TEMPLATES, to_world_size
from hermesflow.world.scenes import BACKGROUND, CELL, COLOR_NAMES, GRID, IMAGE_SIZE, SHAPES, Obj, Scene

FOREGROUND_DISTANCE = 96.0  # RGB distance from the background above which a pixel is foreground
MAX_COLOR_DISTANCE = 90.0  # a pixel farther than this from every palette colour has no colour
MIN_SHAPE_IOU = 0.85  # templates overlap each other by at most 0.70, a filled cell a circle by 0.81
MIN_COLOR_SHARE = 0.75  # share of foreground pixels that must have the object's colour

EMPTY = -1


def _as_batch(images: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) images of the world at any S that is a multiple of 32, judged at 32x32."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[3] != 3 or images.shape[1] != images.shape[2] or images.shape[1] % IMAGE_SIZE:
        raise ValueError(f"expected images of shape (N, S, S, 3) with S a multiple of {IMAGE_SIZE}, got {images.shape}")
    if images.shape[1] != IMAGE_SIZE:
        images = np.stack([to_world_size(image) for image in images])
    return images


def classify_cells(images: np.ndarray) -> np.ndarray:
    """The object in every cell: (N, GRID, GRID) codes `shape * n_colors + colour`, or EMPTY (-1)."""
    images = _as_batch(images)
    n = len(images)
    # (N, GRID, GRID, CELL*CELL, 3): the pixels of each cell, row-major like the templates
    pixels = images.reshape(n, GRID, CELL, GRID, CELL, 3).transpose(0, 1, 3, 2, 4, 5)
    pixels = pixels.reshape(n, GRID, GRID, CELL * CELL, 3).astype(np.float32)

    foreground = ((pixels - np.array(BACKGROUND, np.float32)) ** 2).sum(-1) > FOREGROUND_DISTANCE**2
    fg = foreground.astype(np.float32)
    templates = TEMPLATES.reshape(len(SHAPES), -1).astype(np.float32)
    overlap = fg @ templates.T  # (N, G, G, n_shapes)
    union = fg.sum(-1, keepdims=True) + templates.sum(-1) - overlap
    iou = overlap / np.maximum(union, 1.0)
    shape = iou.argmax(-1)

    to_palette = ((pixels[..., None, :] - PALETTE.astype(np.float32)) ** 2).sum(-1)  # (N,G,G,P,colors)
    nearest = to_palette.argmin(-1)
    coloured = foreground & (to_palette.min(-1) <= MAX_COLOR_DISTANCE**2)
    votes = (nearest[..., None] == np.arange(len(PALETTE))) & coloured[..., None]  # (N,G,G,P,colors)
    counts = votes.sum(-2)
    color = counts.argmax(-1)
    color_share = counts.max(-1) / np.maximum(foreground.sum(-1), 1)

    is_object = (iou.max(-1) >= MIN_SHAPE_IOU) & (color_share >= MIN_COLOR_SHARE)
    return np.where(is_object, shape * len(PALETTE) + color, EMPTY)


def scene_from_codes(codes: np.ndarray) -> Scene:
    """The scene whose (GRID, GRID) cell codes are given (EMPTY cells hold nothing)."""
    objects = []
    for row, col in zip(*np.nonzero(codes != EMPTY)):
        shape, color = divmod(int(codes[row, col]), len(COLOR_NAMES))
        objects.append(Obj(SHAPES[shape], COLOR_NAMES[color], int(row), int(col)))
    return Scene(tuple(objects))


def parse_batch(images: np.ndarray) -> list[Scene]:
    """The scene in each of a batch of (N, 32, 32, 3) uint8 images."""
    return [scene_from_codes(codes) for codes in classify_cells(images)]


def parse(image: np.ndarray) -> Scene:
    """The scene in one (32, 32, 3) uint8 image."""
    return parse_batch(image)[0]


def answer(image: np.ndarray, question: str) -> str | None:
    """The oracle's answer to a world question about an image (None if the image leaves it open)."""
    return answer_on_scene(question, parse(image))


def satisfies(image: np.ndarray, prompt: PromptSpec | str) -> bool:
    """GenEval's verdict: does the image show what the prompt asks for?"""
    if isinstance(prompt, str):
        spec = parse_prompt(prompt)
        if spec is None:
            raise ValueError(f"not a prompt of the shapes world: {prompt!r}")
        prompt = spec
    return satisfied_by(parse(image), prompt)
