"""The training loop's fairness contract (issue 10): every arm trains on the same tuples, the NLL
term is per token, image masks are drawn afresh each step yet shared by chosen/rejected and by
policy/reference, and each image objective trains end to end on a tiny model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from hermesflow.backbones import LogProbs, MaskedEstimator
from hermesflow.backbones.maskgit import MASKED, draw_masks
from hermesflow.data import read_homologous
from hermesflow.errors import UsageError
from hermesflow.losses import BranchLogps, PairDPOLoss
from hermesflow.options import TrainingOptions
from hermesflow.prefs import AnswerPair, CaptionPair, Dropped, ImagePair, Preference
from hermesflow.testbed.model import UnifiedConfig, UnifiedModel
from hermesflow.train import (
    PolicyLogps,
    ReferenceLogps,
    branch_grad_norms,
    branch_logps,
    examples_from,
    mask_seeds,
    reference_branches,
    train,
)
from hermesflow.world.build import write_world


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return write_world(tmp_path_factory.mktemp("train") / "data", 8, seed=0, split="train")


@pytest.fixture(scope="module")
def data(world):
    return read_homologous(world)


def tiny() -> UnifiedModel:
    torch.manual_seed(0)
    return UnifiedModel(UnifiedConfig(d_model=32, n_layers=1, n_heads=2))


def prefs_of(data, model: UnifiedModel, score=lambda i: 1.0) -> list[Preference]:
    """Rows 0-1 lack an image pair, rows 2-3 a caption pair, the rest have both; the image pair is a
    record's own image over another's, with chosen self score `score(i)`."""
    records = data.records
    tokens = [tuple(model.prepare_images([r.load_image()])[0].tolist()) for r in records]
    out = []
    for i, r in enumerate(records):
        other = (i + 1) % len(records)
        und = Dropped("tie") if i in (2, 3) else CaptionPair(r.caption, records[other].caption, 1.0, 0.5, "initial")
        gen = Dropped("tie") if i in (0, 1) else ImagePair(tokens[i], tokens[other], score(i), 0.25, "initial")
        out.append(Preference(r.id, 0, r.caption, und, gen))
    return out


def test_every_loss_trains_on_the_same_homologous_tuples_and_branch_widens_by_name(data):
    prefs = prefs_of(data, tiny())
    same = {lt: [e.id for e in examples_from(prefs, data, lt, 0)] for lt in ("und", "gen", "sum", "product", "joint")}
    both = [p.id for p in prefs if p.has("und") and p.has("gen")]
    assert all(ids == both for ids in same.values()) and len(both) == 4
    widened = {lt: [e.id for e in examples_from(prefs, data, lt, 0, pair_rows="branch")] for lt in ("und", "gen", "sum")}
    assert widened["und"] == [p.id for p in prefs if p.has("und")] and len(widened["und"]) == 6
    assert widened["gen"] == [p.id for p in prefs if p.has("gen")] and len(widened["gen"]) == 6
    assert widened["sum"] == both
    with pytest.raises(UsageError, match="pair-rows"):
        examples_from(prefs, data, "sum", 0, pair_rows="all")


def test_per_step_mask_seeds_differ_across_steps_and_resume_exactly(data):
    examples = examples_from(prefs_of(data, tiny()), data, "sum", 7)
    steps = [mask_seeds(examples, s, "step") for s in range(4)]
    for s in range(4):
        assert mask_seeds(examples, s, "step") == steps[s]  # a pure function of (seed, round, id, step)
        assert mask_seeds(examples, s, "round") == [e.mask_seed for e in examples]  # the first version's
    for a in range(4):
        for b in range(a + 1, 4):
            assert all(x != y for x, y in zip(steps[a], steps[b]))
    other_seed = examples_from(prefs_of(data, tiny()), data, "sum", 8)
    assert mask_seeds(other_seed, 0, "step") != steps[0]


def test_nll_term_is_per_token_by_default_and_summed_on_request():
    chosen = LogProbs(torch.tensor([-12.0, -3.0]), torch.tensor([6.0, 1.0]))
    rejected = LogProbs(torch.tensor([-20.0, -5.0]), torch.tensor([5.0, 2.0]))
    ref = (torch.tensor([-10.0, -4.0]), torch.tensor([-18.0, -5.0]))
    base = TrainingOptions()
    loss = PairDPOLoss("und", sft_und=1.0)
    dpo = PairDPOLoss("und", sft_und=0.0)
    per_token = branch_logps(chosen, rejected, ref, base)
    summed = branch_logps(chosen, rejected, ref, replace(base, sft_norm="sum"))
    # the DPO part is the same; the NLL term is −Σ log π / n tokens vs −Σ log π
    torch.testing.assert_close(loss(und=per_token).loss - dpo(und=per_token).loss, torch.tensor([2.0, 3.0]))
    torch.testing.assert_close(loss(und=summed).loss - dpo(und=summed).loss, torch.tensor([12.0, 3.0]))
    meaned = branch_logps(chosen, rejected, ref, replace(base, length_normalize=True))  # already per token: not divided again
    torch.testing.assert_close(loss(und=meaned).loss - dpo(und=meaned).loss, torch.tensor([2.0, 3.0]))


def test_positive_only_gradient_is_the_pretraining_nll_gradient(data):
    """gen_objective sft = the masked-token cross-entropy of pretraining on the chosen image, at the
    same mask: gradients equal those of F.cross_entropy recomputed by hand."""
    model = tiny()
    examples = examples_from(prefs_of(data, model), data, "gen", 0)[:2]
    policy = PolicyLogps(model, ("gen",), MaskedEstimator(), gen_rejected=False)
    seeds = [11, 12]
    cfg = TrainingOptions(loss_type="gen", gen_objective="sft")
    chosen, rejected = policy(examples, seeds=seeds)["gen"]
    assert rejected is None  # no rejected image is scored
    loss = PairDPOLoss("gen", gen_objective="sft")(gen=branch_logps(chosen, None, None, cfg)).loss.mean()
    params = [p for p in model.parameters() if p.requires_grad]
    ours = torch.autograd.grad(loss, params, allow_unused=True)

    naive = 0.0
    for e, seed in zip(examples, seeds):
        tokens = torch.tensor([e.pref.gen.chosen])
        mask = draw_masks([seed], 1, tokens.shape[1])[0][0]
        logits = model._masked_logits([e.record.caption], torch.where(mask, MASKED, tokens))
        naive = naive + F.cross_entropy(logits[mask], tokens[mask]) / len(examples)  # pretraining's t2i loss
    theirs = torch.autograd.grad(naive, params, allow_unused=True)
    torch.testing.assert_close(loss, naive)
    for a, b in zip(ours, theirs):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b)


def test_reference_branches_cache_captions_and_compute_images_with_each_steps_masks():
    cfg = TrainingOptions()
    assert reference_branches(cfg, True) == (("und",), ("gen",))
    assert reference_branches(replace(cfg, mask_draws="round"), True) == (("und", "gen"), ())
    assert reference_branches(replace(cfg, reference="online"), True) == ((), ("und", "gen"))
    assert reference_branches(cfg, False) == (("und",), ())  # positive-only: no image reference
    assert reference_branches(replace(cfg, loss_type="gen"), False) == ((), ())


def run_train(tmp_path: Path, data, model: UnifiedModel, prefs: list[Preference], **options) -> dict:
    cfg = TrainingOptions(train_steps=3, batch_size=2, warmup=1, save_every=0, **options)
    examples = examples_from(prefs, data, cfg.loss_type, 0, cfg.pair_rows)
    train(model, examples, cfg, tmp_path)
    return json.loads((tmp_path / "summary.json").read_text())


def test_one_mask_per_example_and_step_shared_by_chosen_rejected_policy_and_reference(tmp_path, data, monkeypatch):
    seen = []
    original = UnifiedModel.image_logps

    def spy(self, prompts, tokens, estimator, seeds):
        seen.append((self.training, list(seeds)))
        return original(self, prompts, tokens, estimator, seeds)

    model = tiny()
    prefs = prefs_of(data, model)
    monkeypatch.setattr(UnifiedModel, "image_logps", spy)
    summary = run_train(tmp_path, data, model, prefs)
    assert summary["mask_draws"] == "step" and summary["reference"] == {"cached": ["und"], "online": ["gen"]}
    calls = [s for _, s in seen]
    assert len(calls) == 6 and [t for t, _ in seen] == [True, False] * 3  # policy then its frozen reference, each step
    for policy, reference in zip(calls[::2], calls[1::2]):
        half = len(policy) // 2
        assert policy[:half] == policy[half:]  # chosen and rejected share each example's mask
        assert policy == reference
    assert len({tuple(c) for c in calls[::2]}) == 3  # a fresh draw each step


@pytest.mark.parametrize("objective", ["dpo", "dpop", "apo_zero", "cal_dpo", "sft"])
def test_each_image_objective_trains_and_records_its_rows(tmp_path, data, objective):
    model = tiny()
    prefs = prefs_of(data, model, score=lambda i: 1.0 if i % 2 else 0.75)
    summary = run_train(tmp_path, data, model, prefs, gen_objective=objective, cond_dropout=0.5)
    assert summary["examples"] == 4 and summary["pair_rows"] == "homologous" and summary["gen_objective"] == objective
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    if objective == "sft":
        assert summary["sft_image"] == {"min_accuracy": 1.0, "kept": 2, "dropped": 2}
        assert summary["reference"]["online"] == [] and "gen/rewards/margins" not in rows[0]
    else:
        assert "sft_image" not in summary and "gen/rewards/margins" in rows[0]


def test_objectives_without_a_margin_are_refused_for_product_and_joint(tmp_path, data):
    model = tiny()
    with pytest.raises(UsageError, match="gen-objective apo_zero.*combines the two branches' margins"):
        run_train(tmp_path, data, model, prefs_of(data, model), loss_type="product", gen_objective="apo_zero")


def test_the_paper_product_arm_without_nll_terms_still_runs(tmp_path, data):
    model = tiny()
    summary = run_train(tmp_path, data, model, prefs_of(data, model), loss_type="product", sft_und=0.0, sft_gen=0.0)
    assert summary["branches"] == ["und", "gen"] and summary["examples"] == 4


def test_a_positive_only_threshold_no_example_reaches_is_refused(tmp_path, data):
    model = tiny()
    prefs = prefs_of(data, model, score=lambda i: 0.75)
    with pytest.raises(UsageError, match="sft-min-accuracy 1.0"):
        run_train(tmp_path, data, model, prefs, gen_objective="sft")


def test_branch_grad_norms_leave_out_what_the_loss_leaves_out():
    """The positive-only image term's gradient norm counts only the examples it trains (weight 1):
    with logp = a·x, the NLL's gradient is −mean(w·x), here −(2·1 + 0·10)/2 = −1."""
    policy = torch.nn.Linear(1, 1, bias=False)
    policy.weight.data.fill_(0.5)
    logp = policy(torch.tensor([[2.0], [10.0]]))[:, 0]
    lp = BranchLogps(logp, chosen_count=torch.ones(2), weight=torch.tensor([1.0, 0.0]))
    norms = branch_grad_norms(policy, {"gen": lp}, PairDPOLoss("gen", gen_objective="sft"))
    assert norms["gen/grad_norm"].item() == pytest.approx(1.0)


def test_cached_reference_log_probs_are_typed_tensors_that_round_trip_exactly(tmp_path):
    """The round's reference cache: (chosen, rejected) per branch as float32 tensors, read back bit for
    bit, looked up by example key; an image pair scored under the empty prompt where its condition drops."""
    from hermesflow.train import ReferenceLogps

    values = {"und": torch.tensor([[-1.5, -2.25], [-3.0, -4.125]]), "gen": torch.tensor([[-10.0, -11.0], [-12.0, -13.0]]),
              "gen_uncond": torch.tensor([[-20.0, -21.0], [-22.0, -23.0]])}
    refs = ReferenceLogps(["a", "b"], torch.tensor([7, 8]), values)
    refs.save(tmp_path / "reference.safetensors", {"model": "m"})
    back = ReferenceLogps.load(tmp_path / "reference.safetensors")
    assert back.ids == ["a", "b"] and back.mask_seeds.tolist() == [7, 8]
    assert all(torch.equal(back.values[k], v) and back.values[k].dtype == torch.float32 for k, v in values.items())
    batch = [SimpleNamespace(key="b"), SimpleNamespace(key="a")]
    chosen, rejected = back.pair("und", batch, [False, False], "cpu")
    assert chosen.tolist() == [-3.0, -1.5] and rejected.tolist() == [-4.125, -2.25]
    chosen, rejected = back.pair("gen", batch, [True, False], "cpu")
    assert chosen.tolist() == [-22.0, -10.0] and rejected.tolist() == [-23.0, -11.0]


def test_a_training_state_saved_with_its_scheduler_by_the_earlier_loop_resumes(tmp_path):
    """States saved before the learning rate followed from the step hold a pickled scheduler beside
    them; the loop resumes them at their step instead of refusing the folder."""
    from hermesflow.loop import TrainingLoop

    options = TrainingOptions(train_steps=4, save_every=2, warmup=1)
    loop = TrainingLoop(tmp_path, options, "fp32", "train", "training")
    loop.prepare(torch.nn.Linear(2, 2))
    loop.save(2)
    (tmp_path / "state" / "custom_checkpoint_0.pkl").write_bytes(b"the earlier scheduler")
    again = TrainingLoop(tmp_path, options, "fp32", "train", "training")
    again.prepare(torch.nn.Linear(2, 2))
    assert again.start == 2 and not (tmp_path / "state" / "custom_checkpoint_0.pkl").exists()


def test_answer_pairs_train_the_answer_given_its_question(tmp_path, data):
    """--und-pairs answers: the understanding branch scores log π(answer | image, question) of an
    answer pair and log π(caption | image) of a caption pair, row by row in a mixed batch, and DPO
    on answer pairs raises the right answer over the wrong one."""
    model = tiny()
    records = data.records
    questions = [next(q for q in r.qa if len(q.choices) > 1) for r in records]
    wrong = [next(c for c in q.choices if c != q.answer) for q in questions]
    prefs = [replace(p, und=AnswerPair(q.question, q.answer, w, 0.4, 0.6, "answered_wrong") if i % 3 else p.und)
             for i, (p, q, w) in enumerate(zip(prefs_of(data, model), questions, wrong))]
    examples = examples_from(prefs, data, "und", 0, "branch")
    assert [type(e.pref.und) for e in examples][:3] == [CaptionPair, AnswerPair, AnswerPair]
    policy = PolicyLogps(model, ("und",), model.default_estimator())
    with torch.no_grad():
        chosen, rejected = policy(examples)["und"]
        for k, e in enumerate(examples):
            inputs = model.prepare_images([e.record.load_image()])
            for text, got in ((e.pref.und.chosen, chosen), (e.pref.und.rejected, rejected)):
                alone = (model.answer_logps(inputs, [e.pref.und.question], [text]) if isinstance(e.pref.und, AnswerPair)
                         else model.caption_logps(inputs, [text]))
                torch.testing.assert_close(got.total[k : k + 1], alone.total, atol=1e-4, rtol=1e-5)
                assert got.count[k] == alone.count[0]

    answers = [e for e in examples if isinstance(e.pref.und, AnswerPair)]

    def margins() -> torch.Tensor:
        with torch.no_grad():
            chosen, rejected = policy(answers)["und"]
        return chosen.total - rejected.total

    before = margins()
    cfg = TrainingOptions(loss_type="und", train_steps=12, batch_size=4, warmup=1, save_every=0, lr=3e-3, sft_und=0.0)
    train(model, answers, cfg, tmp_path)
    assert (margins() - before).mean() > 1.0


def test_a_base_reference_measures_the_margins_against_the_given_model(tmp_path, data):
    """--reference-model base: the DPO terms are measured against the given model (the run's start) in
    place of the round's starting weights, so a later round's first margins are how far the policy
    has moved from it; the default's first margins are zero."""
    import copy

    model = tiny()
    base = tiny()
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.05 * torch.randn_like(p))
    examples = examples_from(prefs_of(data, model), data, "sum", 0)
    cfg = TrainingOptions(train_steps=1, batch_size=len(examples), warmup=1, save_every=0)
    start = copy.deepcopy(model)
    train(copy.deepcopy(model), examples, cfg, tmp_path / "round")
    train(model, examples, cfg, tmp_path / "base", reference_model=base)
    first = {kind: json.loads((tmp_path / kind / "metrics.jsonl").read_text().splitlines()[0]) for kind in ("round", "base")}
    assert first["round"]["und/rewards/margins"] == 0.0 and first["round"]["gen/rewards/margins"] == 0.0
    seeds = mask_seeds(examples, 0, "step")
    with torch.no_grad():
        policy = PolicyLogps(start, ("und", "gen"), start.default_estimator())(examples, None, seeds)
        anchor = PolicyLogps(base, ("und", "gen"), base.default_estimator())(examples, None, seeds)
    for b in ("und", "gen"):
        (pc, pr), (rc, rr) = policy[b], anchor[b]
        expected = (0.2 * ((pc.total - rc.total) - (pr.total - rr.total))).mean().item()
        assert first["base"][f"{b}/rewards/margins"] == pytest.approx(expected, rel=1e-4, abs=1e-5)
        assert abs(expected) > 1e-3
    model.add_lora(4, 8.0)
    with pytest.raises(UsageError, match="--reference-model base with --lora-r"):
        train(model, examples, cfg, tmp_path / "lora", reference_model=base)


def test_replayed_pairs_train_beside_the_rounds_own_each_with_its_own_reference_row(tmp_path, data):
    """--replay: an earlier round's pairs train again beside the round's own. A record with a pair in
    both rounds is two examples, named apart by round, with their own mask seeds and cached reference
    rows (the same caption pair scores the same; the image pair under its own masks differs)."""
    model = tiny()
    earlier = prefs_of(data, model)
    current = [replace(p, round=1) for p in earlier]
    examples = examples_from(current, data, "sum", 0) + examples_from(earlier, data, "sum", 0, replayed=True)
    n = len(examples) // 2
    own, again = examples[:n], examples[n:]
    assert [e.id for e in own] == [e.id for e in again] and [e.key for e in own] == [e.id for e in own]
    assert [e.key for e in again] == [f"{e.id}@round-1" for e in again]
    assert all(a.mask_seed != b.mask_seed for a, b in zip(own, again))
    cfg = TrainingOptions(train_steps=2, batch_size=4, warmup=1, save_every=0, mask_draws="round")
    train(model, examples, cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["examples"], summary["examples_replayed"]) == (2 * n, n)
    [cache] = tmp_path.glob("reference-*.safetensors")
    refs = ReferenceLogps.load(cache)
    assert sorted(refs.ids) == sorted(e.key for e in examples)
    for a, b in zip(own, again):
        i, j = refs.row[a.key], refs.row[b.key]
        assert torch.equal(refs.values["und"][i], refs.values["und"][j])
        assert not torch.equal(refs.values["gen"][i], refs.values["gen"][j])
