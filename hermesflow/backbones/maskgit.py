"""Masked-token machinery shared by every MaskGIT-style backbone (the built-in model, Show-o):
the cosine mask schedule, seeded masks, the masked Monte-Carlo image log-prob, and MaskGIT decoding
with MUSE guidance. A backbone supplies only a function from (prompts, partly masked codes) to
logits over its image codes; everything else is here, once.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from hermesflow.backbones.base import LogProbs, MaskedEstimator

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
                   temperature: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """MaskGIT decoding: start all masked; at each step sample every masked position, keep the most
    confident and re-mask the rest on the cosine schedule, with Gumbel noise on the confidence that
    anneals to zero. `guided_logits(codes)` gives the (guided) logits (B, L, C) at the current codes.
    Random draws use `generator` on the CPU, so a seed gives the same images on any device."""
    codes = torch.full((batch, length), MASKED, dtype=torch.long, device=device)
    for step in range(steps):
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
    return codes
