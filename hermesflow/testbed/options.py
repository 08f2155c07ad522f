"""The settings of `hermesflow pretrain`: the built-in model's size and schedule. They import
nothing heavy, so the command line can list them quickly."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hermesflow.config import option, preset_names


@dataclass
class PretrainConfig:
    """`hermesflow pretrain`: train the built-in unified model from scratch on the shapes world."""

    PRESETS = "pretrain"  # micro: for tests, about a minute on 2 cores; default: the shipped base model

    out: Path = option(None, "output folder: the model, its checkpoint and metrics.jsonl", required=True)
    preset: str = option("default", "model size and schedule (hermesflow/presets/pretrain/)", choices=preset_names("pretrain"),
                         changes_results=False)
    d_model: int = option(0, "the model's width; 0 takes the preset's", minimum=0, unset=0)
    n_layers: int = option(0, "transformer blocks; 0 takes the preset's", minimum=0, unset=0)
    n_heads: int = option(0, "attention heads; 0 takes the preset's", minimum=0, unset=0)
    steps: int = option(0, "optimizer steps; 0 takes the preset's", minimum=0, unset=0)
    batch_size: int = option(0, "examples per step, split evenly across the three tasks; 0 takes the preset's", minimum=0, unset=0)
    lr: float = option(0.0, "peak AdamW learning rate; 0 takes the preset's", minimum=0.0, unset=0.0)
    weight_decay: float = option(0.01, "AdamW weight decay", minimum=0.0)
    warmup: int = option(100, "linear warm-up steps before the cosine decay")
    cond_dropout: float = option(0.1, "share of text-to-image prompts replaced by the empty prompt (for guidance)", minimum=0.0, maximum=1.0)
    caption_noise: float = option(0.3, "share of captions (text-to-image and captioning) with one attribute wrong, like web alt-text; "
                                  "0.3 made the shipped base (experiments/zero.md)", minimum=0.0, maximum=1.0)
    bf16: bool = option(True, "bfloat16 autocast (about 1.8x faster on this CPU than fp32)")
    checkpoint_every: int = option(250, "steps between resumable checkpoints", minimum=1)
    seed: int = option(0, "seed of the data stream, the masks and the initial weights")
