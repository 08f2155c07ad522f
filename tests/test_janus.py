"""The Janus adapter on a tiny random Janus: each protocol method against a naive recomputation
(full forward passes, no cache, no padding, sequences built from the documented format), plus
saving, dtypes, devices, LoRA and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import JANUS_CHAT_TEMPLATE, make_tiny_janus, tiny_janus_bpe_tokenizer
from tokenizers import decoders
from transformers import AutoProcessor, JanusForConditionalGeneration, JanusProcessor

from hermesflow.backbones import ExactEstimator, GenerationConfig, MaskedEstimator, load_backbone
from hermesflow.backbones.janus import CAPTION_QUESTION, JanusBackbone, sample_token
from hermesflow.errors import UsageError
from hermesflow.world.build import world_records

EXACT = ExactEstimator()
N_IMAGE_TOKENS = 16  # the tiny Janus: 64px images, 16px patches, a 4x4 VQ grid
CODEBOOK = 64


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_tiny_janus(tmp_path_factory.mktemp("janus") / "tiny")


@pytest.fixture(scope="module")
def backbone(folder) -> JanusBackbone:
    return load_backbone(folder)


@pytest.fixture(scope="module")
def world() -> tuple[list[dict], list[np.ndarray]]:
    pairs = list(world_records(4, seed=0, split="eval"))
    return [r for r, _ in pairs], [image for _, image in pairs]


def random_tokens(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, CODEBOOK, (n, N_IMAGE_TOKENS), generator=torch.Generator().manual_seed(seed))


# ----- sequences written out from the documented format, and naive log-probs and samplers --------


def special(b: JanusBackbone, name: str) -> int:
    return b.tokenizer.convert_tokens_to_ids(getattr(b.tokenizer, name))


# The official understanding prompt (deepseek-ai/Janus: conversation.py's "deepseek" template, with
# processing_vlm.py's default system prompt), written out here rather than taken from the adapter.
OFFICIAL_SYSTEM_PROMPT = ("You are a helpful language and vision assistant. You are able to understand the visual content that "
                          "the user provides, and assist the user with a variety of tasks using natural language.")


def official_understanding_text(question: str, system: bool = True) -> str:
    return (f"{OFFICIAL_SYSTEM_PROMPT}\n\n" if system else "") + f"<|User|>: <image_placeholder>\n{question}\n\n<|Assistant|>:"


def understanding_ids(b: JanusBackbone, question: str) -> list[int]:
    tok = b.tokenizer
    ids = [tok.bos_token_id] + tok.encode(official_understanding_text(question), add_special_tokens=False)
    at = ids.index(special(b, "image_token"))
    block = [special(b, "boi_token")] + [special(b, "image_token")] * N_IMAGE_TOKENS + [special(b, "eoi_token")]
    return ids[:at] + block + ids[at + 1 :]


def answer_ids(b: JanusBackbone, answer: str) -> list[int]:
    return b.tokenizer.encode(" " + answer, add_special_tokens=False) + [b.tokenizer.eos_token_id]


def generation_ids(b: JanusBackbone, prompt: str) -> list[int]:
    tok = b.tokenizer
    ids = [tok.bos_token_id] + tok.encode(f"<|User|>: {prompt}\n\n<|Assistant|>:", add_special_tokens=False)
    return ids + [special(b, "boi_token")]


def unconditional_ids(b: JanusBackbone, prompt: str) -> list[int]:
    ids = generation_ids(b, prompt)
    return ids[:1] + [b.tokenizer.pad_token_id] * (len(ids) - 2) + ids[-1:]


@torch.no_grad()
def naive_answer_logp(b: JanusBackbone, pixels: torch.Tensor, question: str, answer: str) -> float:
    """Σ log π(answer token | everything before), one full forward of transformers' own Janus
    (its placeholder scatter, not the adapter's) per token."""
    prompt, target = understanding_ids(b, question), answer_ids(b, answer)
    total = 0.0
    for j, token in enumerate(target):
        ids = torch.tensor([prompt + target[:j]])
        logits = b.model(input_ids=ids, pixel_values=pixels[None]).logits[0, -1]
        total += float(logits.float().log_softmax(-1)[token])
    return total


@torch.no_grad()
def naive_image_logits(b: JanusBackbone, rows: list[list[int]], tokens: torch.Tensor) -> torch.Tensor:
    """Generation-head logits after each row's prompt and `tokens` (R, j): one full forward, no cache."""
    model = b.model
    embeds = torch.cat([model.get_input_embeddings()(torch.tensor(rows)),
                        model.prepare_embeddings_for_image_generation(tokens)], dim=1)
    hidden = model.model.language_model(inputs_embeds=embeds).last_hidden_state[:, -1]
    return model.model.generation_head(hidden).float()


def naive_image_logp(b: JanusBackbone, prompt_ids: list[int], tokens: torch.Tensor) -> float:
    return sum(float(naive_image_logits(b, [prompt_ids], tokens[None, :j]).log_softmax(-1)[0, tokens[j]])
               for j in range(len(tokens)))


def naive_generate(b: JanusBackbone, prompt: str, n: int, gen: GenerationConfig) -> torch.Tensor:
    """The n samples of one prompt with the whole sequence recomputed at every step."""
    g = torch.Generator().manual_seed(gen.seed)
    cond, uncond = [generation_ids(b, prompt)] * n, [unconditional_ids(b, prompt)] * n
    tokens = torch.zeros(n, 0, dtype=torch.long)
    for _ in range(N_IMAGE_TOKENS):
        logits = naive_image_logits(b, cond, tokens)
        if gen.guidance:
            logits = (1 + gen.guidance) * logits - gen.guidance * naive_image_logits(b, uncond, tokens)
        tokens = torch.cat([tokens, sample_token(logits, gen.temperature, gen.top_k, g)[:, None]], dim=1)
    return tokens


@torch.no_grad()
def naive_greedy_caption(b: JanusBackbone, pixels: torch.Tensor, budget: int) -> str:
    prompt, out, eos = understanding_ids(b, CAPTION_QUESTION), [], b.tokenizer.eos_token_id
    for _ in range(budget):
        logits = b.model(input_ids=torch.tensor([prompt + out]), pixel_values=pixels[None]).logits[0, -1]
        out.append(int(logits.argmax()))
        if out[-1] == eos:
            out.pop()
            break
    return b.tokenizer.decode(out, skip_special_tokens=True).strip()


# ----- loading, images, decoding ------------------------------------------------------------------


def test_tiny_folder_loads_through_the_registry_and_as_plain_janus(folder, backbone):
    assert isinstance(backbone, JanusBackbone) and backbone.model_type == "janus"
    assert backbone.image_size == 64 and backbone.n_image_tokens == N_IMAGE_TOKENS
    assert backbone.default_estimator() == EXACT
    plain = JanusForConditionalGeneration.from_pretrained(folder, local_files_only=True)
    assert isinstance(plain, JanusForConditionalGeneration)
    assert AutoProcessor.from_pretrained(folder, local_files_only=True).num_image_tokens == N_IMAGE_TOKENS


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory) -> Path:
    """A tiny Janus whose tokenizer is byte-level BPE with Janus-Pro's special tokens, as the real one."""
    return make_tiny_janus(tmp_path_factory.mktemp("janus-bpe") / "tiny", tokenizer=tiny_janus_bpe_tokenizer())


def test_prompts_equal_the_official_format_and_transformers_processor_token_for_token(bpe_folder, world):
    backbone = load_backbone(bpe_folder)
    processor = JanusProcessor.from_pretrained(bpe_folder, local_files_only=True)
    assert processor.use_default_system_prompt and processor.chat_template == JANUS_CHAT_TEMPLATE
    records, images = world
    tok = backbone.tokenizer
    for record, image in zip(records, images):
        question = record["qa"][0]["question"]
        for text in (question, CAPTION_QUESTION):
            turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            ids = processor(text=processor.apply_chat_template(turn, add_generation_prompt=True), images=[image])["input_ids"][0]
            assert backbone._understanding_ids(text) == ids.tolist()
            official = tok.encode(official_understanding_text(text))  # <bos> added by the tokenizer, as Janus-Pro's
            block = [backbone.tokens.boi] + [backbone.tokens.image] * N_IMAGE_TOKENS + [backbone.tokens.eoi]
            at = official.index(backbone.tokens.image)
            assert backbone._understanding_ids(text) == official[:at] + block + official[at + 1 :]
        turn = [{"role": "user", "content": [{"type": "text", "text": record["caption"]}]}]
        ids = processor(text=processor.apply_chat_template(turn, add_generation_prompt=True), generation_mode="image")["input_ids"][0]
        assert backbone._generation_ids(record["caption"]) == ids.tolist()  # no system prompt for generation


def test_a_folder_that_turns_the_system_prompt_off_is_followed(tmp_path):
    folder = make_tiny_janus(tmp_path / "plain", tokenizer=tiny_janus_bpe_tokenizer(), system_prompt=False)
    backbone = load_backbone(folder)
    expected = backbone.tokenizer.encode(official_understanding_text("what is it?", system=False))
    assert len(backbone._understanding_ids("what is it?")) == len(expected) - 1 + N_IMAGE_TOKENS + 2
    assert "helpful" not in backbone.tokenizer.decode(backbone._understanding_ids("what is it?"))


def test_a_saved_round_keeps_the_folders_prompt_format(bpe_folder, tmp_path):
    backbone = load_backbone(bpe_folder)
    backbone.save_pretrained(tmp_path / "saved")
    processor = JanusProcessor.from_pretrained(tmp_path / "saved", local_files_only=True)
    assert processor.use_default_system_prompt and processor.chat_template == JANUS_CHAT_TEMPLATE
    assert load_backbone(tmp_path / "saved")._understanding_ids("what is it?") == backbone._understanding_ids("what is it?")


def test_a_tokenizer_that_runs_words_together_is_refused_in_one_line(tmp_path):
    broken = tiny_janus_bpe_tokenizer()
    broken.backend_tokenizer.decoder = decoders.Fuse()  # what a misread byte-level tokenizer does to spaces
    folder = make_tiny_janus(tmp_path / "broken", tokenizer=broken)
    with pytest.raises(UsageError, match=r"its tokenizer decodes 'a b\\n\\nc' as .*install transformers>=5.25"):
        load_backbone(folder)


def test_untied_weights_stay_untied_when_the_config_does_not_say(folder, tmp_path):
    shutil.copytree(folder, tmp_path / "untold")
    path = tmp_path / "untold" / "config.json"
    config = json.loads(path.read_text())
    config.pop("tie_word_embeddings", None)
    config["text_config"].pop("tie_word_embeddings", None)
    path.write_text(json.dumps(config))
    backbone = load_backbone(tmp_path / "untold")
    head = backbone.model.lm_head.weight.detach().clone()
    assert not torch.equal(head, backbone.model.get_input_embeddings().weight)
    backbone.model.tie_weights()  # e.g. PEFT or accelerate calls it; it must not copy the embedding over lm_head
    assert torch.equal(backbone.model.lm_head.weight, head)


def test_prepare_images_takes_any_size_and_matches_janus_image_processor(backbone):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (50, 70, 3), dtype=np.uint8), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
              rng.integers(0, 256, (90, 40, 3), dtype=np.uint8)]
    pixels = backbone.prepare_images(images)
    assert pixels.shape == (3, 3, 64, 64) and pixels.dtype == torch.float32
    # Janus pads the short side with the mean colour, which normalises to about 0 (127/255 vs 0.5).
    assert pixels[0, :, :2].abs().max() < 0.01 and pixels[2, :, :, :2].abs().max() < 0.01
    expected = backbone.image_processor(images=[images[1]], return_tensors="pt")["pixel_values"]
    assert torch.equal(pixels[1:2], expected)


def test_prepare_images_rejects_non_rgb(backbone):
    with pytest.raises(UsageError, match=r"\(H, W, 3\) uint8"):
        backbone.prepare_images([np.zeros((32, 32), np.uint8)])
    with pytest.raises(UsageError, match="float32"):
        backbone.prepare_images([np.zeros((32, 32, 3), np.float32)])


HUB_PREPROCESSOR_CONFIG = """{"do_normalize": true, "do_rescale": true, "do_resize": true, "image_mean": [0.5, 0.5, 0.5],
"image_processor_type": "JanusImageProcessor", "image_std": [0.5, 0.5, 0.5], "min_size": 14,
"processor_class": "JanusProcessor", "resample": 3, "rescale_factor": 0.00392156862745098,
"size": {"height": 64, "width": 64}}"""


@pytest.mark.parametrize("layout", ["no processor config", "hub preprocessor_config.json"])
def test_other_processor_layouts_prepare_the_same_pixels(folder, backbone, tmp_path, world, layout):
    """Without a processor config the adapter uses SigLIP's mean and std at the encoder's side; the
    hub's Janus folders keep the image processor in its own preprocessor_config.json."""
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    (other / "processor_config.json").unlink()
    if layout.startswith("hub"):
        (other / "preprocessor_config.json").write_text(HUB_PREPROCESSOR_CONFIG)
    images = world[1][:2] + [np.zeros((50, 70, 3), np.uint8)]
    assert torch.equal(load_backbone(other).prepare_images(images), backbone.prepare_images(images))


def test_decode_is_uint8_and_clamps_the_vq_decoders_pixels(backbone):
    tokens = random_tokens(3)
    images = backbone.decode(tokens)
    assert images.shape == (3, 64, 64, 3) and images.dtype == np.uint8
    with torch.no_grad():
        raw = backbone.model.decode_image_tokens(tokens)
    expected = ((raw * 0.5 + 0.5) * 255).clamp(0, 255).to(torch.uint8).numpy()
    assert np.array_equal(images, expected)
    assert backbone.prepare_generated(tokens).shape == (3, 3, 64, 64)


def test_bad_image_tokens_are_named(backbone):
    with pytest.raises(UsageError, match=r"\(N, 16\)"):
        backbone.decode(torch.zeros(2, 9, dtype=torch.long))
    with pytest.raises(UsageError, match=r"\[0, 64\)"):
        backbone.decode(torch.full((1, 16), 64))


# ----- understanding ------------------------------------------------------------------------------


def test_caption_logps_equal_a_naive_per_token_recomputation(backbone, world):
    records, images = world
    pixels = backbone.prepare_images(images)
    captions = [r["caption"] for r in records]
    captions[1] = "a red circle"  # a short one next to long ones: right padding must not leak
    logps = backbone.caption_logps(pixels, captions)
    assert logps.total.shape == (4,) and logps.total.dtype == torch.float32
    assert logps.count.tolist() == [len(answer_ids(backbone, c)) for c in captions]  # the caption's tokens + <eos>
    naive = [naive_answer_logp(backbone, p, CAPTION_QUESTION, c) for p, c in zip(pixels, captions)]
    torch.testing.assert_close(logps.total, torch.tensor(naive), atol=1e-4, rtol=1e-5)


def test_answer_picks_the_choice_with_the_highest_naive_likelihood(backbone, world):
    records, images = world
    pixels = backbone.prepare_images(images)
    qas = [r["qa"][0] for r in records]
    questions, choices = [q["question"] for q in qas], [q["choices"] for q in qas]
    answers = backbone.answer(pixels, questions, choices)
    for p, q, options, chosen in zip(pixels, questions, choices, answers):
        scores = [naive_answer_logp(backbone, p, q, c) for c in options]
        assert chosen == options[int(np.argmax(scores))]
    assert backbone.answer(pixels, questions, choices, batch_size=1) == answers


def test_answer_rejects_mismatched_lengths(backbone, world):
    pixels = backbone.prepare_images(world[1][:2])
    with pytest.raises(UsageError, match="2 images, 1 questions"):
        backbone.answer(pixels, ["is there a circle?"], [["yes", "no"]])


def test_greedy_captions_equal_a_naive_uncached_loop(backbone, world, monkeypatch):
    monkeypatch.setattr(backbone, "caption_max_tokens", 10)
    pixels = backbone.prepare_images(world[1][:2])
    captions = backbone.sample_captions(pixels, 2, GenerationConfig(temperature=0))
    assert [len(c) for c in captions] == [2, 2]
    for p, (first, second) in zip(pixels, captions):
        assert first == second == naive_greedy_caption(backbone, p, 10)


def test_sampled_captions_are_reproducible_for_a_seed(backbone, world, monkeypatch):
    monkeypatch.setattr(backbone, "caption_max_tokens", 12)
    pixels = backbone.prepare_images(world[1][:2])
    sample = lambda seed: backbone.sample_captions(pixels, 3, GenerationConfig(temperature=1.0, top_k=20, seed=seed))
    first = sample(0)
    assert len(first) == 2 and all(len(c) == 3 and all(isinstance(s, str) for s in c) for c in first)
    assert sample(0) == first and sample(1) != first


def test_an_images_captions_share_its_prompt_pass_and_change_nothing(backbone, world, monkeypatch):
    """n captions of an image run the image and prompt once (their keys and values repeated n times):
    the same captions, draw for draw, as n copies of the image each sampled once."""
    monkeypatch.setattr(backbone, "caption_max_tokens", 12)
    pixels = backbone.prepare_images(world[1][:2])
    gen = GenerationConfig(temperature=1.0, seed=5)
    shared = backbone.sample_captions(pixels, 3, gen)
    copies = backbone.sample_captions(pixels.repeat_interleave(3, dim=0), 1, gen)
    assert [c for row in shared for c in row] == [c for [c] in copies]


# ----- generation ---------------------------------------------------------------------------------


def test_image_logps_equal_a_naive_per_token_recomputation(backbone, world):
    prompts = [world[0][0]["caption"], "a red circle", ""]  # different lengths: left padding; "" = unconditional
    tokens = random_tokens(3)
    logps = backbone.image_logps(prompts, tokens, EXACT, seeds=[0, 1, 2])
    assert logps.total.shape == (3,) and logps.count.tolist() == [N_IMAGE_TOKENS] * 3
    rows = [generation_ids(backbone, prompts[0]), generation_ids(backbone, prompts[1]), unconditional_ids(backbone, "")]
    naive = [naive_image_logp(backbone, r, t) for r, t in zip(rows, tokens)]
    torch.testing.assert_close(logps.total, torch.tensor(naive), atol=1e-4, rtol=1e-5)


def test_image_logps_refuse_a_masked_estimator(backbone):
    with pytest.raises(UsageError, match="exact"):
        backbone.image_logps(["a red circle"], random_tokens(1), MaskedEstimator(), seeds=[0])


@pytest.mark.parametrize("gen", [
    GenerationConfig(guidance=0.0, temperature=0.0),
    GenerationConfig(guidance=0.0, temperature=1.0, top_k=20, seed=3),
    GenerationConfig(guidance=2.0, temperature=1.0, seed=5),
    GenerationConfig(guidance=3.0, temperature=0.0),
], ids=["greedy", "sampled-top-k", "guided-sampled", "guided-greedy"])
def test_cached_generation_equals_a_naive_uncached_loop(backbone, world, gen):
    prompts = [world[0][0]["caption"], "a red circle"]  # different lengths: left padding in one batch
    tokens = backbone.generate(prompts, 2, gen)
    assert tokens.shape == (4, N_IMAGE_TOKENS) and tokens.dtype == torch.long
    assert 0 <= int(tokens.min()) and int(tokens.max()) < CODEBOOK
    # The sampler draws for the whole batch at once, so sampled rows are compared prompt by prompt.
    for i, prompt in enumerate(prompts):
        alone = backbone.generate([prompt], 2, gen)
        assert torch.equal(alone, naive_generate(backbone, prompt, 2, gen))
        if gen.temperature == 0:
            assert torch.equal(tokens[2 * i : 2 * i + 2], alone)


def test_guidance_changes_the_samples_and_a_seed_fixes_them(backbone):
    prompts = ["a red circle", "two blue squares"]
    guided = backbone.generate(prompts, 2, GenerationConfig(guidance=2.0, seed=0))
    assert torch.equal(backbone.generate(prompts, 2, GenerationConfig(guidance=2.0, seed=0)), guided)
    assert not torch.equal(backbone.generate(prompts, 2, GenerationConfig(guidance=2.0, seed=1)), guided)
    assert not torch.equal(backbone.generate(prompts, 2, GenerationConfig(guidance=0.0, seed=0)), guided)


# ----- saving, dtypes, devices --------------------------------------------------------------------


def test_save_then_load_gives_identical_log_probs(backbone, world, tmp_path):
    records, images = world
    pixels, captions, tokens = backbone.prepare_images(images), [r["caption"] for r in records], random_tokens(4)
    backbone.save_pretrained(tmp_path / "saved")
    again = load_backbone(tmp_path / "saved")
    assert again.fingerprint() == backbone.fingerprint()
    assert torch.equal(again.caption_logps(pixels, captions).total, backbone.caption_logps(pixels, captions).total)
    assert torch.equal(again.image_logps(captions, tokens, EXACT, [0] * 4).total,
                       backbone.image_logps(captions, tokens, EXACT, [0] * 4).total)


def test_bf16_agrees_with_fp32_within_a_tenth_of_a_nat_per_token(folder, backbone, world):
    records, images = world
    captions, tokens = [r["caption"] for r in records], random_tokens(4)
    half = load_backbone(folder, dtype="bf16")
    pixels = half.prepare_images(images)
    assert pixels.dtype == torch.bfloat16 and half.dtype == torch.bfloat16
    for full_lp, half_lp in [
        (backbone.caption_logps(backbone.prepare_images(images), captions), half.caption_logps(pixels, captions)),
        (backbone.image_logps(captions, tokens, EXACT, [0] * 4), half.image_logps(captions, tokens, EXACT, [0] * 4)),
    ]:
        assert half_lp.total.dtype == torch.float32
        assert (half_lp.mean() - full_lp.mean()).abs().max() < 0.1
    assert half.generate(["a red circle"], 2, GenerationConfig()).shape == (2, N_IMAGE_TOKENS)
    assert half.decode(tokens[:1]).dtype == np.uint8
    moved = load_backbone(folder).to(torch.bfloat16)  # a cast after loading is the same model
    assert moved.fingerprint() == half.fingerprint()


def test_meta_device_builds_every_tensor_on_the_models_device(folder, world):
    """On `meta` a tensor built without the model's device lands on the CPU and the first op that
    mixes it with the model fails, so this finds device bugs without a GPU. Methods that must read
    values back (answer, sample_captions, decode) cannot run on meta, and neither can the mask
    builder of transformers' sdpa attention (it reads the padding mask to pick a fast path): eager
    attention builds the same mask without reading it."""
    records, images = world
    meta = load_backbone(folder)
    meta.model.set_attn_implementation("eager")
    meta.to("meta")
    captions = [r["caption"] for r in records[:2]]
    pixels = meta.prepare_images(images[:2])
    assert pixels.is_meta
    logps = meta.caption_logps(pixels, captions)
    assert logps.total.is_meta and logps.count.is_meta and logps.total.shape == (2,)
    logps = meta.image_logps([captions[0], ""], random_tokens(2), EXACT, [0, 0])
    assert logps.total.is_meta and logps.count.is_meta
    tokens = meta.generate(captions, 2, GenerationConfig(guidance=2.0, temperature=0.0))
    assert tokens.is_meta and tokens.shape == (4, N_IMAGE_TOKENS)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA device; the meta-device test covers device placement on CPU machines")
def test_cuda_matches_cpu(folder, backbone, world):
    records, images = world
    cuda = load_backbone(folder).to("cuda")
    captions, tokens = [r["caption"] for r in records], random_tokens(4)
    torch.testing.assert_close(cuda.caption_logps(cuda.prepare_images(images), captions).total.cpu(),
                               backbone.caption_logps(backbone.prepare_images(images), captions).total,
                               atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(cuda.image_logps(captions, tokens, EXACT, [0] * 4).total.cpu(),
                               backbone.image_logps(captions, tokens, EXACT, [0] * 4).total, atol=1e-3, rtol=1e-4)
    assert cuda.generate(captions, 2, GenerationConfig()).device.type == "cuda"
    assert cuda.decode(tokens).shape == (4, 64, 64, 3)
    assert len(cuda.sample_captions(cuda.prepare_images(images), 2, GenerationConfig())) == 4


# ----- LoRA ---------------------------------------------------------------------------------------


def test_lora_trains_only_adapters_on_the_language_model_and_merges_into_a_plain_janus(folder, world, tmp_path):
    records, images = world
    model = load_backbone(folder)
    pixels, captions, tokens = model.prepare_images(images), [r["caption"] for r in records], random_tokens(4)

    def logps():
        return model.caption_logps(pixels, captions).total, model.image_logps(captions, tokens, EXACT, [0] * 4).total

    base = [t.detach() for t in logps()]
    model.add_lora(r=4, alpha=8)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and ".language_model." in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == {"q_proj", "k_proj", "v_proj", "o_proj"}

    with torch.no_grad():  # LoRA's B starts at zero; make the adapter do something
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(logps()[0].detach(), base[0])
    with torch.no_grad(), model.reference_context():
        reference = logps()
    assert torch.equal(reference[0], base[0]) and torch.equal(reference[1], base[1])

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    caption_lp, image_lp = logps()
    (-(caption_lp.sum() + image_lp.sum())).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable

    with torch.no_grad():
        trained = logps()
        model.merge_lora()
        assert not any("lora_" in n for n, _ in model.named_parameters())
        for merged, expected in zip(logps(), trained):
            torch.testing.assert_close(merged, expected, atol=1e-4, rtol=1e-5)
    model.save_pretrained(tmp_path / "merged")
    _, info = JanusForConditionalGeneration.from_pretrained(tmp_path / "merged", local_files_only=True,
                                                           output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    reloaded = load_backbone(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(reloaded.caption_logps(pixels, captions).total, trained[0], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(reloaded.image_logps(captions, tokens, EXACT, [0] * 4).total, trained[1],
                                   atol=1e-4, rtol=1e-5)


def test_save_refuses_an_unmerged_adapter(folder, tmp_path):
    model = load_backbone(folder)
    model.add_lora(r=2, alpha=4)
    with pytest.raises(UsageError, match="merge"):
        model.save_pretrained(tmp_path / "x")


# ----- what fits ----------------------------------------------------------------------------------


def test_every_world_record_fits(backbone, world):
    records, images = world
    for record, image in zip(records, images):
        qas = record["qa"]
        texts = [record["caption"]] + [q["question"] for q in qas] + [c for q in qas for c in q["choices"]]
        assert backbone.fit_problems(image, texts) == []


def test_fit_problems_name_each_text_that_cannot_be_represented(backbone):
    long = " ".join(["red circle"] * 60)
    problems = backbone.fit_problems(None, ["a red circle", long, "a zebra", "", "<image_placeholder> red"])
    assert len(problems) == 4
    assert "red circle red circle" in problems[0] and "120 tokens" in problems[0] and "context is 128" in problems[0]
    assert "'a zebra'" in problems[1] and "does not know" in problems[1]
    assert "empty" in problems[2] and "special tokens" in problems[3]
    assert backbone.fit_problems(np.zeros((10, 10), np.uint8), []) == [
        "image is uint8 (10, 10); expected an (H, W, 3) uint8 RGB image"]
    assert backbone.fit_problems(np.zeros((50, 70, 3), np.uint8), ["a red circle"]) == []


def test_empty_batches_give_empty_results(backbone):
    none = backbone.prepare_images([])
    assert none.shape == (0, 3, 64, 64)
    assert backbone.caption_logps(none, []).total.shape == (0,)
    assert backbone.image_logps([], torch.zeros(0, N_IMAGE_TOKENS, dtype=torch.long), EXACT, []).count.shape == (0,)
    assert backbone.generate([], 2, GenerationConfig()).shape == (0, N_IMAGE_TOKENS)
    assert backbone.sample_captions(none, 2, GenerationConfig()) == []
    assert backbone.answer(none, [], []) == []


def test_answering_runs_each_prompt_once_and_scores_every_choice_as_teacher_forcing_does(backbone, world):
    """The shared-prompt path (each image + question once, its choices on the cached keys) gives the
    log-probs of scoring each (question, choice) row alone, for questions and choices of any length."""
    _, images = world
    features = backbone._image_features(backbone.prepare_images(images[:3]))
    questions = ["is there a circle?", "where is the red square relative to the blue circle?", "how many triangles are there?"]
    choices = [["yes", "no"], ["left of", "right of", "above", "below"], ["one", "two", "three"]]
    with torch.no_grad():
        shared = backbone._choice_logps(features, questions, choices)
        owners = [i for i, options in enumerate(choices) for _ in options]
        alone = backbone._answer_logps(features[owners], [questions[i] for i in owners], [c for o in choices for c in o])
    torch.testing.assert_close(shared.total, alone.total, atol=1e-4, rtol=1e-5)
    assert torch.equal(shared.count, alone.count)


def test_guidance_defaults_to_janus_scale_5_unless_given(backbone):
    from hermesflow import config
    from hermesflow.recipes.run import settle
    from hermesflow.settings import RunConfig

    cfg = settle(config.build(RunConfig, out=Path("x")), backbone)
    assert cfg.curation.guidance == cfg.eval.eval_guidance == 4.0  # (1 + w)·cond − w·uncond: Janus's cfg_weight 5
    assert settle(config.build(RunConfig, out=Path("x"), guidance=1.0), backbone).curation.guidance == 1.0


def test_the_per_token_choice_score_takes_away_the_sums_pull_towards_short_options(bpe_folder, world):
    """Under a byte-level BPE tokenizer, options of more tokens collect more negative log-probs: summed,
    the short option wins however the model reads the image. Measured on the tiny BPE Janus (3 tokens
    against 12): the sum takes the short option 16 times of 16, the mean per token 0 of 16 (on random
    weights later tokens of a long option are easy, so neither score is neutral there)."""
    backbone = load_backbone(bpe_folder)
    _, images = world
    short, long = "a circle", "a red circle above a blue square and a green triangle"
    lengths = [len(backbone._answer_ids(c)) for c in (short, long)]
    assert lengths[0] * 3 < lengths[1]
    pixels = backbone.prepare_images(images).repeat(4, 1, 1, 1)
    questions = [q for q in ("what is in the image?", "what does it show?", "describe it.", "what shapes are there?")
                 for _ in images]
    choices = [[short, long] if i % 2 else [long, short] for i in range(len(questions))]
    picked = {score: [a == short for a in backbone.answer(pixels, questions, choices, score=score)] for score in ("sum", "mean")}
    assert sum(picked["sum"]) == len(questions)  # the sum always takes the shorter option
    assert sum(picked["mean"]) < len(questions)  # per token, the option's length no longer decides alone
    with pytest.raises(UsageError, match="choice score must be one of"):
        backbone.answer(pixels[:1], questions[:1], choices[:1], score="max")


def test_greedy_image_tokens_equal_transformers_janus_generate_in_image_mode(backbone):
    """Our sampling loop against transformers' own `JanusForConditionalGeneration.generate(generation_mode=
    "image")` at temperature 0, with guidance (its scale s is our 1 + w) and prompts of two lengths
    (left-padded): the same tokens. The published folders' generation_config.json carries
    `generation_kwargs.boi_token_id`; the tiny folder does not, so it is given here."""
    import copy

    prompts = ["a red circle", "two blue squares to the left of a green triangle"]
    ours = backbone.generate(prompts, 1, GenerationConfig(guidance=2.0, temperature=0.0))
    ids, mask = backbone._left_pad([backbone._generation_ids(p) for p in prompts])
    config = copy.deepcopy(backbone.model.generation_config)
    config.generation_kwargs = {"boi_token_id": backbone.tokens.boi}
    config.do_sample, config.guidance_scale = False, 3.0
    config.bos_token_id, config.pad_token_id = backbone.tokens.bos, backbone.tokens.pad
    with torch.no_grad():
        theirs = backbone.model.generate(ids, attention_mask=mask, generation_mode="image", generation_config=config)
    assert theirs.shape == ours.shape == (2, N_IMAGE_TOKENS)
    assert torch.equal(ours, theirs)


def test_greedy_captions_equal_transformers_janus_generate_in_text_mode(backbone):
    """Our caption sampler against transformers' `generate(generation_mode="text")` at temperature 0, with
    the same token budget (ours stops at the model's context: here 128 positions, 65 of them the prompt)."""
    rng = np.random.default_rng(0)
    inputs = backbone.prepare_images([rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(2)])
    ours = backbone.sample_captions(inputs, 1, GenerationConfig(temperature=0.0))
    ids = torch.tensor([backbone._understanding_ids(CAPTION_QUESTION)] * 2)
    budget = min(backbone.caption_max_tokens, backbone.context - ids.shape[1])
    with torch.no_grad():
        out = backbone.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=inputs, generation_mode="text",
                                      do_sample=False, max_new_tokens=budget, eos_token_id=backbone.tokens.eos,
                                      pad_token_id=backbone.tokens.pad)
    theirs = [[backbone._decode_text(row[ids.shape[1]:].tolist())] for row in out]
    assert ours == theirs and all(caption for [caption] in ours)
