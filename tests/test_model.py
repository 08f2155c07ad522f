"""The built-in unified model: omni-attention, log-probabilities, decoding, saving, bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hermesflow.backbones import GenerationConfig, MaskedEstimator
from hermesflow.backbones.maskgit import cfg_logits, draw_masks
from hermesflow.errors import UsageError
from hermesflow.testbed.model import UnifiedConfig, UnifiedModel
from hermesflow.testbed.tokenizers import ImageTokenizer
from hermesflow.world import Obj, Scene, render
from hermesflow.world.build import world_records


@pytest.fixture(scope="module")
def model() -> UnifiedModel:
    torch.manual_seed(0)
    return UnifiedModel(UnifiedConfig(d_model=32, n_layers=2, n_heads=2)).eval()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.stack([image for _, image in world_records(6, seed=0, split="eval")])


def test_image_tokenizer_roundtrip_is_exact_on_2000_eval_images():
    tok = ImageTokenizer()
    records = list(world_records(2000, seed=7, split="eval"))
    images = np.stack([image for _, image in records])
    codes = tok.encode(images)
    assert codes.shape == (2000, 16) and codes.max() < tok.codebook_size
    assert np.array_equal(tok.decode(codes), images)
    assert all(tok.tokens_of(Scene.from_json(r["scene"])) == list(c) for (r, _), c in zip(records, codes))


def test_text_positions_ignore_later_image_tokens_and_image_positions_see_each_other(model):
    prompt = [model.encode_text("a red circle")]
    codes = torch.zeros(1, 16, dtype=torch.long)
    changed = codes.clone()
    changed[0, 9] = 5
    out = [model.net(*model.t2i_batch(prompt, c))[0][0] for c in (codes, changed)]
    s = model.t2i_image_start
    assert torch.equal(out[0][:s], out[1][:s])  # prompt and [SOI] come before the image: causal
    differs = (out[0][s : s + 16] - out[1][s : s + 16]).abs().amax(-1) > 0
    assert differs.all()  # every image position, earlier ones too, sees token 9


def test_understanding_text_is_causal(model):
    ids = model.encode_text("a photo of a red circle")
    codes = torch.zeros(1, 16, dtype=torch.long)
    a = model.net(*model.mmu_batch(codes, [ids]))[0][0]
    b = model.net(*model.mmu_batch(codes, [ids[:-1] + [model.text.ids["square"]]]))[0][0]
    last = model.mmu_text_start + len(ids) - 1
    assert torch.equal(a[:last], b[:last]) and not torch.equal(a[last], b[last])


def test_caption_logprob_equals_a_naive_per_token_loop(model, images):
    captions = ["a photo of a red circle", "two squares"]
    codes = model.prepare_images(images[:2])
    fast = model.caption_logps(codes, captions).total
    for i, caption in enumerate(captions):
        target = model.encode_text(caption) + [model.text.eos]
        total = 0.0
        for j, token in enumerate(target):  # one forward per token, on the prefix alone
            tokens, mask = model.mmu_batch(codes[i : i + 1], [target[:j]])
            end = model.mmu_text_start + j
            logits = model.net(tokens[:, :end], mask[:, :, :end, :end])[0]
            total += F.log_softmax(logits[0, -1], -1)[token].item()
        assert fast[i].item() == pytest.approx(total, abs=1e-4)


def test_image_logprob_is_repeatable_and_has_zero_margin_against_a_copy(model):
    prompts = ["a red circle", "two squares", "a blue triangle"]
    tokens = model.generate(prompts, 1, GenerationConfig(steps=4, seed=1))
    seeds, k3 = [11, 12, 13], MaskedEstimator(samples=3)
    a = model.image_logps(prompts, tokens, k3, seeds).total
    assert torch.equal(a, model.image_logps(prompts, tokens, k3, seeds).total)
    ref = copy.deepcopy(model)
    assert torch.equal(a - ref.image_logps(prompts, tokens, k3, seeds).total, torch.zeros(3))
    assert not torch.equal(a, model.image_logps(prompts, tokens, k3, [1, 2, 3]).total)


def test_shared_seeds_give_shared_masks(model):
    m1, r1 = draw_masks([5, 5, 6], 4, 16)
    assert torch.equal(m1[0], m1[1]) and not torch.equal(m1[0], m1[2])
    assert ((m1.sum(-1) >= 1) & (m1.sum(-1) <= 16)).all()
    assert torch.allclose(r1, m1.float().mean(-1))


def test_guidance_zero_ignores_the_unconditional_branch(model):
    plain = model.generate(["a red circle", "four triangles"], 3, GenerationConfig(steps=5, guidance=0.0, seed=4))
    cond = torch.randn(2, 16, 19)
    assert torch.equal(cfg_logits(cond, torch.randn(2, 16, 19), 0.0), cond)
    rows = []
    original = model._guided_logits

    def spy(context, codes, guidance):
        rows.append(context[1].shape[0])
        return original(context, codes, guidance)

    model._guided_logits = spy
    try:
        again = model.generate(["a red circle", "four triangles"], 3, GenerationConfig(steps=5, guidance=0.0, seed=4))
        model.generate(["a red circle", "four triangles"], 3, GenerationConfig(steps=5, guidance=3.0, seed=4))
    finally:
        del model._guided_logits
    assert torch.equal(plain, again)
    assert rows == [6] * 5 + [12] * 5  # prompts x n in one batch per step; guidance adds the empty prompts
    guided = model.generate(["a red circle", "four triangles"], 3, GenerationConfig(steps=5, guidance=3.0, seed=4))
    assert guided.shape == plain.shape and not torch.equal(guided, plain)


def test_cached_prompt_gives_the_logits_of_the_full_sequence(model):
    prompts = [model.encode_text("a red circle"), model.encode_text("two squares to the left of a circle"), []]
    codes = torch.tensor([[-1] * 8 + [0] * 8, [3] * 16, [-1] * 16])
    full = model.image_logits(*model.t2i_batch(prompts, codes))
    cached = model._guided_logits(model._prompt_context(prompts, 0.0), codes, 0.0)
    assert torch.allclose(full, cached, atol=1e-5)
    cond, uncond = full[:2], model.image_logits(*model.t2i_batch([[], []], codes[:2]))
    guided = model._guided_logits(model._prompt_context(prompts[:2], 2.0), codes[:2], 2.0)
    assert torch.allclose(guided, cfg_logits(cond, uncond, 2.0), atol=1e-4)


def test_generation_is_seeded_and_fills_every_cell(model):
    a = model.generate(["a red circle"], 4, GenerationConfig(steps=6, seed=9))
    assert torch.equal(a, model.generate(["a red circle"], 4, GenerationConfig(steps=6, seed=9)))
    assert a.shape == (4, 16) and (a >= 0).all() and (a < 19).all()


def test_kv_cache_sampling_equals_full_recomputation(model, images):
    codes, sampled, greedy = model.prepare_images(images[:3]), GenerationConfig(temperature=1.0, seed=3), GenerationConfig(temperature=0)
    assert model.sample_captions(codes, 2, sampled) == model.sample_captions(codes, 2, sampled, use_cache=False)
    assert model.sample_captions(codes, 1, greedy) == model.sample_captions(codes, 1, greedy, use_cache=False)


def test_answer_picks_the_most_likely_choice(model, images):
    questions, choices = ["is there a circle?", "what color is the square?"], [["yes", "no"], ["red", "green", "blue"]]
    picked = model.answer(model.prepare_images(images[:2]), questions, choices)
    for i, (q, options) in enumerate(zip(questions, choices)):
        prefix = model.encode_text(q) + [model.text.ans]
        codes = model.prepare_images(images[i : i + 1]).repeat(len(options), 1)
        scores = model.text_logprob(codes, [prefix] * len(options), [model.encode_text(c) + [model.text.eos] for c in options]).total
        assert picked[i] == options[int(scores.argmax())]


def test_save_then_load_is_bitwise_identical(model, images, tmp_path):
    model.save_pretrained(tmp_path / "m")
    loaded = UnifiedModel.from_pretrained(tmp_path / "m")
    for (k, a), (_, b) in zip(model.net.state_dict().items(), loaded.net.state_dict().items()):
        assert torch.equal(a, b), k
    codes = model.prepare_images(images[:2])
    assert torch.equal(model.caption_logps(codes, ["a red circle"] * 2).total, loaded.caption_logps(codes, ["a red circle"] * 2).total)
    assert model.fingerprint() == loaded.fingerprint()


def test_unknown_words_and_wrong_shapes_raise_clear_errors(model, images):
    with pytest.raises(UsageError, match=r"unknown words \['hexagon'\]"):
        model.generate(["a red hexagon"], 1, GenerationConfig())
    with pytest.raises(UsageError, match="unknown words"):
        model.caption_logps(model.prepare_images(images[:1]), ["a zebra"])
    with pytest.raises(UsageError, match=r"\(H, W, 3\) uint8"):
        model.prepare_images(np.zeros((1, 32, 32), np.uint8))
    with pytest.raises(UsageError, match=r"shape \(N, 16\)"):
        model.image_logps(["a red circle"], torch.zeros(1, 9, dtype=torch.long), MaskedEstimator(), [0])
    with pytest.raises(UsageError, match="limit"):
        model.generate([" and ".join(["a red circle"] * 6)], 1, GenerationConfig())
    with pytest.raises(UsageError, match="3 images, 1 questions"):
        model.answer(model.prepare_images(images[:3]), ["is there a circle?"], [["yes", "no"]])


def test_loading_a_bad_model_folder_names_the_problem(model, tmp_path):
    with pytest.raises(UsageError, match="config.json not found"):
        UnifiedModel.from_pretrained(tmp_path)
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UsageError, match="cannot be read"):
        UnifiedModel.from_pretrained(tmp_path / "m")
    model.save_pretrained(tmp_path / "m2")
    (tmp_path / "m2" / "config.json").write_text('{"model_type": "hermesflow-unified", "d_model": 64, "n_layers": 2, "n_heads": 2}')
    with pytest.raises(UsageError, match="shape"):
        UnifiedModel.from_pretrained(tmp_path / "m2")


def test_blank_image_is_all_empty_tokens():
    tok = ImageTokenizer()
    assert tok.encode(np.zeros((1, 32, 32, 3), np.uint8)).tolist() == [[0] * 16]
    assert np.array_equal(tok.decode(np.array([tok.tokens_of(Scene((Obj("circle", "red", 1, 2),)))])), render(Scene((Obj("circle", "red", 1, 2),)))[None])


def test_shared_image_prefix_gives_the_same_log_probs(model, images):
    codes = model.prepare_images(images[:3])
    owners = [0, 0, 2, 1, 2]
    prefixes = [model.encode_text(q) + [model.text.ans] for q in ["is there a circle?"] * 2 + ["what color is the square?"] * 3]
    targets = [model.encode_text(a) + [model.text.eos] for a in ["yes", "no", "red", "left of", "blue"]]
    full = model.text_logprob(codes[owners], prefixes, targets).total
    assert torch.allclose(model.text_logprob_shared_image(codes, owners, prefixes, targets), full, atol=1e-4)


def test_the_world_drawn_larger_fits_and_reads_as_the_same_tokens(model, tmp_path):
    from hermesflow.data import check_fit, read_homologous
    from hermesflow.world.build import write_world

    write_world(tmp_path / "w64", n=12, seed=1, split="train", image_size=64)
    write_world(tmp_path / "w32", n=12, seed=1, split="train")
    big, small = read_homologous(tmp_path / "w64"), read_homologous(tmp_path / "w32")
    check_fit(model, big)  # no error
    images = lambda d: [r.load_image() for r in d.records]  # noqa: E731
    assert images(big)[0].shape == (64, 64, 3)
    assert torch.equal(model.prepare_images(images(big)), model.prepare_images(images(small)))


def test_fit_problems_name_what_the_model_cannot_represent(model):
    rng = np.random.default_rng(0)
    assert model.fit_problems(np.zeros((32, 32, 3), np.uint8), ["a red circle"]) == []
    noise = model.fit_problems(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), [])
    assert len(noise) == 1 and "cannot represent this image" in noise[0]
    assert "multiple of 32" in model.fit_problems(np.zeros((50, 70, 3), np.uint8), [])[0]
    assert "limit" in model.fit_problems(None, [" ".join(["red"] * 15)])[0]
    assert model.fit_problems(None, ["a?"]) == []  # two tokens, as the tokenizer counts them


def test_pretraining_caption_noise_swaps_one_attribute_of_that_share_of_captions():
    import random

    from hermesflow.testbed.pretrain import noisy_caption
    from hermesflow.world.prompts import parse_prompt, sample_scene

    rng = random.Random(0)
    specs = [sample_scene(c, rng)[1] for c in ("counting", "colors", "position", "color_attr") for _ in range(50)]
    clean = [parse_prompt(noisy_caption(s, random.Random(i), 0.0)) for i, s in enumerate(specs)]
    assert clean == specs  # no noise: the caption says what the scene holds, in some phrasing
    noisy = [parse_prompt(noisy_caption(s, random.Random(i), 1.0)) for i, s in enumerate(specs)]
    for spec, said in zip(specs, noisy):
        assert said.category == spec.category and said != spec
        differing = sum(a != b for a, b in zip(spec.objects, said.objects)) + (spec.count != said.count) + (spec.relation != said.relation)
        assert differing == 1
    some = [parse_prompt(noisy_caption(s, random.Random(i), 0.3)) != s for i, s in enumerate(specs)]
    assert 0.15 < sum(some) / len(some) < 0.45


def test_a_long_call_advances_the_open_phases_bar_and_nothing_without_one(model):
    from hermesflow.progress import phase

    gen = GenerationConfig(steps=3, seed=0)
    with phase("draw 2 images") as bar:  # evaluation's bar inside one batched call: each decoding step counted
        inside = model.generate(["a red circle", "a blue square"], 1, gen)
        assert (bar.n, bar.total, bar.unit) == (3, 3, "step")
    assert torch.equal(inside, model.generate(["a red circle", "a blue square"], 1, gen))  # counting changes no draw
