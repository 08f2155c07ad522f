"""Online GRPO and the MaskGIT trajectory log-probability (issue 10, candidates 4 and 6): group
advantages and dropped groups, the clipped objective and its zero gradient where clipped, the rewards
on hand-made scores, the trajectory log-prob against a naive step-by-step recomputation, and a GRPO
run that resumes exactly."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hermesflow import config
from hermesflow.backbones import GenerationConfig
from hermesflow.backbones.maskgit import MASKED, Trajectory, TrajectoryEstimator, cfg_logits, maskgit_decode
from hermesflow.cli import main
from hermesflow.data import read_homologous
from hermesflow.errors import UsageError
from hermesflow.grpo import (
    clipped_objective,
    group_advantages,
    grpo_estimator,
    grpo_settings,
    self_vqa_rewards,
    train_grpo,
)
from hermesflow.judges import vqa_scores
from hermesflow.recipes.run import sampler_of
from hermesflow.settings import RunConfig
from hermesflow.stages import settings_file
from hermesflow.testbed.model import UnifiedConfig, UnifiedModel
from hermesflow.world.build import write_world


def tiny() -> UnifiedModel:
    torch.manual_seed(0)
    return UnifiedModel(UnifiedConfig(d_model=32, n_layers=1, n_heads=2))


# ----- advantages, clipping, rewards -----------------------------------------------------------------


def test_group_advantages_normalise_each_group_and_drop_those_without_variance():
    rewards = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.5, 0.25, 0.25, 0.0]])
    adv, kept = group_advantages(rewards, eps=1e-4)
    assert kept.tolist() == [True, False, True]
    std0 = math.sqrt(4 * 0.25 / 3)  # unbiased, as torch.std and TRL
    assert torch.allclose(adv[0], torch.tensor([0.5, -0.5, 0.5, -0.5]) / (std0 + 1e-4))
    assert torch.equal(adv[1], torch.zeros(4))
    std2 = math.sqrt(2 * 0.25**2 / 3)
    assert torch.allclose(adv[2], torch.tensor([0.25, 0.0, 0.0, -0.25]) / (std2 + 1e-4))
    with pytest.raises(UsageError, match="group >= 2"):
        group_advantages(torch.ones(3, 1))


def test_clipped_objective_closed_form_and_zero_gradient_where_clipped():
    eps = 0.2
    ratio = torch.tensor([1.5, 0.5, 1.1, 0.5, 1.5])
    adv = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0])
    old = torch.tensor([-2.0, -1.0, -3.0, -0.5, -1.5])
    logps = (old + ratio.log()).requires_grad_(True)
    out = clipped_objective(logps, old, adv, eps)
    # ρA vs clip(ρ)A: the pessimistic (smaller) one is taken; the loss is its negative
    expected = torch.tensor([-1.2, 0.8, -1.1, -0.5, 1.5])
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert out.clipped.tolist() == [True, True, False, False, False]
    assert torch.allclose(out.ratio, ratio, atol=1e-6)
    out.loss.sum().backward()
    # d(−ρA)/d logp = −ρA where the unclipped term is active, 0 where the clipped constant is
    assert torch.allclose(logps.grad, torch.tensor([0.0, 0.0, -1.1, -0.5, 1.5]), atol=1e-6)
    assert torch.equal(out.kl, torch.zeros(5))


def test_k3_kl_to_the_reference():
    logps = torch.tensor([-1.0, -2.0], requires_grad=True)
    ref = torch.tensor([-1.0 + math.log(2.0), -2.0])
    out = clipped_objective(logps, logps.detach(), torch.zeros(2), 0.2, ref, beta_kl=0.5)
    assert torch.allclose(out.kl, torch.tensor([1 - math.log(2.0), 0.0]), atol=1e-6)  # exp(δ) − δ − 1, δ = ref − logp
    assert torch.allclose(out.loss, 0.5 * out.kl)
    out.loss.sum().backward()
    assert torch.allclose(logps.grad, torch.tensor([0.5 * (1 - 2.0), 0.0]), atol=1e-6)  # d/dlogp = β(1 − exp(δ))


def test_hard_and_graded_rewards_on_hand_made_choice_scores():
    scores = [[0.0, math.log(3.0)], [0.0, 0.0], [2.0, 1.0, 0.0]]  # image 0: two questions; image 1: one
    truth, owners = [1, 1, 0], [0, 0, 1]
    hard = torch.from_numpy(vqa_scores(scores, truth, owners, 2).accuracy).float()
    graded = torch.from_numpy(vqa_scores(scores, truth, owners, 2).graded).float()
    assert hard.tolist() == [0.5, 1.0]  # a tie answers the first option, as `answer` does
    p = torch.tensor([2.0, 1.0, 0.0]).softmax(0)[0].item()
    assert torch.allclose(graded, torch.tensor([(0.75 + 0.5) / 2, p]))


def test_rewards_score_the_options_as_curation_does_sum_or_per_token_mean(records):
    model = tiny().eval()
    tokens = model.generate([r.caption for r in records[:4]], 1, GenerationConfig(steps=2, seed=0))
    inputs = model.prepare_generated(tokens)
    for score in ("sum", "mean"):  # the same scores as the model's own answers under that rule
        rows = [(j, q) for j, r in enumerate(records[:4]) for q in r.qa]
        logps = model.choice_logps(inputs[[j for j, _ in rows]], [q.question for _, q in rows], [list(q.choices) for _, q in rows], score=score)
        right = [float(max(range(len(lp)), key=lambda i: (lp[i], -i)) == list(q.choices).index(q.answer)) for lp, (_, q) in zip(logps, rows)]
        expected = [sum(x for x, (j, _) in zip(right, rows) if j == k) / len(records[k].qa) for k in range(4)]
        assert self_vqa_rewards(model, tokens, records[:4], "hard", score).tolist() == pytest.approx(expected)
    assert grpo_settings(grpo_config(Path("x")).grpo, grpo_config(Path("x"), choice_score="mean").curation)["choice_score"] == "mean"


# ----- the trajectory log-probability ------------------------------------------------------------------


def naive_trajectory_logp(logits_of, prompt: str, trace: list[torch.Tensor], final: torch.Tensor, guidance: float,
                          temperature: float) -> float:
    """Replay one image's decoding step by step: at each recorded state, the log-probs of the codes
    the step committed (masked before it, not after it; at the last step every cell still masked).
    `logits_of(prompt, state)` is the model's (L, C) code logits, "" the unconditional prompt."""
    state, total = torch.full_like(final, MASKED), 0.0
    for s in range(len(trace)):
        after = trace[s] if s < len(trace) - 1 else final
        committed = (state == MASKED) & (after != MASKED)
        cond = logits_of(prompt, state).float()
        logits = cfg_logits(cond, logits_of("", state).float(), guidance) if guidance else cond
        logp = F.log_softmax(logits / temperature, -1)
        for cell in committed.nonzero()[:, 0].tolist():
            total += float(logp[cell, final[cell]])
        state = after
    return total


@pytest.mark.parametrize("guidance, temperature", [(2.0, 0.7), (0.0, 1.0)])
def test_trajectory_logp_equals_a_naive_recomputation_at_the_recorded_states(guidance, temperature):
    model = tiny().eval()
    prompts = ["a red circle", "two blue squares"]
    gen = GenerationConfig(guidance=2.0, temperature=0.7, steps=4, seed=5)
    trace: list = []
    codes = model.generate(prompts, 2, gen, trace)
    traj = model.generate_trajectory(prompts, 2, gen)
    assert torch.equal(traj.codes, codes) and torch.equal(traj.codes, model.generate(prompts, 2, gen))
    # the states are the recorded codes before each step
    states = traj.states()
    assert (states[:, 0] == MASKED).all()
    for s in range(1, gen.steps):
        assert torch.equal(states[:, s], trace[s - 1])
    flat = [p for p in prompts for _ in range(2)]
    with torch.no_grad():
        lp = model.trajectory_logps(flat, traj, TrajectoryEstimator(guidance, temperature))
        logits_of = lambda prompt, state: model._masked_logits([prompt], state[None])[0]  # noqa: E731
        naive = [naive_trajectory_logp(logits_of, flat[i], [t[i] for t in trace], codes[i], guidance, temperature) for i in range(4)]
    assert torch.allclose(lp.total, torch.tensor(naive), atol=1e-4)
    assert lp.count.tolist() == [16.0] * 4


@pytest.mark.parametrize("sampler", ["official", "shared"])
def test_show_o_trajectory_logp_equals_a_naive_recomputation(tmp_path, sampler):
    from dataclasses import replace

    from tiny_showo import make_tiny_showo

    from hermesflow.backbones.showo import ShowoBackbone

    model = ShowoBackbone.from_pretrained(make_tiny_showo(tmp_path / "showo")).eval()
    model.cfg = replace(model.cfg, sampler=sampler)
    gen = GenerationConfig(guidance=1.5, temperature=1.0, steps=3, seed=2)
    trace: list = []
    codes = model.generate_ids([model._encode("a red circle")] * 2, gen, trace)
    traj = model.generate_trajectory(["a red circle"], 2, gen)
    assert torch.equal(traj.codes, codes) and torch.equal(codes, model.generate(["a red circle"], 2, gen))
    with torch.no_grad():
        lp = model.trajectory_logps(["a red circle"] * 2, traj, TrajectoryEstimator(1.5, 1.0))

        def logits_of(prompt: str, state: torch.Tensor) -> torch.Tensor:
            return model.code_logits(model._image_hidden([model._encode(prompt) if prompt else []], state[None]))[0]

        naive = [naive_trajectory_logp(logits_of, "a red circle", [t[i] for t in trace], codes[i], 1.5, 1.0) for i in range(2)]
    assert torch.allclose(lp.total, torch.tensor(naive), atol=1e-4)


def test_recording_leaves_maskgit_decoding_bit_identical():
    torch.manual_seed(1)
    table = torch.randn(16, 7)

    def logits(codes: torch.Tensor) -> torch.Tensor:  # depends on the state, like a model
        return table[None].expand(len(codes), -1, -1) + 0.3 * (codes >= 0).float().sum(-1)[:, None, None]

    def run(trace: list | None = None) -> torch.Tensor:
        return maskgit_decode(logits, 3, 16, 5, 1.0, torch.Generator().manual_seed(9), torch.device("cpu"), trace)

    trace: list = []
    recorded = run(trace)
    assert torch.equal(recorded, run())
    traj = Trajectory.from_trace(trace, recorded)
    assert len(trace) == 5 and torch.equal(traj.codes, recorded)
    assert (traj.commit_step >= 0).all() and (traj.commit_step < 5).all()


def test_trajectory_refuses_inconsistent_inputs():
    with pytest.raises(UsageError, match="commit steps"):
        Trajectory(torch.zeros(2, 4, dtype=torch.long), torch.full((2, 4), 3), steps=3)
    with pytest.raises(UsageError, match="temperature"):
        TrajectoryEstimator(2.0, 0.0)
    assert TrajectoryEstimator.for_sampler(2.0, 0.0).temperature == 1.0  # greedy samples scored at temperature 1


def test_the_trajectory_estimator_is_refused_for_a_backbone_that_does_not_record_its_decoding(tmp_path):

    class Autoregressive:
        model_type, default_guidance = "janus", 4.0

    with pytest.raises(UsageError, match="--grpo-estimator random_mask"):
        estimator_for(Autoregressive(), grpo_config(tmp_path))
    sampler = estimator_for(tiny(), grpo_config(tmp_path, guidance=3.0, image_temperature=0.5))
    assert (sampler.guidance, sampler.temperature) == (3.0, 0.5)
    assert estimator_for(tiny(), grpo_config(tmp_path, grpo_logits="conditional")) == TrajectoryEstimator(0.0, 1.0)


# ----- the loop ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return list(read_homologous(write_world(tmp_path_factory.mktemp("grpo") / "data", 8, seed=0, split="train")).records)


def grpo_config(out: Path, **changes) -> RunConfig:
    settings = dict(out=out, recipe="grpo", train_steps=3, save_every=2, grpo_prompts=2, grpo_group=3, steps=3, lr=1e-3,
                    warmup=1, grpo_inner_steps=2, grpo_reward="graded")
    return config.build(RunConfig, **{**settings, **changes})


def estimator_for(backbone, cfg: RunConfig):
    return grpo_estimator(backbone, cfg.grpo, cfg.training, sampler_of(cfg.curation, backbone))


def run_grpo(backbone, records, cfg: RunConfig, out: Path):
    return train_grpo(backbone, records, cfg.grpo, cfg.training, sampler_of(cfg.curation, backbone), cfg.seed, cfg.dtype, out)


@pytest.mark.parametrize("estimator, beta_kl", [("trajectory", 0.0), ("random_mask", 0.1)])
def test_a_grpo_run_resumed_after_step_2_equals_the_uninterrupted_run(tmp_path, records, estimator, beta_kl):
    cfg = grpo_config(tmp_path / "full", grpo_estimator=estimator, grpo_beta_kl=beta_kl)
    start = {k: v.clone() for k, v in tiny().state_dict().items()}
    full = run_grpo(tiny(), records, cfg, cfg.out).state_dict()
    rows = [json.loads(line) for line in (cfg.out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert {"reward/mean", "reward/std", "groups/dropped", "clip_fraction", "ratio/mean", "loss"} <= set(rows[0])
    assert ("kl" in rows[0]) == (beta_kl > 0)  # the KL to the reference is logged where it is penalised
    if beta_kl:
        assert rows[0]["kl"] >= 0 and any(r["kl"] > 0 for r in rows)
    assert any(r["groups/dropped"] < 1 for r in rows)
    assert any(r["clip_fraction"] > 0 or r["ratio/mean"] != 1.0 for r in rows)  # μ = 2: the second update sees ρ ≠ 1
    assert any(not torch.equal(full[k], start[k]) for k in full)

    # a kill after step 2's checkpoint: the state at step 2 and a metrics row of step 3 cut short
    resumed = tmp_path / "resumed"
    shutil.copytree(cfg.out / "state", resumed / "state")
    (resumed / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:2]) + '\n{"step": 3, "rew')
    # Without a KL term, other starting weights show that the resumed run takes the checkpoint's; with
    # one, the reference is the round's starting model, which a resumed round loads again.
    torch.manual_seed(1)
    other = UnifiedModel(UnifiedConfig(d_model=32, n_layers=1, n_heads=2)) if beta_kl == 0 else tiny()
    again = run_grpo(other, records, grpo_config(resumed, grpo_estimator=estimator, grpo_beta_kl=beta_kl), resumed).state_dict()
    assert all(torch.equal(full[k], again[k]) for k in full)
    assert [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()] == rows


def test_hermesflow_run_trains_a_round_with_grpo(tmp_path):
    UnifiedModel(UnifiedConfig(d_model=32, n_layers=1, n_heads=2)).save_pretrained(tmp_path / "model")
    args = ["run", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "run"), "--n-train", "8", "--eval-n", "8",
            "--n-captions", "2", "--n-images", "2", "--steps", "2", "--curate-batch-size", "4", "--min-chosen-accuracy", "0",
            "--recipe", "grpo", "--train-steps", "2", "--grpo-prompts", "2", "--grpo-group", "2", "--grpo-reward", "graded"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "round-1" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and "reward/mean" in rows[0]
    assert (tmp_path / "run" / "round-1" / "model" / "config.json").exists()
    recorded = json.loads(settings_file(tmp_path / "run" / "round-1" / "train", "train").read_text())["settings"]
    assert recorded["recipe"] == "grpo" and recorded["grpo_group"] == 2  # another GRPO setting is another training
