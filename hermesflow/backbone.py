"""The Backbone protocol: what HermesFlow needs from a unified model (DESIGN §4).

Curation, training and evaluation use only these methods, so any unified model that provides them
(the built-in `UnifiedModel`; adapters for Janus, Emu3 or Show-o) can be post-trained. Images at
this boundary are (N, H, W, 3) uint8 arrays; generated images are kept as token ids, because
re-encoding a decoded PNG can change the tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class Backbone(Protocol):
    def sample_captions(self, images: np.ndarray, n: int = 1, temperature: float = 1.0, top_k: int | None = None,
                        seed: int = 0) -> list[list[str]]:
        """`n` captions per image; temperature 0 is greedy."""

    def answer(self, images: np.ndarray, questions: list[str], choices: list[list[str]]) -> list[str]:
        """One chosen option per (image, question): multiple choice by log-likelihood."""

    def generate(self, prompts: list[str], n: int = 1, steps: int = 10, guidance: float = 2.0,
                 temperature: float = 1.0, seed: int = 0) -> torch.Tensor:
        """Image token ids, (len(prompts) * n, L), the n samples of a prompt adjacent."""

    def decode(self, tokens: torch.Tensor) -> np.ndarray:
        """Image token ids -> (N, H, W, 3) uint8 images."""

    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        """Images -> the token ids the model reads them as."""

    def caption_logprob(self, images: np.ndarray | torch.Tensor, captions: list[str], average: bool = False) -> torch.Tensor:
        """log π(caption | image), (N,), summed over tokens (or their mean)."""

    def image_logprob(self, prompts: list[str], tokens: torch.Tensor, seeds: list[int], samples: int = 1,
                      ratio_weighting: bool = False, average: bool = False) -> torch.Tensor:
        """log π(image tokens | prompt), (N,): exact for autoregressive image tokens, a Monte-Carlo
        estimate over masks drawn from `seeds` for masked generators."""

    def save_pretrained(self, directory: str | Path) -> None:
        """Weights and config to a folder, no pickle."""
