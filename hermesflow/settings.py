"""The settings of every `hermesflow` verb, one dataclass each, every field documented.

They hold no logic and import nothing heavy, so the command line can list them quickly. A field
appears as `--field-name` on the command line and as `field_name:` in a `--config` YAML file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hermesflow.config import option


@dataclass
class WorldConfig:
    """`hermesflow world`: write a split of the shapes world as homologous data."""

    out: Path = option(None, "output folder (must not exist or be empty)", required=True)
    n: int = option(1000, "number of scenes")
    seed: int = option(0, "random seed; the same seed and split give the same files")
    split: str = option("train", "which split; train and eval never share a scene", choices=("train", "eval"))


@dataclass
class ValidateConfig:
    """`hermesflow validate DATA`: check a homologous data file and summarise it."""

    data: Path = option(None, "data.jsonl, or a folder holding it", positional=True, required=True)
    image_size: int = option(32, "expected image width and height in pixels; 0 accepts any size")
    skip_bad: bool = option(False, "report bad records and go on without them instead of failing")


PRESETS = {
    # micro: for tests, about a minute on 2 cores
    "micro": dict(d_model=64, n_layers=2, n_heads=2, steps=400, batch_size=48, lr=2e-3),
    # default: the shipped base model
    "default": dict(d_model=256, n_layers=6, n_heads=4, steps=3000, batch_size=64, lr=1e-3),
}


@dataclass
class PretrainConfig:
    """`hermesflow pretrain`: train the built-in unified model from scratch on the shapes world."""

    out: Path = option(None, "output folder: the model, its checkpoint and metrics.jsonl", required=True)
    preset: str = option("default", "model size and schedule", choices=tuple(PRESETS))
    steps: int = option(0, "optimizer steps; 0 takes the preset's")
    batch_size: int = option(0, "examples per step, split evenly across the three tasks; 0 takes the preset's")
    lr: float = option(0.0, "peak AdamW learning rate; 0 takes the preset's")
    weight_decay: float = option(0.01, "AdamW weight decay")
    warmup: int = option(100, "linear warm-up steps before the cosine decay")
    cond_dropout: float = option(0.1, "share of text-to-image prompts replaced by the empty prompt (for guidance)")
    bf16: bool = option(True, "bfloat16 autocast (about 1.8x faster on this CPU than fp32)")
    checkpoint_every: int = option(250, "steps between resumable checkpoints")
    seed: int = option(0, "seed of the data stream, the masks and the initial weights")


@dataclass
class EvalConfig:
    """`hermesflow eval`: Table 4 and Table 2 analogs for a model, on the world's eval split."""

    model: Path = option(None, "model folder (save_pretrained format)", required=True)
    out: Path = option(None, "output folder for metrics.json and a sample sheet", required=True)
    n: int = option(1000, "eval examples (world eval split scenes, or the first n records of --data)")
    data: Path = option(None, "homologous data with qa to evaluate on instead of the world's eval split")
    seed: int = option(0, "seed of the eval split and of sampling")
    steps: int = option(10, "MaskGIT decoding steps")
    guidance: float = option(2.0, "classifier-free guidance scale w in (1 + w) cond - w uncond")
    temperature: float = option(1.0, "sampling temperature for generation")
    encoder: Path = option(None, "local sentence encoder folder for caption similarity (default: shipped MiniLM-L6)")
