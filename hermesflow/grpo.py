"""Online GRPO on the image branch: the successor of image DPO (UniGRPO in MMaDA, arXiv 2505.15809;
UniRL, arXiv 2505.23380), run as a round's training step with `--recipe grpo`.

Each step takes B records (a pure function of seed and step), samples a group of G images for each
caption with the current policy (no grad, seeded by seed, step and process), rewards each image by
the model's own answers to the record's questions (`judges.self_vqa`: hard accuracy, or the graded mean
probability of the correct answers), normalises rewards within each group (`group_advantages`,
groups whose rewards are all equal carry no signal and are dropped), and takes μ optimiser updates
on the clipped-ratio objective (`clipped_objective`) over an image log-prob estimator: the MaskGIT
trajectory (`maskgit.TrajectoryEstimator`, the decoding's own states) or the backbone's own one
(random masks, or exact on autoregressive backbones), the same estimator draw for the old policy,
the policy and the reference within a step. A k3 KL to the starting model is optional (β 0 by
default, as DAPO). Only the image branch trains: the understanding branch is left out (no caption
loss), so the rewards come from an understanding that stays the starting model's up to the shared
weights GRPO moves.

Resumable as the DPO trainer: accelerate's save_state every `save_every` steps, and everything a step
draws is a function of (seed, step), so a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from hermesflow.backbones import Backbone, GenerationConfig, LogProbs
from hermesflow.backbones.maskgit import Trajectory, TrajectoryEstimator
from hermesflow.errors import UsageError
from hermesflow.judges import self_vqa
from hermesflow.loop import TrainingLoop
from hermesflow.options import CurationOptions, GRPOOptions, TrainingOptions
from hermesflow.records import QUESTIONS_HINT, Record
from hermesflow.sharding import (
    broadcast_from_main,
    frozen_copy,
    gathered,
    is_sharded,
    meta_copy,
    shard,
    sharded_inference,
)
from hermesflow.train import batch_indices, estimator_of

REWARDS = ("hard", "graded")


# ----- components ---------------------------------------------------------------------------------


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO's advantages (DeepSeekMath, arXiv 2402.03300, as TRL): A = (r − mean) / (std + eps) within
    each group, std unbiased as `torch.std`. `rewards` is (P, G), one row per prompt. Returns the
    advantages (P, G) and which groups are kept (P,): a group whose rewards are all equal has zero
    advantages and no gradient, so it is dropped (DAPO's dynamic sampling without the re-sampling)."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise UsageError(f"group_advantages: rewards must be (prompts, group >= 2), got {tuple(rewards.shape)}")
    mean, std = rewards.mean(1, keepdim=True), rewards.std(1, keepdim=True)
    return (rewards - mean) / (std + eps), std[:, 0] > 0


@dataclass(frozen=True)
class ClippedOutput:
    """Per-sample loss (N,), the ratio π/π_old (N,), whether the clipped term was the active one (its
    gradient is then zero) (N,), and the k3 KL to the reference (N,; zeros without a reference)."""

    loss: torch.Tensor
    ratio: torch.Tensor
    clipped: torch.Tensor
    kl: torch.Tensor


def clipped_objective(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, clip: float,
                      ref_logps: torch.Tensor | None = None, beta_kl: float = 0.0) -> ClippedOutput:
    """PPO's clipped surrogate (arXiv 1707.06347) as GRPO uses it, per sample:

        loss = −min(ρ·A, clip(ρ, 1 − ε, 1 + ε)·A) + β·KL,   ρ = exp(logp − logp_old),

    where ρ > 1 + ε with A > 0 (or ρ < 1 − ε with A < 0) takes the constant clipped term, so the
    update cannot push the ratio further. KL is the k3 estimator (Schulman's; GRPO's):
    exp(ref − logp) − (ref − logp) − 1 ≥ 0. All inputs are (N,); the loop passes per-token mean
    log-probs, so ρ is the geometric mean of the per-token ratios (GSPO's sequence ratio, arXiv
    2507.18071), which a clip range of 0.2 suits whatever the image's token count."""
    if not (logps.shape == old_logps.shape == advantages.shape) or logps.dim() != 1:
        raise UsageError(f"clipped_objective: logps {tuple(logps.shape)}, old {tuple(old_logps.shape)} and advantages "
                         f"{tuple(advantages.shape)} must be the same (N,)")
    ratio = torch.exp(logps - old_logps.detach())
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip, 1 + clip) * advantages
    loss = -torch.minimum(unclipped, clipped)
    kl = torch.zeros_like(loss)
    if ref_logps is not None:
        delta = ref_logps.detach() - logps
        kl = torch.exp(delta) - delta - 1
        loss = loss + beta_kl * kl
    return ClippedOutput(loss, ratio, clipped < unclipped, kl)


def self_vqa_rewards(backbone: Backbone, tokens: torch.Tensor, records: Sequence[Record], kind: str,
                     choice_score: str = "sum") -> torch.Tensor:
    """Each generated image's reward (n,): the model's own answers to the questions of `records[j]`
    about image j (`judges.self_vqa`, options scored by `choice_score` as curation scores them), its
    hard accuracy or its graded score."""
    if kind not in REWARDS:
        raise UsageError(f"reward must be one of {list(REWARDS)}, got {kind!r}")
    scores = self_vqa(backbone, backbone.prepare_generated(tokens), tuple(r.qa for r in records), range(len(records)), choice_score)
    return torch.from_numpy(scores.accuracy if kind == "hard" else scores.graded).float()


@dataclass(frozen=True)
class Rollout:
    """A step's samples: the captions, the images as a decoding trajectory (MaskGIT) or plain token
    ids, and the seeds of the random-mask estimator's masks (one per image, fixed within the step)."""

    prompts: list[str]
    tokens: torch.Tensor
    trajectory: Trajectory | None
    mask_seeds: list[int]

    def select(self, keep: torch.Tensor) -> "Rollout":
        idx = keep.nonzero()[:, 0]
        return Rollout([self.prompts[i] for i in idx.tolist()], self.tokens[idx],
                       self.trajectory[idx] if self.trajectory is not None else None,
                       [self.mask_seeds[i] for i in idx.tolist()])


class ImageLogps(nn.Module):
    """log π(image | caption) of a rollout under the wrapped backbone (an nn.Module so that DDP sees
    one forward): the trajectory estimator on the recorded trajectory, or the backbone's own."""

    def __init__(self, backbone: Backbone, estimator):
        super().__init__()
        self.backbone = backbone
        self.estimator = estimator

    def forward(self, rollout: Rollout) -> LogProbs:
        if isinstance(self.estimator, TrajectoryEstimator):
            return self.backbone.trajectory_logps(rollout.prompts, rollout.trajectory, self.estimator)
        return self.backbone.image_logps(rollout.prompts, rollout.tokens, self.estimator, rollout.mask_seeds)


def grpo_estimator(backbone: Backbone, grpo: GRPOOptions, training: TrainingOptions, sampler: GenerationConfig):
    """The configured estimator: the trajectory one (guided like the sampler, or conditional), or the
    backbone's own (random cosine masks with --mask-samples; exact on autoregressive backbones)."""
    if grpo.grpo_estimator == "random_mask":
        return estimator_of(backbone, training)
    if not hasattr(backbone, "generate_trajectory"):
        raise UsageError(f"--grpo-estimator trajectory needs a MaskGIT backbone that records its decoding; "
                         f"{backbone.model_type} does not: use --grpo-estimator random_mask")
    if grpo.grpo_logits == "sampler":
        return TrajectoryEstimator.for_sampler(sampler.guidance, sampler.temperature)
    return TrajectoryEstimator(0.0, 1.0)


def sample_rollout(backbone: Backbone, records: Sequence[Record], group: int, gen: GenerationConfig, trajectory: bool,
                   mask_seed: int) -> Rollout:
    """G images for each record's caption (the group's images adjacent), with the current weights."""
    prompts = [r.caption for r in records]
    if trajectory:
        traj = backbone.generate_trajectory(prompts, group, gen)
        tokens = traj.codes
    else:
        traj, tokens = None, backbone.generate(prompts, group, gen)
    rng = random.Random(mask_seed)
    return Rollout([p for p in prompts for _ in range(group)], tokens, traj, [rng.randrange(2**31) for _ in range(len(tokens))])


def step_seed(kind: str, seed: int, step: int, rank: int) -> int:
    return random.Random(f"grpo-{kind}/{seed}/{step}/{rank}").randrange(2**31)


# ----- the loop -------------------------------------------------------------------------------------


def train_grpo(backbone: Backbone, records: list[Record], grpo: GRPOOptions, training: TrainingOptions,
               sampler: GenerationConfig, seed: int, dtype: str, out: Path, choice_score: str = "sum") -> Backbone | None:
    """GRPO on the records' captions and questions (resuming from `out/state` if present), sampling
    with `sampler` (its seed is drawn per step from `seed`) and optimising with `training`'s optimiser
    settings. Writes `out/metrics.jsonl`; returns the backbone (under --sharding fsdp gathered on the
    main process only: None on the others).
    With --grpo-beta-kl the reference is the backbone as passed in (the round's starting model), so a
    resumed run is given the same starting model, as a round's training is."""
    records = [r for r in records if r.qa]
    if not records:
        raise UsageError(f"GRPO rewards images by the records' questions: no record has any; {QUESTIONS_HINT}")
    loop = TrainingLoop(out, training, dtype, "grpo", "GRPO")
    accelerator = loop.accelerator
    world = accelerator.num_processes
    if grpo.grpo_prompts % world:
        raise UsageError(f"--grpo-prompts {grpo.grpo_prompts} must divide evenly over {world} processes")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    for param in backbone.parameters():  # fp32 master weights for what trains
        if param.requires_grad:
            param.data = param.data.float()
    estimator = grpo_estimator(backbone, grpo, training, sampler)
    backbone.to(accelerator.device)
    if world > 1 and loop.sharded:  # every process starts from the main process's weights, as DDP makes them
        broadcast_from_main(backbone)
    policy = ImageLogps(backbone, estimator)
    frame = meta_copy(backbone) if loop.sharded else None  # where the sharded weights are gathered
    reference = None
    units = backbone.shard_units() if loop.sharded else ()
    if units:  # before the frozen copy, so that the whole weights are held once (as that copy), not twice
        shard(policy, units)
    if grpo.grpo_beta_kl > 0 and backbone.peft_model is None:  # with LoRA: the adapter disabled
        reference = ImageLogps(frozen_copy(policy, frame, "backbone."), estimator)
        if units:
            shard(reference, reference.backbone.shard_units())
    policy, inner = loop.prepare(policy)
    for step in loop.steps():
        loop.set_lr(step)  # the μ updates of a step share its learning rate
        row = grpo_step(policy, inner, reference, loop.opt, accelerator, records, grpo, training, sampler, seed, step, choice_score)
        row = {"step": step + 1, **row, "lr": loop.lr_at(step + 1)}
        loop.record(step, row, {"mean reward": f"{row['reward/mean']:.3f}", "groups without signal": f"{row['groups/dropped']:.2f}"})
    loop.finish()
    return gathered(policy, frame, "backbone.", main_only=True) if loop.sharded else accelerator.unwrap_model(policy).backbone


def grpo_step(policy, inner: ImageLogps, reference: ImageLogps | None, opt, accelerator, records: list[Record],
              grpo: GRPOOptions, training: TrainingOptions, sampler: GenerationConfig, seed: int, step: int,
              choice_score: str = "sum") -> dict:
    """One GRPO step: the policy samples and rewards (under FSDP on its shards, each block gathered for
    its forward), then μ clipped-ratio updates of the policy; returns its metrics."""
    world, rank = accelerator.num_processes, accelerator.process_index
    indices = batch_indices(step, len(records), grpo.grpo_prompts, seed)
    local = [records[i] for i in indices[rank::world]]
    backbone = inner.backbone
    gen = replace(sampler, seed=step_seed("sample", seed, step, rank))
    sharded = sharded_inference(policy, backbone.shard_units()) if is_sharded(policy) else contextlib.nullcontext()
    with sharded:  # a caption that stops early is fewer forward passes on one process than on another
        rollout = sample_rollout(backbone, local, grpo.grpo_group, gen, isinstance(inner.estimator, TrajectoryEstimator),
                                 step_seed("mask", seed, step, rank))
        owners = [r for r in local for _ in range(grpo.grpo_group)]
        with backbone.sampling():
            rewards = self_vqa_rewards(backbone, rollout.tokens, owners, grpo.grpo_reward, choice_score).to(accelerator.device)
    advantages, kept = group_advantages(rewards.view(len(local), grpo.grpo_group), grpo.grpo_eps)
    keep = kept.repeat_interleave(grpo.grpo_group)
    metrics = {"reward/mean": rewards.mean(), "reward/std": rewards.std() if len(rewards) > 1 else torch.zeros(()),
               "groups/dropped": 1 - kept.float().mean()}
    losses, clip_fractions, kls, ratios = [], [], [], []
    if accelerator.reduce(keep.any().float().reshape(1), reduction="sum").item() > 0:  # some process has signal
        batch, adv, weight = rollout.select(keep), advantages.flatten()[keep], 1.0
        if not len(batch.prompts):  # no signal here but elsewhere: every process runs the forward (DDP's and FSDP's
            # collectives are in it), on one sample weighted 0
            batch, adv, weight = rollout.select(torch.arange(len(keep)) == 0), advantages.flatten()[:1], 0.0
        ref = None
        with torch.no_grad(), accelerator.autocast():
            old = inner(batch).mean().float()
            if reference is not None:
                ref = reference(batch).mean().float()
            elif grpo.grpo_beta_kl > 0:  # LoRA: the starting model is the adapter disabled
                with backbone.reference_context():
                    ref = inner(batch).mean().float()
        for _ in range(grpo.grpo_inner_steps):
            with accelerator.autocast():
                logps = policy(batch).mean().float()
            out = clipped_objective(logps, old, adv, grpo.grpo_clip, ref, grpo.grpo_beta_kl)
            loss = out.loss.mean() * weight
            if weight:
                clip_fractions.append(out.clipped.float().mean())
                kls.append(out.kl.detach().mean())
                ratios.append(out.ratio.detach().mean())
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            if training.max_grad_norm > 0:
                accelerator.clip_grad_norm_(policy.parameters(), training.max_grad_norm)
            opt.step()
            losses.append(loss.detach())
    zero = torch.zeros((), device=accelerator.device)
    named = [("loss", losses), ("clip_fraction", clip_fractions), ("ratio/mean", ratios)]
    if grpo.grpo_beta_kl > 0:  # the k3 KL to the reference, computed only when it is penalised
        named.append(("kl", kls))
    metrics.update({name: torch.stack(values).mean() if values else zero for name, values in named})
    # the loss is every process's (0 without signal: what the gradient averages); the update's own
    # figures are the mean over the processes that had signal (0 when none had)
    measured = {"clip_fraction", "ratio/mean", "kl"}
    had = accelerator.gather(torch.tensor([float(bool(ratios))], device=accelerator.device))
    out = {}
    for k, v in metrics.items():
        values = accelerator.gather_for_metrics(v.float().reshape(1).to(accelerator.device))
        out[k] = ((values * had).sum() / had.sum()).item() if k in measured and had.sum() > 0 else values.mean().item()
    return out


def grpo_settings(grpo: GRPOOptions, curation: CurationOptions) -> dict:
    """What a round's GRPO training depends on beyond the training options, for the stage's recorded
    settings: the GRPO options and the sampler's."""
    return {**asdict(grpo), "steps": curation.steps, "guidance": curation.guidance, "image_temperature": curation.image_temperature,
            "choice_score": curation.choice_score}
