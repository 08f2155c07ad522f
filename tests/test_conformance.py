"""The backbone contract, checked on every backbone HermesFlow ships (the built-in model and a tiny
random Janus and a tiny random Show-o). Each adapter's own test file compares its
log-probs and samplers with a naive per-token recomputation; this file checks what the pipeline
relies on from any backbone: batching does not change a log-prob, shared seeds share masks, an
identical reference gives zero margins, save -> load is exact, sampling is seeded, bf16 agrees with
fp32, the model moves between devices, and LoRA's disabled adapter is the reference."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import make_tiny_janus
from tiny_showo import make_tiny_showo

from hermesflow.backbones import Backbone, GenerationConfig, MaskedEstimator, load_backbone
from hermesflow.losses import BranchLogps, PairDPOLoss
from hermesflow.testbed.model import UnifiedConfig, UnifiedModel
from hermesflow.world.build import world_records


def _builtin(folder: Path) -> Path:
    torch.manual_seed(0)
    UnifiedModel(UnifiedConfig(d_model=32, n_layers=2, n_heads=2)).save_pretrained(folder)
    return folder


BUILDERS = {"builtin": _builtin, "janus": make_tiny_janus, "showo": make_tiny_showo}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def folder(request, tmp_path_factory) -> Path:
    return BUILDERS[request.param](tmp_path_factory.mktemp(request.param) / "model")


@pytest.fixture(scope="module")
def backbone(folder) -> Backbone:
    return load_backbone(folder).eval()


@pytest.fixture(scope="module")
def world(backbone) -> tuple[list[dict], list[np.ndarray]]:
    pairs = list(world_records(3, seed=0, split="eval", image_size=max(32, backbone.image_size // 32 * 32)))
    return [r for r, _ in pairs], [image for _, image in pairs]


def logps(backbone: Backbone, world, model: Backbone | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption and image log-prob sums of fixed inputs (masks from fixed seeds)."""
    model = model or backbone
    records, images = world
    captions = [r["caption"] for r in records]
    tokens = backbone.generate(captions, 1, GenerationConfig(steps=3, seed=5)).cpu()
    with torch.no_grad():
        cap = model.caption_logps(model.prepare_images(images), captions).total
        img = model.image_logps(captions, tokens.to(model.device), model.default_estimator(), [7, 8, 9]).total
    return cap.float().cpu(), img.float().cpu()


def test_the_data_of_the_world_at_its_resolution_fits(backbone, world):
    records, images = world
    for r, image in zip(records, images):
        texts = [r["caption"]] + [t for q in r["qa"] for t in (q["question"], *q["choices"])]
        assert backbone.fit_problems(image, texts) == []


def test_batching_does_not_change_a_log_prob(backbone, world):
    records, images = world
    captions = [r["caption"] for r in records]
    inputs = backbone.prepare_images(images)
    batched = backbone.caption_logps(inputs, captions)
    for i, caption in enumerate(captions):
        alone = backbone.caption_logps(inputs[i : i + 1], [caption])
        torch.testing.assert_close(alone.total, batched.total[i : i + 1], atol=1e-4, rtol=1e-5)
        assert alone.count.item() == batched.count[i].item() > 0
    tokens = backbone.generate(captions, 1, GenerationConfig(steps=3, seed=1))
    est = backbone.default_estimator()
    batched = backbone.image_logps(captions, tokens, est, [3, 4, 5])
    for i in range(3):
        alone = backbone.image_logps(captions[i : i + 1], tokens[i : i + 1], est, [3 + i])
        torch.testing.assert_close(alone.total, batched.total[i : i + 1], atol=1e-4, rtol=1e-5)


def test_the_answer_is_the_argmax_of_the_choice_scores(backbone, world):
    # curation ranks images by the softmax of choice_logps and gates them by answer's accuracy:
    # the two must come from one computation
    records, images = world
    inputs = backbone.prepare_images(images)
    rows = [(i, q) for i, r in enumerate(records) for q in r["qa"]]
    questions, choices = [q["question"] for _, q in rows], [list(q["choices"]) for _, q in rows]
    with torch.no_grad():
        scores = backbone.choice_logps(inputs[[i for i, _ in rows]], questions, choices)
        answers = backbone.answer(inputs[[i for i, _ in rows]], questions, choices)
    assert [len(s) for s in scores] == [len(c) for c in choices]
    assert all(np.isfinite(s).all() and max(s) <= 0 for s in scores)
    assert answers == [options[int(np.argmax(s))] for s, options in zip(scores, choices)]
    assert backbone.choice_logps(inputs[:0], [], []) == []


def test_an_answer_log_prob_is_its_choice_score_and_trains(backbone, world):
    # answer pairs (--und-pairs answers) train log π(answer | image, question): the quantity whose
    # argmax over the choices is the model's answer, now with gradients
    records, images = world
    inputs = backbone.prepare_images(images)
    rows = [(i, q, c) for i, r in enumerate(records) for q in r["qa"] for c in q["choices"]]
    owners = [i for i, _, _ in rows]
    with torch.no_grad():
        scores = [x for i, r in enumerate(records) for x in sum(backbone.choice_logps(
            inputs[[i] * len(r["qa"])], [q["question"] for q in r["qa"]], [list(q["choices"]) for q in r["qa"]]), [])]
    backbone.zero_grad()
    lp = backbone.answer_logps(inputs[owners], [q["question"] for _, q, _ in rows], [c for _, _, c in rows])
    torch.testing.assert_close(lp.total.detach().float(), torch.tensor(scores), atol=1e-4, rtol=1e-5)
    assert (lp.count >= 2).all()  # the answer's tokens and its end token
    lp.total.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.parameters())
    backbone.zero_grad()


def test_chosen_and_rejected_share_masks_and_an_identical_reference_gives_zero_margins(backbone, world):
    records, _ = world
    caption = records[0]["caption"]
    x = backbone.generate([caption], 2, GenerationConfig(steps=3, seed=2))
    est = backbone.default_estimator()
    twice = backbone.image_logps([caption] * 2, torch.cat([x[:1], x[:1]]), est, [11, 11])
    assert torch.equal(twice.total[0], twice.total[1]) and torch.equal(twice.count[0], twice.count[1])
    reference = copy.deepcopy(backbone)
    policy_lp, ref_lp = logps(backbone, world), logps(backbone, world, reference)
    out = PairDPOLoss("sum")(und=BranchLogps(policy_lp[0], policy_lp[0].flip(0), ref_lp[0], ref_lp[0].flip(0)),
                             gen=BranchLogps(policy_lp[1], policy_lp[1].flip(0), ref_lp[1], ref_lp[1].flip(0)))
    for branch in ("und", "gen"):
        assert torch.equal(out.chosen_rewards[branch] - out.rejected_rewards[branch], torch.zeros(3))


def test_save_then_load_gives_identical_outputs_and_fingerprint(backbone, world, tmp_path):
    backbone.save_pretrained(tmp_path / "copy")
    loaded = load_backbone(tmp_path / "copy").eval()
    assert loaded.fingerprint() == backbone.fingerprint()
    for a, b in zip(logps(backbone, world), logps(backbone, world, loaded)):
        assert torch.equal(a, b)


def test_seeded_sampling_is_deterministic(backbone, world):
    records, images = world
    prompts = [r["caption"] for r in records[:2]]
    a = backbone.generate(prompts, 2, GenerationConfig(steps=3, seed=4))
    assert torch.equal(a, backbone.generate(prompts, 2, GenerationConfig(steps=3, seed=4)))
    assert not torch.equal(a, backbone.generate(prompts, 2, GenerationConfig(steps=3, seed=5)))
    assert backbone.decode(a).shape == (4, backbone.image_size, backbone.image_size, 3)
    inputs = backbone.prepare_images(images[:2])
    gen = GenerationConfig(temperature=1.0, seed=3)
    assert backbone.sample_captions(inputs, 2, gen) == backbone.sample_captions(inputs, 2, gen)


def test_bf16_agrees_with_fp32(folder, backbone, world):
    # bf16 keeps 8 bits of mantissa: a sum of ~10-20 log-probs of size ~5 moves by a few tenths
    low = load_backbone(folder, "bf16").eval()
    assert low.dtype == torch.bfloat16 and low.fingerprint() != backbone.fingerprint()
    for a, b in zip(logps(backbone, world), logps(backbone, world, low)):
        torch.testing.assert_close(b, a, atol=0.5, rtol=0.05)


def test_the_model_moves_to_another_device_with_all_its_tensors(backbone, world):
    meta = copy.deepcopy(backbone)
    if hasattr(getattr(meta, "model", None), "set_attn_implementation"):
        meta.model.set_attn_implementation("eager")  # transformers' sdpa mask path reads a value back (.item())
    meta.to("meta")
    records, _ = world
    captions = [r["caption"] for r in records]
    tokens = backbone.generate(captions, 1, GenerationConfig(steps=2, seed=0))
    cap = meta.caption_logps(meta.prepare_images(world[1]), captions)
    img = meta.image_logps(captions, tokens, meta.default_estimator(), [1, 2, 3])  # stored tokens live on the CPU
    assert cap.total.device.type == img.total.device.type == "meta" and cap.total.shape == img.total.shape == (3,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_runs_on_cuda(backbone, world):
    gpu = copy.deepcopy(backbone).to("cuda")
    for a, b in zip(logps(backbone, world), logps(backbone, world, gpu)):
        torch.testing.assert_close(b, a, atol=1e-3, rtol=1e-4)


def test_lora_trains_only_adapters_and_its_disabled_adapter_is_the_reference(folder, world):
    model = load_backbone(folder)
    before = logps(model, world)
    model.add_lora(r=4, alpha=8)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    for p in (p for p in model.parameters() if p.requires_grad):  # an adapter as after some training
        torch.nn.init.normal_(p, std=0.05)
    moved = logps(model, world)
    assert not torch.equal(moved[0], before[0])
    with model.reference_context():
        reference = logps(model, world)
    for a, b in zip(reference, before):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-6)
    model.merge_lora()
    assert not any("lora_" in n for n, _ in model.named_parameters())
    for a, b in zip(logps(model, world), moved):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-4)


def test_a_masked_estimator_counts_masked_tokens_and_exact_counts_all(backbone, world):
    records, _ = world
    captions = [r["caption"] for r in records]
    tokens = backbone.generate(captions, 1, GenerationConfig(steps=2, seed=0))
    lp = backbone.image_logps(captions, tokens, backbone.default_estimator(), [1, 2, 3])
    n = tokens.shape[1]
    if isinstance(backbone.default_estimator(), MaskedEstimator):
        assert ((lp.count >= 1) & (lp.count <= n)).all()
    else:
        assert (lp.count == n).all()
    assert (lp.total < 0).all()


def test_a_pair_dpo_step_starts_at_the_saddle_value_and_lowers_the_loss(folder, backbone, tmp_path):
    """The same loss and estimator semantics on every backbone: at policy == reference the `sum` loss
    is exactly 2·log 2, and a few optimizer steps on one batch lower it (both margins grow)."""
    from hermesflow.data import read_homologous
    from hermesflow.prefs import CaptionPair, ImagePair, Preference
    from hermesflow.train import Example, PolicyLogps
    from hermesflow.world.build import write_world

    write_world(tmp_path / "data", 2, seed=0, split="train", image_size=max(32, backbone.image_size // 32 * 32))
    records = read_homologous(tmp_path / "data").records
    drawn = backbone.generate([r.caption for r in records], 2, GenerationConfig(steps=2, seed=0)).tolist()
    examples = [Example(r, Preference(r.id, 0, r.caption, CaptionPair(r.caption, records[1 - i].caption, 1.0, 0.0, "initial"),
                                      ImagePair(tuple(drawn[2 * i]), tuple(drawn[2 * i + 1]), 1.0, 0.0, "initial")), 100 + i)
                for i, r in enumerate(records)]
    model = load_backbone(folder)
    policy = PolicyLogps(model, ("und", "gen"), model.default_estimator())
    with torch.no_grad():
        ref = {b: (c.total, r.total) for b, (c, r) in policy(examples).items()}
    loss_fn = PairDPOLoss("sum", beta_und=1.0, beta_gen=1.0)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)  # small: the tiny models' two caption pairs pull against each other
    losses = []
    for _ in range(3):
        out = loss_fn(**{b: BranchLogps(c.total, r.total, *ref[b]) for b, (c, r) in policy(examples).items()})
        losses.append(out.loss.mean().item())
        opt.zero_grad()
        out.loss.mean().backward()
        opt.step()
    assert losses[0] == pytest.approx(2 * np.log(2), abs=1e-5)
    assert losses[-1] < losses[0] - 1e-3, losses
