"""Pair-DPO losses against the paper's equations (Eq. 6/15, Eq. 12, Table 5's one-branch DPO), and the image
objectives (DPO, DPOP, APO-zero, Cal-DPO, positive-only NLL) against their closed forms."""

import math

import pytest
import torch
import torch.nn.functional as F

from hermesflow.losses import BRANCHES, LOSS_TYPES, BranchLogps, PairDPOLoss

B = 8


def random_logps(seed: int = 0, dtype=torch.float64) -> dict[str, BranchLogps]:
    """Random log-probs of both branches, as `PairDPOLoss(...)(**lp)` takes them."""
    g = torch.Generator().manual_seed(seed)

    def t():
        return -20 * torch.rand(B, generator=g, dtype=dtype)

    return {"und": BranchLogps(t(), t(), t(), t()), "gen": BranchLogps(t(), t(), t(), t())}


def margin(lp: BranchLogps, beta: float) -> torch.Tensor:
    return beta * ((lp.policy_chosen - lp.ref_chosen) - (lp.policy_rejected - lp.ref_rejected))


def margins(lp: dict, beta_und: float, beta_gen: float):
    return margin(lp["und"], beta_und), margin(lp["gen"], beta_gen)


def with_margins(d_und: float, d_gen: float, beta: float = 1.0, dtype=torch.float64) -> dict[str, BranchLogps]:
    """Log-probs whose margins are exactly (d_und, d_gen) for β = beta; chosen ones require grad."""
    z = torch.zeros(1, dtype=dtype)
    u, g = torch.full_like(z, d_und / beta), torch.full_like(z, d_gen / beta)
    return {"und": BranchLogps(u.requires_grad_(), z.clone(), z.clone(), z.clone()),
            "gen": BranchLogps(g.requires_grad_(), z.clone(), z.clone(), z.clone())}


@pytest.mark.parametrize("loss_type, closed_form", [
    ("product", lambda u, g: -torch.log(torch.sigmoid(u * g))),                       # Eq. 6 / 15
    ("sum", lambda u, g: -torch.log(torch.sigmoid(u)) - torch.log(torch.sigmoid(g))),  # Eq. 12
    ("und", lambda u, g: -torch.log(torch.sigmoid(u))),
    ("gen", lambda u, g: -torch.log(torch.sigmoid(g))),
    ("joint", lambda u, g: -torch.log(torch.sigmoid(u + g))),
])
def test_each_variant_equals_its_closed_form(loss_type, closed_form):
    lp = random_logps(1)
    out = PairDPOLoss(loss_type, beta_und=0.2, beta_gen=0.05)(**lp)
    assert out.loss.shape == (B,)
    torch.testing.assert_close(out.loss, closed_form(*margins(lp, 0.2, 0.05)))


def test_product_gradient_is_exactly_zero_at_policy_equal_reference():
    policy = [x.requires_grad_() for x in (-20 * torch.rand(4, B)).unbind()]  # und c/r, gen c/r
    ref = [p.detach().clone() for p in policy]
    out = PairDPOLoss("product")(und=BranchLogps(policy[0], policy[1], ref[0], ref[1]),
                                 gen=BranchLogps(policy[2], policy[3], ref[2], ref[3]))
    out.loss.mean().backward()
    for p in policy:
        assert torch.equal(p.grad, torch.zeros_like(p))
    torch.testing.assert_close(out.loss, torch.full((B,), torch.log(torch.tensor(2.0)).item()))


def test_product_rewards_two_wrong_margins():
    loss = PairDPOLoss("product", beta_und=1.0, beta_gen=1.0)
    assert loss(**with_margins(-2, -2)).loss.item() < loss(**with_margins(0, 0)).loss.item()


def test_joint_has_gradient_at_start_and_punishes_wrong_margins():
    loss = PairDPOLoss("joint", beta_und=1.0, beta_gen=1.0)
    lp = with_margins(0, 0)
    loss(**lp).loss.sum().backward()
    assert lp["und"].policy_chosen.grad.item() < 0 and lp["gen"].policy_chosen.grad.item() < 0
    assert loss(**with_margins(-2, -2)).loss.item() > loss(**with_margins(0, 0)).loss.item()


def test_sum_is_und_plus_gen():
    lp = random_logps(3)
    losses = {k: PairDPOLoss(k, beta_und=0.3, beta_gen=0.1)(**lp).loss for k in ("sum", "und", "gen")}
    torch.testing.assert_close(losses["sum"], losses["und"] + losses["gen"])


def test_each_branch_is_trl_sigmoid_dpo():
    lp = random_logps(4)
    beta_und, beta_gen = 0.2, 0.07
    out = PairDPOLoss("sum", beta_und=beta_und, beta_gen=beta_gen)(**lp)
    # TRL's DPOTrainer, loss_type="sigmoid": logits = (πc − πr) − (rc − rr); loss = −logsigmoid(β·logits)
    u, g = lp["und"], lp["gen"]
    trl_und = -F.logsigmoid(beta_und * ((u.policy_chosen - u.policy_rejected) - (u.ref_chosen - u.ref_rejected)))
    trl_gen = -F.logsigmoid(beta_gen * ((g.policy_chosen - g.policy_rejected) - (g.ref_chosen - g.ref_rejected)))
    torch.testing.assert_close(out.branch_losses["und"], trl_und)
    torch.testing.assert_close(out.branch_losses["gen"], trl_gen)
    torch.testing.assert_close(out.chosen_rewards["und"], beta_und * (u.policy_chosen - u.ref_chosen))
    torch.testing.assert_close(out.rejected_rewards["gen"], beta_gen * (g.policy_rejected - g.ref_rejected))
    torch.testing.assert_close(out.chosen_rewards["und"] - out.rejected_rewards["und"], margins(lp, beta_und, beta_gen)[0])


@pytest.mark.parametrize("loss_type", sorted(LOSS_TYPES))
@pytest.mark.parametrize("d", [1e4, -1e4])
def test_large_margins_give_finite_losses_and_grads(loss_type, d):
    for d_und, d_gen in [(d, d), (d, -d)]:
        lp = with_margins(d_und, d_gen, dtype=torch.float32)  # where log(sigmoid(x)) would give -inf
        out = PairDPOLoss(loss_type, beta_und=1.0, beta_gen=1.0)(**lp)
        out.loss.sum().backward()
        assert torch.isfinite(out.loss).all() and all(torch.isfinite(v).all() for v in out.branch_losses.values())
        grads = [x.grad for x in (lp["und"].policy_chosen, lp["gen"].policy_chosen) if x.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)


def test_unknown_loss_type_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown loss_type 'ipo'.*product, sum, und, gen"):
        PairDPOLoss("ipo")


def test_sft_term_adds_minus_weight_times_chosen_logprob():
    lp = random_logps(5)
    base = PairDPOLoss("sum")(**lp).loss
    with_sft = PairDPOLoss("sum", sft_und=0.5, sft_gen=2.0)(**lp).loss
    u, g = lp["und"].policy_chosen, lp["gen"].policy_chosen
    torch.testing.assert_close(with_sft - base, -0.5 * u - 2.0 * g)

    lengths = torch.arange(1, B + 1, dtype=torch.float64)
    normalised = {"und": BranchLogps(**{**vars(lp["und"]), "chosen_count": lengths}),
                  "gen": BranchLogps(**{**vars(lp["gen"]), "chosen_count": 2 * lengths})}
    with_sft = PairDPOLoss("sum", sft_und=0.5, sft_gen=2.0)(**normalised).loss
    torch.testing.assert_close(with_sft - base, -0.5 * u / lengths - 2.0 * g / (2 * lengths))


def test_sft_term_only_on_the_branch_a_one_branch_loss_trains():
    lp = random_logps(6)
    base = PairDPOLoss("und")(**lp).loss
    out = PairDPOLoss("und", sft_und=0.5, sft_gen=2.0)(**lp)
    torch.testing.assert_close(out.loss - base, -0.5 * lp["und"].policy_chosen)
    assert list(out.nll_losses) == ["und"]  # logged unweighted, as nll/und, for the report's curves
    torch.testing.assert_close(out.nll_losses["und"], -lp["und"].policy_chosen)
    assert PairDPOLoss("sum")(**lp).nll_losses == {}


@pytest.mark.parametrize("loss_type", sorted(LOSS_TYPES))
def test_a_loss_needs_exactly_its_branches(loss_type):
    lp = random_logps(8)
    out = PairDPOLoss(loss_type)(**{b: lp[b] for b in BRANCHES[loss_type]})  # the other branch is never scored
    assert set(out.branch_losses) == set(BRANCHES[loss_type])
    for missing in BRANCHES[loss_type]:
        with pytest.raises(ValueError, match=f"needs the {missing} branch"):
            PairDPOLoss(loss_type)(**{b: lp[b] for b in BRANCHES[loss_type] if b != missing})


def test_mismatched_shapes_are_refused():
    lp = random_logps(7)["gen"]
    with pytest.raises(ValueError, match="one shape"):
        BranchLogps(**{**vars(lp), "ref_rejected": lp.ref_rejected[:, None]})


# The image objectives (gen_objective), on hand-made log-ratios c = log π(x_w) − log π_ref(x_w) and
# r = log π(x_l) − log π_ref(x_l): reference log-probs 0, so the policy log-probs are c and r.
def gen_pair(c: float, r: float, count: float | None = None) -> BranchLogps:
    z = torch.zeros(1, dtype=torch.float64)
    return BranchLogps(torch.full_like(z, c).requires_grad_(), torch.full_like(z, r).requires_grad_(), z.clone(), z.clone(),
                       chosen_count=None if count is None else torch.full_like(z, count))


def gen_term(objective: str, lp: BranchLogps, beta: float = 0.5, **kw) -> float:
    return PairDPOLoss("gen", beta_gen=beta, gen_objective=objective, **kw)(gen=lp).loss.item()


def test_dpo_objective_closed_form():
    assert gen_term("dpo", gen_pair(1.0, -1.0)) == pytest.approx(math.log1p(math.exp(-1.0)))  # −log σ(0.5·2)


def test_dpop_closed_form_with_its_penalty_active():
    # c = −0.1 < 0: margin β[(c − r) − λ·0.1] = 0.5·(0.9 − 1.0) = −0.05, loss −log σ(−0.05) = log(1 + e^0.05)
    assert gen_term("dpop", gen_pair(-0.1, -1.0), dpop_lambda=10.0) == pytest.approx(math.log1p(math.exp(0.05)))


@pytest.mark.parametrize("c, r", [(0.0, -1.0), (0.3, 2.0), (5.0, -3.0), (1e-9, 1e-9)])
def test_dpop_equals_dpo_where_the_chosen_likelihood_has_not_fallen(c, r):
    dpo, dpop = gen_pair(c, r), gen_pair(c, r)
    a = PairDPOLoss("gen", gen_objective="dpo")(gen=dpo).loss
    b = PairDPOLoss("gen", gen_objective="dpop", dpop_lambda=50.0)(gen=dpop).loss
    torch.testing.assert_close(a, b)
    a.sum().backward()
    b.sum().backward()
    torch.testing.assert_close(dpo.policy_chosen.grad, dpop.policy_chosen.grad)
    torch.testing.assert_close(dpo.policy_rejected.grad, dpop.policy_rejected.grad)


def test_dpop_punishes_a_fall_of_the_chosen_likelihood_that_dpo_rewards():
    # both likelihoods fall, the gap grows: DPO's loss drops below log 2, DPOP's rises above it
    fall = gen_pair(-1.0, -3.0)
    assert gen_term("dpo", fall) < math.log(2) < gen_term("dpop", fall, dpop_lambda=50.0)


def test_apo_zero_closed_form_is_trls():
    # TRL: losses_chosen = 1 − σ(β·c), losses_rejected = σ(β·r)
    def sigmoid(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    assert gen_term("apo_zero", gen_pair(1.0, -1.0)) == pytest.approx((1 - sigmoid(0.5)) + sigmoid(-0.5))
    assert gen_term("apo_zero", gen_pair(-2.0, 0.4), beta=0.1) == pytest.approx((1 - sigmoid(-0.2)) + sigmoid(0.04))


def test_cal_dpo_closed_form_as_its_official_code():
    # −log σ(c − r) + ½[(c − 1/(2β))² + (r + 1/(2β))²], β = 0.25: targets ±2
    assert gen_term("cal_dpo", gen_pair(1.0, -1.0), beta=0.25) == pytest.approx(math.log1p(math.exp(-2.0)) + 0.5 * (1 + 1))
    assert gen_term("cal_dpo", gen_pair(2.0, -2.0), beta=0.25) == pytest.approx(math.log1p(math.exp(-4.0)))  # calibrated: DPO part only


def test_positive_only_objective_is_the_per_token_nll_and_its_gradient():
    lp = BranchLogps(torch.tensor([-12.0, -3.0], requires_grad=True), chosen_count=torch.tensor([6.0, 1.0]))
    out = PairDPOLoss("gen", gen_objective="sft", sft_gen=5.0)(gen=lp)  # sft_gen does not add a second NLL
    torch.testing.assert_close(out.loss, torch.tensor([2.0, 3.0]))
    out.loss.sum().backward()
    torch.testing.assert_close(lp.policy_chosen.grad, -1 / torch.tensor([6.0, 1.0]))  # d/dlog π of −log π / n
    assert out.chosen_rewards == {} and list(out.branch_losses) == ["gen"]
    with pytest.raises(ValueError, match="needs rejected and reference"):
        PairDPOLoss("gen", gen_objective="dpo")(gen=lp)


def test_a_gen_objective_replaces_the_image_dpo_term_of_sum():
    lp = random_logps(9)
    for objective in ("dpop", "apo_zero", "cal_dpo"):
        total = PairDPOLoss("sum", beta_gen=0.3, gen_objective=objective)(**lp).loss
        parts = PairDPOLoss("und")(**lp).loss + PairDPOLoss("gen", beta_gen=0.3, gen_objective=objective)(**lp).loss
        torch.testing.assert_close(total, parts)


def test_weights_leave_examples_out_of_a_branch_term_only():
    lp = random_logps(10)
    w = torch.tensor([1.0, 0.0] * (B // 2), dtype=torch.float64)
    gen = BranchLogps(lp["gen"].policy_chosen, chosen_count=torch.full((B,), 4.0, dtype=torch.float64), weight=w)
    out = PairDPOLoss("sum", gen_objective="sft")(und=lp["und"], gen=gen)
    und = PairDPOLoss("und")(**lp).loss
    torch.testing.assert_close(out.loss, und + w * (-lp["gen"].policy_chosen / 4))


@pytest.mark.parametrize("loss_type", ["product", "joint"])
def test_product_and_joint_take_margin_objectives_only(loss_type):
    lp = random_logps(11)
    with pytest.raises(ValueError, match="combines the two branches' margins"):
        PairDPOLoss(loss_type, gen_objective="cal_dpo")
    # with DPOP the combined margin is DPOP's (the penalty inside)
    out = PairDPOLoss(loss_type, beta_und=1.0, beta_gen=0.5, gen_objective="dpop", dpop_lambda=3.0)(**lp)
    u, g = lp["und"], lp["gen"]
    c, r = g.policy_chosen - g.ref_chosen, g.policy_rejected - g.ref_rejected
    d_und = (u.policy_chosen - u.ref_chosen) - (u.policy_rejected - u.ref_rejected)
    d_gen = 0.5 * ((c - r) - 3.0 * torch.clamp(-c, min=0))
    combined = d_und * d_gen if loss_type == "product" else d_und + d_gen
    torch.testing.assert_close(out.loss, -torch.log(torch.sigmoid(combined)))
