"""Masked-token machinery shared by every MaskGIT-style backbone (the built-in model, Show-o):
the cosine mask schedule, seeded masks, the masked Monte-Carlo image log-prob, and MaskGIT decoding
with MUSE guidance. A backbone supplies only a function from (prompts, partly masked codes) to
logits over its image codes; everything else is here, once. Decoding can record its `Trajectory`,
scored by the trajectory log-probability (`trajectory_logps`), an alternative to the random mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F

from hermesflow.backbones.base import LogProbs, MaskedEstimator
from hermesflow.errors import UsageError
from hermesflow.progress import track

MASKED = -1  # an image code that is masked


def mask_ratio(u: torch.Tensor) -> torch.Tensor:
    """MaskGIT's cosine schedule: the share of image tokens masked at uniform time u in [0, 1)."""
    return torch.cos(math.pi / 2 * u)


def cfg_logits(cond: torch.Tensor, uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """MUSE / Show-o classifier-free guidance: (1 + w) * cond - w * uncond; w = 0 is plain conditional."""
    return (1 + guidance) * cond - guidance * uncond


def draw_masks(seeds: Sequence[int], samples: int, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example, `samples` cosine-schedule masks (B, K, L) and their ratios (B, K), drawn on the CPU
    by a generator seeded with that example's seed alone: the same seed gives the same masks on any
    device, for chosen and rejected, policy and reference."""
    masks, ratios = [], []
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed))
        r = mask_ratio(torch.rand(samples, generator=g))
        count = torch.clamp(torch.ceil(r * n_tokens), 1, n_tokens).long()
        order = torch.stack([torch.randperm(n_tokens, generator=g) for _ in range(samples)])
        masks.append(order < count[:, None])
        ratios.append(count.float() / n_tokens)
    return torch.stack(masks), torch.stack(ratios)


LogitsFn = Callable[[Sequence[str], torch.Tensor], torch.Tensor]


def masked_logps(logits_fn: LogitsFn, prompts: Sequence[str], tokens: torch.Tensor, estimator: MaskedEstimator,
                 seeds: Sequence[int]) -> LogProbs:
    """The masked Monte-Carlo estimate of log π(tokens | prompt) (DESIGN §2).

    `logits_fn(prompts, codes)` returns logits (B, L, C) over image codes for codes where masked
    positions are MASKED. For each of K draws the log-probs of the true codes at the masked positions
    are summed; `count` is the number of masked positions (averaged over draws, as the total is).
    """
    masks, ratios = draw_masks(seeds, estimator.samples, tokens.shape[1])
    masks, ratios = masks.to(tokens.device), ratios.to(tokens.device)
    b, k = masks.shape[:2]
    flat_tokens = tokens.repeat_interleave(k, dim=0)
    flat_masks = masks.reshape(b * k, -1)
    flat_prompts = [p for p in prompts for _ in range(k)]
    logits = logits_fn(flat_prompts, torch.where(flat_masks, MASKED, flat_tokens))
    logp = F.log_softmax(logits.float(), dim=-1).gather(-1, flat_tokens[..., None])[..., 0]
    per_draw = (logp * flat_masks).sum(-1).view(b, k)
    counts = masks.sum(-1).float()
    if estimator.weighting == "ratio":
        per_draw, counts = per_draw / ratios, torch.full_like(counts, tokens.shape[1])
    return LogProbs(per_draw.mean(-1), counts.mean(-1))


def maskgit_decode(guided_logits: Callable[[torch.Tensor], torch.Tensor], batch: int, length: int, steps: int,
                   temperature: float, generator: torch.Generator, device: torch.device,
                   trace: list | None = None) -> torch.Tensor:
    """MaskGIT decoding: start all masked; at each step sample every masked position, keep the most
    confident and re-mask the rest on the cosine schedule, with Gumbel noise on the confidence that
    anneals to zero. `guided_logits(codes)` gives the (guided) logits (B, L, C) at the current codes.
    Random draws use `generator` on the CPU, so a seed gives the same images on any device.
    `trace`, if given, receives the codes after each step (masked positions MASKED); recording only
    reads, so the codes returned are the same with or without it (`Trajectory.from_trace`)."""
    codes = torch.full((batch, length), MASKED, dtype=torch.long, device=device)
    for step in track(range(steps), "step"):
        logits = guided_logits(codes).float() / max(temperature, 1e-6)
        probs = F.softmax(logits, dim=-1)
        if temperature > 0:
            flat = probs.view(-1, probs.shape[-1]).cpu()
            sampled = torch.multinomial(flat, 1, generator=generator).view(batch, length).to(device)
        else:
            sampled = probs.argmax(-1)
        confidence = probs.gather(-1, sampled[..., None])[..., 0].log()
        masked = codes < 0
        sampled = torch.where(masked, sampled, codes)
        keep_masked = int(math.floor(length * mask_ratio(torch.tensor((step + 1) / steps))))
        if temperature > 0:
            u = torch.rand(confidence.shape, generator=generator).clamp_min(1e-20).to(device)
            confidence = confidence + temperature * (1 - (step + 1) / steps) * -torch.log(-torch.log(u))
        confidence = confidence.masked_fill(~masked, float("inf"))
        codes = sampled
        if keep_masked > 0:
            lowest = confidence.topk(keep_masked, dim=-1, largest=False).indices
            codes = codes.scatter(1, lowest, MASKED)
        if trace is not None:
            trace.append(codes.clone())
    return codes


# ----- the trajectory log-probability (MDPO arXiv 2508.13148, Mask-GRPO arXiv 2510.13418) -----------


@dataclass(frozen=True)
class Trajectory:
    """How MaskGIT decoding reached its images: the final codes (B, L) and, per cell, the step that
    committed it (B, L), in [0, steps). The state before step s (what the model saw) is the final
    codes where a cell was committed before s, MASKED elsewhere: a committed cell never changes, so
    these two tensors hold every state of the run (16 small ints per image on the built-in model)."""

    codes: torch.Tensor
    commit_step: torch.Tensor
    steps: int

    def __post_init__(self) -> None:
        if self.codes.shape != self.commit_step.shape or self.codes.dim() != 2:
            raise UsageError(f"trajectory: codes {tuple(self.codes.shape)} and commit steps "
                             f"{tuple(self.commit_step.shape)} must be the same (B, L)")
        if self.steps < 1 or (self.commit_step < 0).any() or (self.commit_step >= self.steps).any():
            raise UsageError(f"trajectory: commit steps must lie in [0, {self.steps})")

    @classmethod
    def from_trace(cls, trace: Sequence[torch.Tensor], codes: torch.Tensor) -> "Trajectory":
        """From a decoder's `trace` (the codes after each step) and the codes it returned. A cell still
        masked after the last step (Show-o's official sampler keeps one) is committed by that step."""
        still_masked = torch.stack([t == MASKED for t in trace]).sum(0)
        return cls(codes, still_masked.clamp(max=len(trace) - 1), len(trace))

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index) -> "Trajectory":
        return Trajectory(self.codes[index], self.commit_step[index], self.steps)

    def states(self) -> torch.Tensor:
        """(B, S, L): the codes before each step, MASKED where not yet committed."""
        s = torch.arange(self.steps, device=self.codes.device)[None, :, None]
        return torch.where(self.commit_step[:, None, :] < s, self.codes[:, None, :], MASKED)


@dataclass(frozen=True)
class TrajectoryEstimator:
    """log π(x|y) along the recorded decoding trajectory: Σ_steps Σ_{cells committed at that step}
    log softmax(logits at the state before the step / temperature)[committed code].

    Which logits: `guidance` w and `temperature` T. With the generation's own w and T
    (`for_sampler`) this is the log-probability of the codes under the distribution the sampler drew
    them from, so a PPO ratio against it is a true importance ratio of the behaviour policy; the
    gradient then flows through both the conditional and the unconditional (empty prompt) pass.
    w = 0, T = 1 (`conditional`) scores the conditional model alone, as the random-mask estimator and
    UniGRPO (MMaDA) do. Mask-GRPO's released code (xingzhejun/Mask-GRPO, code/models/modeling_showo.py,
    `t2i_generate_grpo` and `t2i_generate_grpo_loss`) scores the newly unmasked tokens, as here, under
    the same logits its rollout sampled from: guided when guidance is on, though it trains with
    guidance 0 "because of the cuda memory limit", where both choices coincide; its temperature only
    scales the Gumbel noise, as ours at T = 1. So the default here is the sampler's logits.

    Not counted (as Mask-GRPO's default "candidate 2"): the probability of *which* cells the
    confidence ranking with Gumbel noise committed; it depends on the model only through the sampled
    confidences (their "candidate 1" adds a term for the re-masked cells)."""

    guidance: float = 0.0
    temperature: float = 1.0
    name: ClassVar[str] = "trajectory"

    def __post_init__(self) -> None:
        if self.guidance < 0 or self.temperature <= 0:
            raise UsageError(f"trajectory estimator: guidance must be >= 0 and temperature > 0, got "
                             f"{self.guidance} and {self.temperature} (score greedy samples at temperature 1)")

    @classmethod
    def for_sampler(cls, guidance: float, temperature: float) -> "TrajectoryEstimator":
        """The sampler's own distribution (temperature 0, greedy, is scored at temperature 1)."""
        return cls(guidance, temperature if temperature > 0 else 1.0)

    def key(self) -> str:
        return f"{self.name}-w{self.guidance:g}-t{self.temperature:g}"


def trajectory_logps(logits_fn: LogitsFn, prompts: Sequence[str], trajectory: Trajectory,
                     estimator: TrajectoryEstimator) -> LogProbs:
    """`TrajectoryEstimator`'s log π(codes | prompt) (B,), `count` = L (every cell is committed once).

    `logits_fn(prompts, codes)` is the backbone's logits (B, L, C) at partly masked codes, "" being
    the unconditional prompt, as for `masked_logps`. All B·S states run in one batch (twice with
    guidance): S times the cost of one masked draw, or 2S with guidance."""
    b, s = len(trajectory), trajectory.steps
    if len(prompts) != b:
        raise UsageError(f"trajectory_logps: {len(prompts)} prompts for {b} trajectories")
    states = trajectory.states().reshape(b * s, -1)
    flat_prompts = [p for p in prompts for _ in range(s)]
    if estimator.guidance:
        cond, uncond = logits_fn(flat_prompts + [""] * len(flat_prompts), torch.cat([states, states])).chunk(2)
        logits = cfg_logits(cond.float(), uncond.float(), estimator.guidance)
    else:
        logits = logits_fn(flat_prompts, states).float()
    logp = F.log_softmax(logits / estimator.temperature, dim=-1)
    codes = trajectory.codes.repeat_interleave(s, dim=0)
    logp = logp.gather(-1, codes[..., None])[..., 0].view(b, s, -1)
    committed = trajectory.commit_step[:, None, :] == torch.arange(s, device=logp.device)[None, :, None]
    total = (logp * committed).sum((1, 2))
    return LogProbs(total, torch.full_like(total, float(trajectory.codes.shape[1])))
