"""Pair-DPO losses (paper §4.2 and Appendix A): how the understanding and generation preferences of
one homologous example are combined into one loss.

Each branch has a DPO margin, with the reference frozen (its log-probs are plain inputs):

    Δ_und = β_und [(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))]
    Δ_gen = β_gen [(log π(x_w|y) − log π_ref(x_w|y)) − (log π(x_l|y) − log π_ref(x_l|y))]

and `loss_type` chooses how the two margins make a loss. Everything is per example (no reduction,
no logging, no model): the training loop averages over the batch and logs the rewards.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class BranchLogps:
    """Log-probabilities of one branch's chosen and rejected samples, each (B,): captions y_w, y_l
    given x (understanding) or images x_w, x_l given y (generation), under the policy and the frozen
    reference (usually precomputed). `chosen_count` (token counts, (B,)) only length-normalises the
    SFT term: pass it when the log-probs are sums, leave it out when they are already per-token means.
    """

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    chosen_count: torch.Tensor | None = None

    def __post_init__(self) -> None:
        # A (B, 1) next to a (B,) would broadcast into a silent (B, B) loss.
        shapes = {f.name: tuple(getattr(self, f.name).shape) for f in fields(self) if getattr(self, f.name) is not None}
        if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 1:
            raise ValueError(f"BranchLogps needs tensors of one shape (B,), got {shapes}")


@dataclass
class PairDPOOutput:
    """Per-example results, each (B,), keyed by branch ("und", "gen") where a dict. Only `loss`
    carries gradients; the rest are for logging.

    `branch_losses[b]` is −log σ(Δ_b), whatever `loss_type` trains; the rewards are TRL's implicit
    rewards β(log π − log π_ref) of each sample, so that `und/rewards/margins` = Δ_und. `nll_losses[b]`
    is the unweighted NLL term on the chosen sample of each branch whose `sft` weight is on.
    """

    loss: torch.Tensor
    branch_losses: dict[str, torch.Tensor]
    chosen_rewards: dict[str, torch.Tensor]
    rejected_rewards: dict[str, torch.Tensor]
    nll_losses: dict[str, torch.Tensor] = field(default_factory=dict)


def product_loss(delta_und: torch.Tensor, delta_gen: torch.Tensor) -> torch.Tensor:
    """−log σ(Δ_und · Δ_gen), the paper's Pair-DPO (Eq. 6 / Eq. 15).

    Intuition (the paper's): one preference over the homologous tuple, so that each branch's margin
    scales the other's. Two flaws, kept on purpose so they can be measured: at policy == reference
    both margins are 0, so the gradient is exactly zero (a saddle; d/dΔ_und = −σ(−Δ_und Δ_gen) Δ_gen
    = 0) and training can only leave it through noise; and two wrong (both negative) margins give a
    positive product, so they score better than no preference at all.
    """
    return -F.logsigmoid(delta_und * delta_gen)


def sum_loss(delta_und: torch.Tensor, delta_gen: torch.Tensor) -> torch.Tensor:
    """−log σ(Δ_und) − log σ(Δ_gen) (paper Eq. 12, and what the official code trains).

    Intuition: two standard DPO losses on the same homologous example, one per ability.
    """
    return -F.logsigmoid(delta_und) - F.logsigmoid(delta_gen)


def und_loss(delta_und: torch.Tensor, delta_gen: torch.Tensor) -> torch.Tensor:
    """−log σ(Δ_und) (Table 5 "DPO (Understanding)"): standard DPO on the caption pair only."""
    return -F.logsigmoid(delta_und)


def gen_loss(delta_und: torch.Tensor, delta_gen: torch.Tensor) -> torch.Tensor:
    """−log σ(Δ_gen) (Table 5 "DPO (Generation)"): standard DPO on the image pair only."""
    return -F.logsigmoid(delta_gen)


def joint_loss(delta_und: torch.Tensor, delta_gen: torch.Tensor) -> torch.Tensor:
    """−log σ(Δ_und + Δ_gen): not in the paper; a coupled variant without the saddle.

    Motivation: it is the DPO loss of the single joint preference (y_w, x_w) ≻ (y_l, x_l) under the
    factorised likelihood π(y|x)·π(x|y) (likelihood ratios multiply, so log-ratios add), which keeps
    Pair-DPO's coupling (one shared weight σ(−Δ_und − Δ_gen)) while being monotone in each margin
    and having a non-zero gradient at policy == reference.
    """
    return -F.logsigmoid(delta_und + delta_gen)


LOSS_TYPES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "product": product_loss,
    "sum": sum_loss,
    "und": und_loss,
    "gen": gen_loss,
    "joint": joint_loss,
}

# The branches each loss type trains, defined here once: training scores only these.
BRANCHES: dict[str, tuple[str, ...]] = {
    "product": ("und", "gen"), "sum": ("und", "gen"), "und": ("und",), "gen": ("gen",), "joint": ("und", "gen"),
}


class PairDPOLoss(nn.Module):
    """Pair-DPO with a selectable `loss_type`, plus an optional NLL (SFT) term on the chosen samples.

    Args:
        loss_type: one of LOSS_TYPES ("product", "sum", "und", "gen", "joint").
        beta_und: β of the understanding margin (caption log-probs are sums over ~10–100 tokens).
        beta_gen: β of the generation margin (image log-probs are sums over 16–1024 tokens, so a
            smaller β, or per-token log-probs, balances the two branches).
        sft_und, sft_gen: weight w of −w·log π(chosen) per trained branch, as in RPO / TRL's "sft"
            loss: DPO alone may lower the likelihood of the chosen sample along with the rejected
            one (DESIGN §3 saw this in generation), and the NLL term holds the chosen one up.
    """

    def __init__(self, loss_type: str = "sum", *, beta_und: float = 0.2, beta_gen: float = 0.2,
                 sft_und: float = 0.0, sft_gen: float = 0.0):
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {loss_type!r}; known: {', '.join(LOSS_TYPES)}")
        if not (beta_und > 0 and beta_gen > 0):
            raise ValueError(f"beta_und and beta_gen must be positive, got {beta_und}, {beta_gen}")
        if not (sft_und >= 0 and sft_gen >= 0):
            raise ValueError(f"sft_und and sft_gen must be >= 0, got {sft_und}, {sft_gen}")
        self.loss_type = loss_type
        self.beta = {"und": beta_und, "gen": beta_gen}
        self.sft = {"und": sft_und, "gen": sft_gen}

    def forward(self, und: BranchLogps | None = None, gen: BranchLogps | None = None) -> PairDPOOutput:
        given = {"und": und, "gen": gen}
        missing = [b for b in BRANCHES[self.loss_type] if given[b] is None]
        if missing:
            raise ValueError(f"loss_type {self.loss_type!r} needs the {' and '.join(missing)} branch log-probs")
        chosen, rejected, deltas = {}, {}, {}
        for branch in BRANCHES[self.loss_type]:
            lp, beta = given[branch], self.beta[branch]
            chosen[branch] = beta * (lp.policy_chosen - lp.ref_chosen)
            rejected[branch] = beta * (lp.policy_rejected - lp.ref_rejected)
            deltas[branch] = chosen[branch] - rejected[branch]
        zero = torch.zeros_like(next(iter(deltas.values())))
        loss = LOSS_TYPES[self.loss_type](deltas.get("und", zero), deltas.get("gen", zero))
        nlls = {}
        for branch in BRANCHES[self.loss_type]:
            if self.sft[branch]:
                lp = given[branch]
                nll = -lp.policy_chosen
                nlls[branch] = nll if lp.chosen_count is None else nll / lp.chosen_count
                loss = loss + self.sft[branch] * nlls[branch]
        return PairDPOOutput(
            nll_losses={b: v.detach() for b, v in nlls.items()},
            loss=loss,
            branch_losses={b: -F.logsigmoid(d).detach() for b, d in deltas.items()},
            chosen_rewards={b: r.detach() for b, r in chosen.items()},
            rejected_rewards={b: r.detach() for b, r in rejected.items()},
        )
