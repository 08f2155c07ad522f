"""Pretraining the built-in unified model from scratch on the shapes world (`hermesflow pretrain`).

Each step draws a fresh batch of train-split scenes and mixes three tasks in one forward pass:
text-to-image (masked image modelling, cosine mask schedule, condition dropout for guidance),
captioning and question answering (next-token cross-entropy on the caption / answer). Batches and
masks are functions of (seed, step) alone, so a run resumed from a checkpoint continues exactly.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from hermesflow import config
from hermesflow.backbones.maskgit import mask_ratio
from hermesflow.errors import UsageError
from hermesflow.loop import TrainingLoop
from hermesflow.options import TrainingOptions
from hermesflow.testbed.model import UnifiedConfig, UnifiedModel
from hermesflow.testbed.options import PretrainConfig
from hermesflow.world.prompts import CATEGORIES, PromptSpec, perturbed_spec, phrase, sample_scene
from hermesflow.world.questions import questions_for
from hermesflow.world.scenes import split_of


@dataclass
class Batch:
    """One mixed batch: prompts and image codes (t2i), and image codes with text (caption / VQA)."""

    t2i_prompts: list[list[int]]
    t2i_codes: torch.Tensor
    t2i_masked: torch.Tensor
    mmu_codes: torch.Tensor
    mmu_prefixes: list[list[int]]
    mmu_targets: list[list[int]]
    n_caption: int


def noisy_caption(spec: PromptSpec, rng: random.Random, noise: float) -> str:
    """The scene's caption in a random phrasing; with probability `noise`, one attribute of it is
    wrong (`perturbed_spec`), as web alt-text often is. Without noise the model learns p(image | caption)
    from perfect pairs, and its own correct samples can teach it nothing its pretraining did not:
    with noise, choosing those samples is a cleaner signal than the data it was pretrained on."""
    if noise and rng.random() < noise:
        spec = perturbed_spec(spec, rng)
    return phrase(spec, rng.randrange(3))


def make_batch(model: UnifiedModel, seed: int, step: int, size: int, cond_dropout: float, caption_noise: float = 0.0) -> Batch:
    """The batch of `step`: a deterministic function of (seed, step). Caption noise applies to the
    captions of both text-to-image and captioning (the same noisy image–caption pairs); question
    answering stays exact."""
    rng = random.Random(f"pretrain/{seed}/{step}")
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    third = size // 3
    examples = []
    for _ in range(third * 3):
        category = rng.choice(CATEGORIES)
        scene, spec = sample_scene(category, rng)
        while split_of(scene) != "train":
            scene, spec = sample_scene(category, rng)
        examples.append((scene, spec))
    t2i, cap, vqa = examples[:third], examples[third : 2 * third], examples[2 * third :]

    prompts = [[] if rng.random() < cond_dropout else model.encode_text(noisy_caption(spec, rng, caption_noise)) for _, spec in t2i]
    codes = torch.tensor([model.images.tokens_of(scene) for scene, _ in t2i])
    ratios = mask_ratio(torch.rand(len(t2i), generator=g))
    n = model.images.n_tokens
    count = torch.clamp(torch.ceil(ratios * n), 1, n)
    masked = torch.argsort(torch.rand(len(t2i), n, generator=g), dim=1).argsort(dim=1) < count[:, None]

    prefixes, targets = [], []
    for scene, spec in cap:
        prefixes.append([])
        targets.append(model.encode_text(noisy_caption(spec, rng, caption_noise)) + [model.text.eos])
    for scene, spec in vqa:
        qa = rng.choice(questions_for(spec, scene, rng))
        prefixes.append(model.encode_text(qa.question) + [model.text.ans])
        targets.append(model.encode_text(qa.answer) + [model.text.eos])
    mmu_codes = torch.tensor([model.images.tokens_of(scene) for scene, _ in cap + vqa])
    return Batch(prompts, codes, masked, mmu_codes, prefixes, targets, len(cap))


def losses(model: UnifiedModel, batch: Batch) -> dict[str, torch.Tensor]:
    """Mean cross-entropy of each task, from one forward pass over the whole mixed batch."""
    t_tokens, t_mask = model.t2i_batch(batch.t2i_prompts, torch.where(batch.t2i_masked, -1, batch.t2i_codes))
    m_tokens, m_mask = model.mmu_batch(batch.mmu_codes, [p + t for p, t in zip(batch.mmu_prefixes, batch.mmu_targets)])
    logits, _ = model.net(torch.cat([t_tokens, m_tokens]), torch.cat([t_mask, m_mask]))
    t_logits, m_logits = logits[: len(t_tokens)].float(), logits[len(t_tokens) :].float()

    s = model.t2i_image_start
    image_logits = t_logits[:, s : s + model.images.n_tokens, model.image_offset :]
    t2i = F.cross_entropy(image_logits[batch.t2i_masked], batch.t2i_codes[batch.t2i_masked])

    target = torch.full(m_tokens.shape, -100, dtype=torch.long)
    for i, (p, t) in enumerate(zip(batch.mmu_prefixes, batch.mmu_targets)):
        start = model.mmu_text_start + len(p)
        target[i, start : start + len(t)] = torch.tensor(t)
    token_loss = F.cross_entropy(m_logits[:, :-1].transpose(1, 2), target[:, 1:], reduction="none")
    counts = (target[:, 1:] != -100).sum(1)
    per_example = token_loss.sum(1) / counts
    c = batch.n_caption
    return {"t2i": t2i, "caption": per_example[:c].mean(), "vqa": per_example[c:].mean()}


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak. Kept beside `loop.lr_lambda` (which
    decays to zero) rather than folded into it: its warm-up rounds as lr·(step + 1) / warmup, and the
    shipped base was trained with exactly these rates."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(cfg: PretrainConfig) -> UnifiedModel:
    """Train (or resume) and write the model to `cfg.out`; returns the trained model."""
    cfg = config.complete(PretrainConfig, config.flat(cfg))  # the preset's values in place of zeros
    out = Path(cfg.out)
    model_cfg = UnifiedConfig(d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads)
    saved = out / "pretrain_config.yaml"
    if (out / "checkpoint").exists():
        raise UsageError(f"{out} holds a checkpoint written by an earlier version (checkpoint/); finish it with that version, "
                         "or start again with a new --out (nothing was changed)")
    state = out / "state" / "step.json"
    if (out / "model.safetensors").exists() and not state.exists():
        print(f"{out} already holds a finished model; loading it")
        return UnifiedModel.from_pretrained(out)
    if state.exists() and saved.exists():
        previous = config.to_dict(config.load(PretrainConfig, saved))
        if {k: v for k, v in previous.items() if k != "out"} != {k: v for k, v in config.to_dict(cfg).items() if k != "out"}:
            raise UsageError(f"{out} holds a checkpoint of a run with other settings ({saved}); use a new --out")
    # the one training loop, with pretraining's optimiser (β2 0.95) and schedule (cosine to a tenth)
    training = TrainingOptions(lr=cfg.lr, weight_decay=cfg.weight_decay, warmup=cfg.warmup, train_steps=cfg.steps,
                               batch_size=cfg.batch_size, max_grad_norm=1.0, save_every=cfg.checkpoint_every)
    # On the CPU and in one process, as the built-in model is made (its batches are drawn on the CPU); bf16
    # by autocast below, not accelerate's mixed precision, whose state is one per process: a pretraining
    # must run beside fp32 trainings in one process (a notebook, the tests).
    loop = TrainingLoop(out, training, "fp32", "pretrain", "pretraining", lr_at=lambda step: lr_at(step, cfg), betas=(0.9, 0.95),
                        cpu=True)
    if loop.accelerator.num_processes > 1:
        raise UsageError("pretraining runs in one process: start it without torchrun or accelerate launch")
    out.mkdir(parents=True, exist_ok=True)
    config.save(cfg, saved)
    torch.manual_seed(cfg.seed)
    model, _ = loop.prepare(UnifiedModel(model_cfg))
    tic = time.perf_counter()
    for step in loop.steps():
        batch = make_batch(model, cfg.seed, step, cfg.batch_size, cfg.cond_dropout, cfg.caption_noise)
        with torch.autocast(loop.accelerator.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            parts = losses(model, batch)
        loss = sum(parts.values())
        loop.opt.zero_grad(set_to_none=True)
        if not loop.finite(loss, step):
            continue
        loop.accelerator.backward(loss)
        loop.clip(model)
        lr = loop.set_lr(step)
        loop.opt.step()
        row = None
        if (step + 1) % 25 == 0 or step + 1 == cfg.steps:
            row = {"step": step + 1, "loss": loss.item(), **{f"loss/{k}": v.item() for k, v in parts.items()},
                   "lr": lr, "seconds": round(time.perf_counter() - tic, 2)}
        loop.record(step, row, {k: f"{v.item():.3f}" for k, v in parts.items()})
    loop.finish()
    model = loop.accelerator.unwrap_model(model)
    model.eval()
    model.save_pretrained(out)
    shutil.rmtree(out / "state", ignore_errors=True)
    return model
