"""Tokenizers of the built-in model: words of the shapes world, and one image token per grid cell.

The image tokenizer is an exact patch palette: each 8x8 cell becomes one of 19 codes (empty, or one
of 3 shapes x 6 colours), so `decode(encode(x)) == x` on every world image. A design prototype found
that finer 4x4 patches (64 tokens per image) did not learn to generate in 15 CPU minutes, while one
token per cell did in 8 (DESIGN §3).
"""

from __future__ import annotations

import re

import numpy as np

from hermesflow.errors import UsageError
from hermesflow.world.oracle import EMPTY, classify_cells
from hermesflow.world.prompts import PHRASINGS, RELATION_PHRASES
from hermesflow.world.questions import ask_color, ask_count, ask_object, ask_shape, ask_spatial
from hermesflow.world.render import render
from hermesflow.world.scenes import COLOR_NAMES, GRID, NUMBERS, RELATIONS, SHAPES, Obj, Scene, plural

SPECIALS = ("[PAD]", "[EOS]", "[T2I]", "[MMU]", "[SOI]", "[EOI]", "[ANS]", "[MASK]")


def world_words() -> list[str]:
    """Every word that the world's captions, questions and answers use."""
    texts = [re.sub(r"\{\w+\}", " ", t) for templates in PHRASINGS.values() for t in templates]
    texts += list(RELATION_PHRASES.values()) + list(RELATIONS) + list(NUMBERS) + ["yes no an"]
    texts += [plural(s) for s in SHAPES] + [ask_count(s) + ask_object(s, c) + ask_color(s) + ask_shape(c)
                                             for s in SHAPES for c in COLOR_NAMES]
    texts += [ask_spatial(SHAPES[0], SHAPES[1])]
    words = {w for text in texts for w in split_words(text)}
    return sorted(words | set(SHAPES) | set(COLOR_NAMES))


def split_words(text: str) -> list[str]:
    return re.findall(r"[a-z]+|\?", text.lower())


class TextTokenizer:
    """Word-level tokenizer over a fixed vocabulary; ids 0..7 are the special tokens."""

    def __init__(self, words: list[str]):
        self.vocab = list(SPECIALS) + list(words)
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        for name in SPECIALS:
            setattr(self, name.strip("[]").lower(), self.ids[name])  # self.pad, self.eos, ...

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        words = split_words(text)
        unknown = [w for w in words if w not in self.ids]
        if unknown or not words:
            reason = f"unknown words {unknown}" if unknown else "no words"
            raise UsageError(f"text {text!r}: {reason}; the built-in model knows only the shapes world's words "
                             "(for other text, a Janus, Janus-Pro or Show-o folder: docs/models.md)")
        return [self.ids[w] for w in words]

    def decode(self, ids: list[int]) -> str:
        words = []
        for i in ids:
            if i == self.eos:
                break
            if i >= len(SPECIALS):
                words.append(self.vocab[i])
        return " ".join(words).replace(" ?", "?")


class ImageTokenizer:
    """One token per grid cell: 0 = empty, 1 + shape * n_colours + colour = an object."""

    n_tokens = GRID * GRID
    codebook_size = 1 + len(SHAPES) * len(COLOR_NAMES)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """(N, 32, 32, 3) uint8 -> (N, 16) int64 codes. Unrecognisable cells become empty."""
        codes = classify_cells(images)
        codes = codes.reshape(len(codes), -1)
        return np.where(codes == EMPTY, 0, codes + 1).astype(np.int64)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """(N, 16) codes -> (N, 32, 32, 3) uint8 images."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[1] != self.n_tokens:
            raise ValueError(f"expected image tokens of shape (N, {self.n_tokens}), got {tokens.shape}")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.codebook_size):
            raise ValueError(f"image tokens must lie in [0, {self.codebook_size}), got {tokens.min()}..{tokens.max()}")
        return np.stack([render(self.scene(row)) for row in tokens])

    def tokens_of(self, scene: Scene) -> list[int]:
        """The codes of a scene without drawing it (what encode(render(scene)) gives)."""
        codes = [0] * self.n_tokens
        for o in scene.objects:
            codes[o.cell] = 1 + SHAPES.index(o.shape) * len(COLOR_NAMES) + COLOR_NAMES.index(o.color)
        return codes

    def scene(self, tokens: np.ndarray) -> Scene:
        objects = []
        for cell, code in enumerate(tokens):
            if code:
                shape, color = divmod(int(code) - 1, len(COLOR_NAMES))
                objects.append(Obj(SHAPES[shape], COLOR_NAMES[color], *divmod(cell, GRID)))
        return Scene(tuple(objects))
