"""Pair-DPO losses (paper §4.2 and Appendix A): how the understanding and generation preferences of
one homologous example are combined into one loss.

Each branch has a DPO margin, with the reference frozen (its log-probs are plain inputs):

    Δ_und = β_und [(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))]
    Δ_gen = β_gen [(log π(x_w|y) − log π_ref(x_w|y)) − (log π(x_l|y) − log π_ref(x_l|y))]

and `loss_type` chooses how the two margins make a loss. The image branch's objective can be
replaced (`gen_objective`): DPOP, APO-zero and Cal-DPO anchor the chosen likelihood so that it
cannot fall with the rejected one, and "sft" trains the chosen image's NLL alone (RAFT). Everything
is per example (no reduction, no logging, no model): the training loop averages over the batch and
logs the rewards.
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
    reference (usually precomputed). The positive-only image objective ("sft") needs only
    `policy_chosen`; the others need all four.

    `chosen_count` (token counts, (B,)) makes the NLL term per token: pass it when the log-probs are
    sums, leave it out when they are already per-token means (or to keep the summed NLL). `weight`
    ((B,), 0 or 1) leaves examples out of this branch's term, their other branch still training.
    """

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor | None = None
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None
    chosen_count: torch.Tensor | None = None
    weight: torch.Tensor | None = None

    def __post_init__(self) -> None:
        # A (B, 1) next to a (B,) would broadcast into a silent (B, B) loss.
        shapes = {f.name: tuple(getattr(self, f.name).shape) for f in fields(self) if getattr(self, f.name) is not None}
        if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 1:
            raise ValueError(f"BranchLogps needs tensors of one shape (B,), got {shapes}")

    @property
    def paired(self) -> bool:
        """Whether the rejected sample and the reference are given (every objective but "sft")."""
        return None not in (self.policy_rejected, self.ref_chosen, self.ref_rejected)


@dataclass
class PairDPOOutput:
    """Per-example results, each (B,), keyed by branch ("und", "gen") where a dict. Only `loss`
    carries gradients; the rest are for logging.

    `branch_losses[b]` is branch b's own objective alone (−log σ(Δ_b) for DPO), whatever `loss_type`
    trains; the rewards are TRL's implicit rewards β(log π − log π_ref) of each sample, so that
    `und/rewards/margins` = Δ_und (none for the positive-only image branch, which has no reference).
    `nll_losses[b]` is the unweighted NLL term on the chosen sample of each branch whose `sft` weight
    is on (per token when the log-probs come with `chosen_count`).
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


# The image branch's objective (`gen_objective`); the caption branch is always DPO. Each takes the
# log-ratios of the chosen and rejected samples, c = log π(x_w) − log π_ref(x_w) and
# r = log π(x_l) − log π_ref(x_l), each (B,), and returns per-example losses.


def dpo_objective(c: torch.Tensor, r: torch.Tensor, beta: float) -> torch.Tensor:
    """−log σ(β(c − r)): DPO (arXiv 2305.18290, Eq. 7; TRL's loss_type "sigmoid")."""
    return -F.logsigmoid(beta * (c - r))


def dpop_margin(c: torch.Tensor, r: torch.Tensor, beta: float, lam: float) -> torch.Tensor:
    """β[(c − r) − λ·max(0, −c)]: DPO's margin minus DPOP's penalty, which is non-zero only where the
    chosen sample's likelihood fell below the reference's (max(0, log π_ref(x_w) − log π(x_w)))."""
    return beta * ((c - r) - lam * torch.relu(-c))


def dpop_objective(c: torch.Tensor, r: torch.Tensor, beta: float, lam: float) -> torch.Tensor:
    """−log σ(β[(c − r) − λ·max(0, log π_ref(x_w) − log π(x_w))]): DPO-Positive (Smaug, arXiv
    2402.13228, Eq. 3). Intuition: DPO can lower both likelihoods as long as the gap grows
    ("likelihood displacement"); the penalty makes any fall of the chosen likelihood below the
    reference cost λ times as much as the margin gains, and equals DPO wherever π(x_w) ≥ π_ref(x_w)."""
    return -F.logsigmoid(dpop_margin(c, r, beta, lam))


def apo_zero_objective(c: torch.Tensor, r: torch.Tensor, beta: float) -> torch.Tensor:
    """(1 − σ(βc)) + σ(βr): APO-zero (arXiv 2408.06266, Eq. 7), exactly TRL's DPOTrainer
    loss_type "apo_zero" (losses_chosen = 1 − sigmoid(β·chosen_logratios), losses_rejected =
    sigmoid(β·rejected_logratios)). Intuition: the chosen and rejected samples are anchored separately,
    the chosen one pushed up and the rejected one down, for data believed better than the model's own."""
    return (1 - torch.sigmoid(beta * c)) + torch.sigmoid(beta * r)


def cal_dpo_objective(c: torch.Tensor, r: torch.Tensor, beta: float) -> torch.Tensor:
    """−log σ(c − r) + ½[(c − 1/(2β))² + (r + 1/(2β))²]: Cal-DPO (arXiv 2412.14516), as its official
    code trains it (tengxiao1/Cal-DPO, scripts/dpo_trainer.py, loss_type "Cal-DPO": DPO_loss + 0.5 ·
    (mse(c, 1/(2β)) + mse(r, −1/(2β)))), whose ½ on the squares the formula as usually quoted does not
    show (not checked against the paper's PDF here).
    Note the margin term has no β. Intuition: the squared terms calibrate the implicit rewards to
    fixed targets ±1/(2β), so the chosen log-ratio is pulled up to a positive value instead of only
    the gap growing."""
    return -F.logsigmoid(c - r) + 0.5 * ((c - 1 / (2 * beta)) ** 2 + (r + 1 / (2 * beta)) ** 2)


def nll_objective(policy_chosen: torch.Tensor, chosen_count: torch.Tensor | None = None) -> torch.Tensor:
    """−log π(x_w), per token when `chosen_count` is given (TRL's "sft" term averages over tokens).
    As the image objective "sft" it is rejection-sampling fine-tuning (RAFT, arXiv 2304.06767): the
    pretraining loss (masked-token NLL) on the self-chosen sample only, no rejected sample and no
    reference."""
    nll = -policy_chosen
    return nll if chosen_count is None else nll / chosen_count


GEN_OBJECTIVES = ("dpo", "dpop", "apo_zero", "cal_dpo", "sft")
# Objectives that are a margin inside −log σ(·), which product and joint combine across branches.
MARGIN_OBJECTIVES = ("dpo", "dpop")


class PairDPOLoss(nn.Module):
    """Pair-DPO with a selectable `loss_type` and image objective, plus an optional NLL (SFT) term on
    the chosen samples.

    Args:
        loss_type: one of LOSS_TYPES ("product", "sum", "und", "gen", "joint"). sum, und and gen add
            the trained branches' own objectives; product and joint combine their margins, so they
            need a margin objective for the image branch (dpo or dpop, whose margin carries its penalty).
        beta_und: β of the understanding margin (caption log-probs are sums over ~10–100 tokens).
        beta_gen: β of the generation objective (image log-probs are sums over 16–1024 tokens, so a
            smaller β, or per-token log-probs, balances the two branches).
        sft_und, sft_gen: weight w of w·NLL(chosen) per trained branch, as in RPO / TRL's "sft"
            loss: DPO alone may lower the likelihood of the chosen sample along with the rejected
            one (DESIGN §3 saw this in generation), and the NLL term holds the chosen one up. The NLL
            is per token when the branch's log-probs carry `chosen_count`. sft_gen has no effect with
            gen_objective "sft", whose term is that NLL already.
        gen_objective: the image branch's objective, one of GEN_OBJECTIVES: "dpo", "dpop",
            "apo_zero", "cal_dpo", or "sft" (positive-only: the NLL of the chosen image alone).
        dpop_lambda: λ of DPOP's penalty.
    """

    def __init__(self, loss_type: str = "sum", *, beta_und: float = 0.2, beta_gen: float = 0.2,
                 sft_und: float = 0.0, sft_gen: float = 0.0, gen_objective: str = "dpo", dpop_lambda: float = 50.0):
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {loss_type!r}; known: {', '.join(LOSS_TYPES)}")
        if gen_objective not in GEN_OBJECTIVES:
            raise ValueError(f"unknown gen_objective {gen_objective!r}; known: {', '.join(GEN_OBJECTIVES)}")
        if loss_type in ("product", "joint") and gen_objective not in MARGIN_OBJECTIVES:
            raise ValueError(f"loss_type {loss_type!r} combines the two branches' margins; gen_objective {gen_objective!r} "
                             f"has none (use {' or '.join(MARGIN_OBJECTIVES)}, or loss_type sum or gen)")
        if not (beta_und > 0 and beta_gen > 0):
            raise ValueError(f"beta_und and beta_gen must be positive, got {beta_und}, {beta_gen}")
        if not (sft_und >= 0 and sft_gen >= 0 and dpop_lambda >= 0):
            raise ValueError(f"sft_und, sft_gen and dpop_lambda must be >= 0, got {sft_und}, {sft_gen}, {dpop_lambda}")
        self.loss_type = loss_type
        self.beta = {"und": beta_und, "gen": beta_gen}
        self.sft = {"und": sft_und, "gen": 0.0 if gen_objective == "sft" else sft_gen}
        self.objective = {"und": "dpo", "gen": gen_objective}
        self.dpop_lambda = dpop_lambda

    def needs_pair(self, branch: str) -> bool:
        """Whether the branch's objective needs the rejected sample and the reference."""
        return self.objective[branch] != "sft"

    def margin(self, branch: str, lp: BranchLogps) -> torch.Tensor:
        """The branch's margin Δ (dpo / dpop objectives), the argument of −log σ(·)."""
        c, r, beta = lp.policy_chosen - lp.ref_chosen, lp.policy_rejected - lp.ref_rejected, self.beta[branch]
        if self.objective[branch] == "dpop":
            return dpop_margin(c, r, beta, self.dpop_lambda)
        return beta * (c - r)

    def branch_loss(self, branch: str, lp: BranchLogps) -> torch.Tensor:
        """The branch's own objective per example (unweighted, without the NLL term)."""
        objective, beta = self.objective[branch], self.beta[branch]
        if objective == "sft":
            return nll_objective(lp.policy_chosen, lp.chosen_count)
        c, r = lp.policy_chosen - lp.ref_chosen, lp.policy_rejected - lp.ref_rejected
        if objective == "dpop":
            return dpop_objective(c, r, beta, self.dpop_lambda)
        return {"dpo": dpo_objective, "apo_zero": apo_zero_objective, "cal_dpo": cal_dpo_objective}[objective](c, r, beta)

    def forward(self, und: BranchLogps | None = None, gen: BranchLogps | None = None) -> PairDPOOutput:
        given = {"und": und, "gen": gen}
        branches = BRANCHES[self.loss_type]
        missing = [b for b in branches if given[b] is None]
        if missing:
            raise ValueError(f"loss_type {self.loss_type!r} needs the {' and '.join(missing)} branch log-probs")
        unpaired = [b for b in branches if self.needs_pair(b) and not given[b].paired]
        if unpaired:
            raise ValueError(f"the {' and '.join(unpaired)} branch's objective needs rejected and reference log-probs")
        chosen, rejected, own = {}, {}, {}
        for branch in branches:
            lp = given[branch]
            own[branch] = self.branch_loss(branch, lp)
            if lp.paired:
                chosen[branch] = self.beta[branch] * (lp.policy_chosen - lp.ref_chosen)
                rejected[branch] = self.beta[branch] * (lp.policy_rejected - lp.ref_rejected)
        if self.loss_type in ("product", "joint"):
            if any(given[b].weight is not None for b in branches):
                raise ValueError(f"loss_type {self.loss_type!r} couples the branches: per-example branch weights are not defined")
            loss = LOSS_TYPES[self.loss_type](self.margin("und", und), self.margin("gen", gen))
        else:  # sum, und, gen: each branch's own objective, added
            loss = sum(own[b] if given[b].weight is None else own[b] * given[b].weight for b in branches)
        nlls = {}
        for branch in branches:
            if self.sft[branch]:
                lp = given[branch]
                nlls[branch] = nll_objective(lp.policy_chosen, lp.chosen_count)
                loss = loss + self.sft[branch] * (nlls[branch] if lp.weight is None else nlls[branch] * lp.weight)
        return PairDPOOutput(
            nll_losses={b: v.detach() for b, v in nlls.items()},
            loss=loss,
            branch_losses={b: v.detach() for b, v in own.items()},
            chosen_rewards={b: r.detach() for b, r in chosen.items()},
            rejected_rewards={b: r.detach() for b, r in rejected.items()},
        )
