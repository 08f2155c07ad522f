"""The Show-o adapter against numbers from the reference code (tests/fixtures/showo/README.md says how
they were made), and the protocol's promises on a tiny random Show-o folder.

Tolerance: float32 outputs agree with the reference to ATOL (logits, pixels, log-probs); discrete
outputs (codes, masks, sampled tokens) agree exactly."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_showo import TINY_MAGVIT, make_tiny_showo, tiny_phi_tokenizer

from hermesflow.backbones.base import ExactEstimator, GenerationConfig, MaskedEstimator
from hermesflow.backbones.magvit2 import MagvitConfig, MagvitV2, pixel_values, to_uint8
from hermesflow.backbones.maskgit import MASKED, draw_masks
from hermesflow.backbones.showo import (
    PHI_1_5,
    SPECIAL_TOKENS,
    OfficialMaskedEstimator,
    ShowoBackbone,
    ShowoConfig,
    official_masks,
    sample_token,
)
from hermesflow.cli import main
from hermesflow.convert_showo import convert_showo, lfq_tables, read_magvit_config
from hermesflow.errors import UsageError
from hermesflow.world.build import world_records

FIXTURES = Path(__file__).parent / "fixtures" / "showo"
ATOL = 1e-4


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "reference_outputs.safetensors")


@pytest.fixture(scope="module")
def tiny() -> dict:
    return json.loads((FIXTURES / "tiny_config.json").read_text())


@pytest.fixture(scope="module")
def full_size() -> dict:
    return json.loads((FIXTURES / "full_size_params.json").read_text())


def tiny_magvit_config(tiny: dict) -> MagvitConfig:
    enc, dec = tiny["encoder"], tiny["decoder"]
    return MagvitConfig(ch=enc["ch"], encoder_ch_mult=enc["ch_mult"], encoder_res_blocks=enc["num_res_blocks"],
                        decoder_ch_mult=dec["ch_mult"], decoder_res_blocks=dec["num_res_blocks"], bits=enc["z_channels"])


@pytest.fixture(scope="module")
def magvit(tiny) -> MagvitV2:
    weights = load_file(FIXTURES / "tiny_weights.safetensors")
    model = MagvitV2(tiny_magvit_config(tiny)).eval()
    state = {k.removeprefix("vq_model."): v.float() for k, v in weights.items()
             if k.startswith("vq_model.") and not k.startswith("vq_model.quantize.")}
    model.load_state_dict(state, strict=True)
    return model


# ----- MAGVIT-v2 ------------------------------------------------------------------------------------


def test_magvit_full_size_parameters_match_the_reference(full_size):
    with torch.device("meta"):
        model = MagvitV2(MagvitConfig())
    ours = {name: list(p.shape) for name, p in model.named_parameters()}
    assert ours == full_size["magvitv2"]["parameters"]
    # the reference also saves the LFQ's constant tables; ours derives them (the converter drops them)
    assert set(full_size["magvitv2"]["buffers"]) == {"quantize.embedding", "quantize.power_vals"}


def test_image_preparation_matches_show_o_image_transform(ref):
    pixels = pixel_values([ref["image_a"].numpy(), ref["image_b"].numpy()], 32)
    assert torch.equal(pixels, ref["pixel_values"])


def test_magvit_codes_and_pixels_match_the_reference(magvit, ref):
    with torch.no_grad():
        assert torch.equal(magvit.encode(ref["pixel_values"]), ref["codes"])
        decoded = magvit.decode(ref["codes"])
    torch.testing.assert_close(decoded, ref["decoded"], atol=ATOL, rtol=0)
    assert np.array_equal(to_uint8(decoded), ref["decoded_uint8"].numpy())


def test_lfq_codes_round_trip_through_latents(magvit):
    codes = torch.arange(64).view(4, 16)
    latents = magvit.latents(codes, 4)
    assert set(latents.unique().tolist()) == {-1.0, 1.0}
    bits = (latents > 0).long()
    assert torch.equal((bits * magvit.bit_values[:, None, None]).sum(1).flatten(1), codes)


# ----- Show-o against the reference -------------------------------------------------------------------


@pytest.fixture(scope="module")
def showo(tiny) -> ShowoBackbone:
    """The reference's tiny model with its weights (tokenizer-free: the fixtures are token ids)."""
    phi = {k: v for k, v in tiny["phi"].items() if k not in ("model_type", "vocab_size", "tie_word_embeddings")}
    cfg = ShowoConfig(phi=phi, magvit=tiny_magvit_config(tiny).to_dict(), llm_vocab_size=tiny["llm_vocab_size"],
                      num_vq_tokens=tiny["num_vq_tokens"], image_size=tiny["resolution"],
                      max_seq_length=tiny["max_seq_length"], bos_id=tiny["bos_id"], eos_id=tiny["eos_id"])
    assert (cfg.vocab_size, cfg.mask_id, cfg.pad_id) == (tiny["vocab_size"], tiny["vocab_size"] - 1, 64)
    assert {t: cfg.special_id(t) for t in SPECIAL_TOKENS} == {t: i for t, i in tiny["special_ids"].items() if t in SPECIAL_TOKENS}
    model = ShowoBackbone(cfg).eval()
    weights = load_file(FIXTURES / "tiny_weights.safetensors")
    model.load_weights({k: v.float() for k, v in weights.items() if not k.startswith("vq_model.quantize.")}, "fixture")
    return model


def ids_of(text: str) -> list[int]:
    """The fixtures' stand-in tokenizer: a text is a space-separated list of ids."""
    return [int(t) for t in text.split()]


def test_show_o_full_size_parameters_match_the_reference(full_size):
    for name, side, tokens in (("show-o", 256, 256), ("show-o-512x512", 512, 1024)):
        with torch.device("meta"):
            model = ShowoBackbone(ShowoConfig(image_size=side, num_vq_tokens=tokens))
        ours = {k: list(p.shape) for k, p in model.named_parameters() if k.startswith("showo.")}
        assert ours == full_size[name]["parameters"], name
        assert {k for k in model.state_dict() if k.startswith("showo.")} == set(ours)  # no saved buffers either
    phi = full_size["phi-1_5"]
    assert {k: phi[k] for k in PHI_1_5} == PHI_1_5


def test_t2i_sequence_mask_and_logits_match_the_reference(showo, tiny, ref):
    partly = ref["codes"].clone()
    partly[:, ::3] = MASKED
    ids = showo.t2i_ids([ids_of(p) for p in tiny["prompts"]], torch.cat([partly, partly[:1]]))
    assert torch.equal(ids, ref["t2i_input_ids"])
    allowed = showo.t2i_allowed(ids)
    assert torch.equal(allowed.to(torch.uint8), ref["t2i_allowed"])
    with torch.no_grad():
        torch.testing.assert_close(showo.logits(ids, allowed), ref["t2i_logits"], atol=ATOL, rtol=0)


def test_mmu_sequence_mask_logits_and_caption_logps_match_the_reference(showo, tiny, ref):
    captions = [ids_of(c) + [tiny["eos_id"]] for c in tiny["captions"]]
    ids = showo.mmu_ids(ref["codes"], captions, width=ref["mmu_input_ids"].shape[1])
    assert torch.equal(ids, ref["mmu_input_ids"])
    allowed = showo.mmu_allowed(ids)
    assert torch.equal(allowed.to(torch.uint8), ref["mmu_allowed"])
    with torch.no_grad():
        torch.testing.assert_close(showo.logits(ids, allowed), ref["mmu_logits"], atol=ATOL, rtol=0)
        logps = showo.text_logps(ref["codes"], [[], []], captions)
    torch.testing.assert_close(logps.total, ref["caption_logps"], atol=ATOL, rtol=0)
    assert logps.count.tolist() == ref["caption_counts"].tolist()


def test_kv_cached_greedy_continuation_matches_mmu_generate(showo, ref):
    with torch.no_grad():
        tokens = showo.continue_text(ref["greedy_prompt"], 6, temperature=0.0, top_k=0, generator=None, text_only=False)
    assert torch.equal(tokens, ref["greedy_tokens"])


@pytest.mark.parametrize("steps,seed", [(1, 7), (4, 11)])
def test_official_maskgit_matches_t2i_generate(showo, tiny, ref, steps, seed):
    trace: list[torch.Tensor] = []
    prompts = [ids_of(p) for p in tiny["prompts"][:2]]
    codes = showo.generate_ids(prompts, GenerationConfig(guidance=tiny["guidance"], temperature=1.0, steps=steps,
                                                         seed=seed), trace)
    assert torch.equal(codes, ref[f"maskgit_{steps}step_seed{seed}_sampled"])
    last = trace[-1]  # the official loop leaves one token masked after its last step (its result is `codes`)
    ids = torch.where(last == MASKED, showo.cfg.mask_id, last + showo.cfg.image_offset)
    assert torch.equal(ids, ref[f"maskgit_{steps}step_seed{seed}_final_input"])
    assert int((last == MASKED).sum(-1).min()) == 1


@pytest.mark.parametrize("seed", [3, 21])
def test_official_image_logps_match_hermesflow_pair_dpo(showo, tiny, ref, seed):
    masks, _ = official_masks([seed], 1, tiny["num_vq_tokens"])
    assert torch.equal(masks[0, 0].to(torch.uint8), ref[f"official_mask_seed{seed}"])
    prompt = ids_of(tiny["official_prompt"])
    with torch.no_grad():  # chosen and rejected with the same seed: the official shared mask
        logps = showo.image_logps_ids([prompt, prompt], ref["codes"], OfficialMaskedEstimator(), [seed, seed])
    torch.testing.assert_close(logps.total, ref[f"official_logp_seed{seed}"], atol=ATOL, rtol=0)
    assert logps.count.tolist() == [float(masks.sum())] * 2  # masked tokens; <|soi|>, <|eoi|> are in the sum only


# ----- the protocol on a tiny random Show-o folder ----------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_tiny_showo(tmp_path_factory.mktemp("showo") / "model")


@pytest.fixture(scope="module")
def model(folder) -> ShowoBackbone:
    return ShowoBackbone.from_pretrained(folder)


@pytest.fixture(scope="module")
def world() -> tuple[list[dict], list[np.ndarray]]:
    pairs = list(world_records(3, seed=0, split="eval", image_size=32))
    return [r for r, _ in pairs], [image for _, image in pairs]


def naive_text_logp(model: ShowoBackbone, codes: torch.Tensor, prefix: list[int], target: list[int]) -> float:
    """One forward per target token over the sequence up to it, no batching, no gathering."""
    total = 0.0
    for j, token in enumerate(target):
        ids = model.mmu_ids(codes[None], [prefix + target[:j]])
        logits = model.logits(ids, model.mmu_allowed(ids))[0, -1]
        total += logits.log_softmax(-1)[token].item()
    return total


def test_caption_logps_equal_a_naive_per_token_loop(model, world):
    records, images = world
    captions = [r["caption"] for r in records]
    with torch.no_grad():
        codes = model.prepare_images(images)
        batched = model.caption_logps(codes, captions)
        prompt = model._encode(model.cfg.caption_prompt)
        for i, caption in enumerate(captions):
            target = model._answer_ids(caption)
            assert batched.total[i].item() == pytest.approx(naive_text_logp(model, codes[i], prompt, target), abs=1e-4)
            assert batched.count[i].item() == len(target)


@pytest.mark.parametrize("estimator", [OfficialMaskedEstimator(samples=2), MaskedEstimator(samples=2)],
                         ids=["official", "shared"])
def test_image_logps_equal_a_naive_per_token_loop(model, world, estimator):
    records, _ = world
    prompts = [model._encode(r["caption"]) for r in records] + [[]]  # and the unconditional prompt
    tokens = torch.randint(0, model.cfg.codebook_size, (4, model.n_image_tokens), generator=torch.Generator().manual_seed(0))
    seeds = [11, 12, 13, 14]
    official = isinstance(estimator, OfficialMaskedEstimator)
    with torch.no_grad():
        batched = model.image_logps_ids(prompts, tokens, estimator, seeds)
        masks = (official_masks if official else draw_masks)(seeds, estimator.samples, model.n_image_tokens)[0]
        for b in range(4):
            draws = []
            for k in range(estimator.samples):
                ids = model.t2i_ids([prompts[b]], torch.where(masks[b, k], MASKED, tokens[b])[None])
                logits = model.logits(ids, model.t2i_allowed(ids))[0]
                total = 0.0
                for i in range(model.n_image_tokens):
                    if masks[b, k, i]:
                        position = model.prefix_len + 1 + i
                        if official:  # over the whole vocabulary, the true token's id
                            total += logits[position].log_softmax(-1)[model.cfg.image_offset + tokens[b, i]].item()
                        else:  # over the image codes only
                            codes = logits[position, model.cfg.image_offset : model.cfg.mask_id]
                            total += codes.log_softmax(-1)[tokens[b, i]].item()
                if official:  # <|soi|> and <|eoi|> predicting themselves, as the official labels keep them
                    total += logits[model.prefix_len].log_softmax(-1)[ids[0, model.prefix_len]].item()
                    total += logits[-1].log_softmax(-1)[ids[0, -1]].item()
                draws.append(total)
            assert batched.total[b].item() == pytest.approx(sum(draws) / len(draws), abs=1e-3)
            assert batched.count[b].item() == masks[b].sum().item() / estimator.samples


def test_a_seed_shares_masks_between_chosen_rejected_policy_and_reference(model):
    tokens = torch.randint(0, model.cfg.codebook_size, (2, model.n_image_tokens), generator=torch.Generator().manual_seed(1))
    prompt = model._encode("a photo of a red circle")
    est = model.default_estimator()
    assert isinstance(est, OfficialMaskedEstimator) and isinstance(est, MaskedEstimator)
    with torch.no_grad():
        chosen = model.image_logps_ids([prompt], tokens[:1], est, [5])
        pair = model.image_logps_ids([prompt, prompt], tokens, est, [5, 5])
        other = model.image_logps_ids([prompt], tokens[:1], est, [6])
    assert chosen.total.item() == pytest.approx(pair.total[0].item(), abs=1e-5)
    assert pair.count[0] == pair.count[1]  # one mask for both
    assert chosen.total.item() != other.total.item()
    assert est.key() == "showo-official-k1-none"


def test_generation_and_captions_are_seeded(model, world):
    _, images = world
    prompts = ["a photo of a red circle", "two blue squares"]
    gen = GenerationConfig(guidance=2.0, steps=4, seed=3)
    first = model.generate(prompts, 2, gen)
    assert first.shape == (4, model.n_image_tokens) and first.dtype == torch.long
    assert int(first.min()) >= 0 and int(first.max()) < model.cfg.codebook_size
    assert torch.equal(first, model.generate(prompts, 2, gen))
    assert not torch.equal(first, model.generate(prompts, 2, GenerationConfig(guidance=2.0, steps=4, seed=4)))
    codes = model.prepare_images(images[:2])
    captions = model.sample_captions(codes, 2, GenerationConfig(seed=9))
    assert len(captions) == 2 and all(len(c) == 2 and all(isinstance(t, str) for t in c) for c in captions)
    assert captions == model.sample_captions(codes, 2, GenerationConfig(seed=9))
    # an image's n captions share its prefix pass: the same draws as n copies of the image, once each
    copies = model.sample_captions(codes.repeat_interleave(2, dim=0), 1, GenerationConfig(seed=9))
    assert [c for row in captions for c in row] == [c for [c] in copies]


def test_the_shared_sampler_is_available(folder):
    raw = json.loads((folder / "config.json").read_text())
    shared = ShowoBackbone(ShowoConfig(**{**{k: v for k, v in raw.items() if k != "model_type"}, "sampler": "shared"}))
    shared.load_state_dict(ShowoBackbone.from_pretrained(folder).state_dict())
    codes = shared.generate_ids([[5, 6]], GenerationConfig(guidance=1.0, steps=3, seed=0))
    assert codes.shape == (1, shared.n_image_tokens) and int(codes.min()) >= 0


def test_kv_cached_sampling_equals_recomputing_the_whole_sequence(model, world):
    _, images = world
    with torch.no_grad():
        codes = model.prepare_images(images[:2])
        ids = model.mmu_ids(codes, [model._encode(model.cfg.caption_prompt)] * 2)
        cached = model.continue_text(ids, 8, 1.0, 5, torch.Generator().manual_seed(2))
        g, seq, naive = torch.Generator().manual_seed(2), ids, []
        done = torch.zeros(2, dtype=torch.bool)
        for _ in range(cached.shape[1]):
            logits = model.logits(seq, model.mmu_allowed(seq))[:, -1]
            logits[:, model.cfg.llm_vocab_size :] = float("-inf")
            token = torch.where(done, model.cfg.eos_id, sample_token(logits, 1.0, 5, g))
            done |= token == model.cfg.eos_id
            naive.append(token)
            seq = torch.cat([seq, token[:, None]], dim=1)
    assert torch.equal(cached, torch.stack(naive, dim=1))


def test_save_then_load_is_identical(model, world, tmp_path):
    records, images = world
    model.save_pretrained(tmp_path / "copy")
    assert json.loads((tmp_path / "copy" / "config.json").read_text())["model_type"] == "show-o"
    again = ShowoBackbone.from_pretrained(tmp_path / "copy")
    assert again.fingerprint() == model.fingerprint()
    with torch.no_grad():
        codes = model.prepare_images(images)
        assert torch.equal(again.prepare_images(images), codes)
        captions = [r["caption"] for r in records]
        assert torch.equal(again.caption_logps(codes, captions).total, model.caption_logps(codes, captions).total)
    assert again.tokenizer.encode("a red circle") == model.tokenizer.encode("a red circle")


def test_bf16_agrees_with_fp32(folder, model, world):
    records, images = world
    half = ShowoBackbone.from_pretrained(folder, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.vq_model.dtype == torch.float32  # the tokenizer stays float32
    captions = [r["caption"] for r in records]
    with torch.no_grad():
        codes = model.prepare_images(images)
        assert torch.equal(half.prepare_images(images), codes)
        tokens = model.generate(captions, 1, GenerationConfig(steps=3, seed=5))
        for a, b in ((model.caption_logps(codes, captions), half.caption_logps(codes, captions)),
                     (model.image_logps(captions, tokens, model.default_estimator(), [1, 2, 3]),
                      half.image_logps(captions, tokens, half.default_estimator(), [1, 2, 3]))):
            assert torch.equal(a.count, b.count)
            torch.testing.assert_close(b.mean().float(), a.mean(), atol=0.05, rtol=0.02)
        assert half.generate(captions, 1, GenerationConfig(steps=3, seed=5)).shape == tokens.shape
        with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision leaves the tokenizer in float32
            assert torch.equal(model.prepare_images(images), codes)
            assert np.array_equal(model.decode(codes), half.decode(codes))


def test_lora_trains_only_phi_and_its_disabled_adapter_is_the_reference(folder, world):
    records, images = world
    lora = ShowoBackbone.from_pretrained(folder)
    captions = [r["caption"] for r in records]
    with torch.no_grad():
        codes = lora.prepare_images(images)
        before = lora.caption_logps(codes, captions).total
    lora.add_lora(r=4, alpha=8)
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n and n.startswith("showo.") for n in names)
    assert {n.split(".self_attn.")[1].split(".")[0] for n in names} == set(lora.lora_targets)
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
        after = lora.caption_logps(codes, captions).total
        with lora.reference_context():
            reference = lora.caption_logps(codes, captions).total
    assert not torch.allclose(after, before)
    torch.testing.assert_close(reference, before)


def test_fit_problems_name_what_does_not_fit(model, world):
    records, images = world
    assert model.fit_problems(images[0], [records[0]["caption"]]) == []
    too_long = " ".join(["red"] * (model.cfg.max_seq_length - 1))
    problems = model.fit_problems(np.zeros((8, 8), dtype=np.uint8), [too_long, "a zebra", "", "a <|soi|> circle"])
    assert any("(H, W, 3) uint8" in p for p in problems)
    assert not any(too_long[:20] in p for p in problems) and model.prompt_cut(too_long) == 1  # cut as a prompt, fits as a caption
    assert any("does not know" in p for p in problems)
    try:
        model.long_text = "refuse"
        assert any("text-to-image prompt holds 30" in p for p in model.fit_problems(None, [too_long]))
    finally:
        model.long_text = "truncate"
    assert any("is empty" in p for p in problems)
    assert any("special tokens" in p for p in problems)


def test_images_of_any_size_read_as_codes_and_generated_codes_pass_through(model, world):
    _, images = world
    big = np.kron(images[0], np.ones((3, 2, 1), dtype=np.uint8))  # 96x64, resized and centre-cropped
    codes = model.prepare_images([images[0], big])
    assert codes.shape == (2, model.n_image_tokens)
    assert torch.equal(model.prepare_generated(codes), codes)
    pixels = model.decode(codes)
    assert pixels.shape == (2, 32, 32, 3) and pixels.dtype == np.uint8
    with pytest.raises(UsageError, match="must be"):
        model.decode(codes[:, :4])
    with pytest.raises(UsageError, match="lie in"):
        model.prepare_generated(codes + model.cfg.codebook_size)
    with pytest.raises(UsageError, match="not exact"):
        model.image_logps(["a red circle"], codes[:1], ExactEstimator(), [0])


# ----- the converter ----------------------------------------------------------------------------------


# How showlab/show-o, show-o-512x512 and magvitv2 have published their weights: today one
# pytorch_model.safetensors each (magvitv2's pytorch_model.bin was deleted in a later commit); before,
# pytorch_model.bin; transformers' shard indexes for large checkpoints.
LAYOUTS = ("hub-safetensors", "bin", "safetensors-shards", "bin-shards")


def save_weights(state: dict[str, torch.Tensor], folder: Path, layout: str) -> None:
    folder.mkdir(parents=True)
    if layout == "hub-safetensors":
        save_file(state, folder / "pytorch_model.safetensors")
    elif layout == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    else:  # two shards and transformers' index naming them
        suffix = "safetensors" if layout == "safetensors-shards" else "bin"
        prefix = "model" if suffix == "safetensors" else "pytorch_model"
        names = sorted(state)
        weight_map = {}
        for i, part in enumerate((names[::2], names[1::2])):
            shard = f"{prefix}-{i + 1:05d}-of-00002.{suffix}"
            (save_file if suffix == "safetensors" else torch.save)({k: state[k] for k in part}, folder / shard)
            weight_map |= {k: shard for k in part}
        (folder / f"{prefix}.{suffix}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def write_official_folders(model: ShowoBackbone, root: Path, layout: str = "bin") -> Path:
    """The tiny model in the official layout: show-o (config.json with the published keys, the `showo.*`
    weights), magvitv2 (config.json exactly as published, which records no sizes; encoder, decoder and
    the LFQ tables) and phi-1_5 (tokenizer, config), the weights saved as `layout` says."""
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    cfg = model.cfg
    save_weights({k: v for k, v in state.items() if k.startswith("showo.")}, root / "show-o", layout)
    (root / "show-o" / "config.json").write_text(json.dumps({
        "_class_name": "Showo", "_diffusers_version": "0.30.1", "codebook_size": cfg.codebook_size,
        "llm_model_path": "microsoft/phi-1_5", "llm_vocab_size": cfg.llm_vocab_size, "load_from_showo": False,
        "mask_token_id": cfg.mask_id, "num_vq_tokens": cfg.num_vq_tokens, "vocab_size": cfg.vocab_size, "w_clip_vit": False}))
    vq = {k.removeprefix("vq_model."): v for k, v in state.items() if k.startswith("vq_model.")}
    save_weights({**vq, **lfq_tables(model.vq_model.cfg.bits)}, root / "magvitv2", layout)
    (root / "magvitv2" / "config.json").write_text(json.dumps({"_class_name": "MAGVITv2", "_diffusers_version": "0.30.1"}))
    tiny_phi_tokenizer().save_pretrained(root / "phi-1_5")
    (root / "phi-1_5" / "config.json").write_text(json.dumps(model.showo.config.to_dict()))
    return root / "show-o"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_published_layout_converts_from_the_command_line(model, tmp_path, layout):
    src = write_official_folders(model, tmp_path / "official", layout)
    args = ["convert-showo", str(src), str(tmp_path / "converted"), "--max-seq-length", str(model.cfg.max_seq_length)]
    if layout == LAYOUTS[0]:  # as a user types it
        result = subprocess.run([sys.executable, "-m", "hermesflow", *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    else:  # the same entry point, in this process
        assert main(args) == 0
    converted = ShowoBackbone.from_pretrained(tmp_path / "converted")
    assert converted.fingerprint() == model.fingerprint()
    assert converted.cfg == model.cfg  # the image tokenizer's sizes read from its weights
    assert converted.tokenizer.encode("a red circle <|soi|>") == model.tokenizer.encode("a red circle <|soi|>")


def test_magvit_sizes_are_read_from_the_weights_shapes(full_size):
    # the real showlab/magvitv2's tensor shapes, as the reference code built them
    real = {name: torch.empty(shape, device="meta") for name, shape in full_size["magvitv2"]["parameters"].items()}
    assert MagvitConfig.from_weights(real, "magvitv2") == MagvitConfig()
    variant = MagvitConfig(ch=32, encoder_ch_mult=[1, 2, 2], encoder_res_blocks=[2, 0, 1], decoder_ch_mult=[1, 2, 2],
                           decoder_res_blocks=[1, 1, 0], bits=5)  # 32 codes, levels without blocks
    with torch.device("meta"):
        state = MagvitV2(variant).state_dict()
    assert MagvitConfig.from_weights(state, "v") == variant
    del state["encoder.conv_out.weight"]
    with pytest.raises(ValueError, match="v: no encoder.conv_out.weight"):
        MagvitConfig.from_weights(state, "v")


def test_magvit_sizes_the_shapes_cannot_tell_are_named_in_a_file(model, tmp_path):
    src = write_official_folders(model, tmp_path / "official")
    sizes = tmp_path / "magvit.json"
    sizes.write_text(json.dumps(TINY_MAGVIT.to_dict()))
    out = convert_showo(src, tmp_path / "converted", max_seq_length=model.cfg.max_seq_length, magvit_config=read_magvit_config(sizes))
    assert ShowoBackbone.from_pretrained(out).cfg == model.cfg
    sizes.write_text(json.dumps({**TINY_MAGVIT.to_dict(), "channels": 3}))
    with pytest.raises(UsageError, match=r"magvit.json: unknown keys \['channels'\]"):
        read_magvit_config(sizes)


def test_converting_the_official_layout_gives_the_same_model(model, tmp_path):
    src = write_official_folders(model, tmp_path / "official")
    out = convert_showo(src, tmp_path / "converted", max_seq_length=model.cfg.max_seq_length,
                        magvit_config=TINY_MAGVIT)
    converted = ShowoBackbone.from_pretrained(out)
    assert converted.fingerprint() == model.fingerprint()
    assert converted.cfg == model.cfg
    assert converted.tokenizer.encode("a red circle <|soi|>") == model.tokenizer.encode("a red circle <|soi|>")


def test_the_converter_names_missing_unexpected_and_misshapen_weights(model, tmp_path):
    src = write_official_folders(model, tmp_path / "official")
    vq = torch.load(tmp_path / "official" / "magvitv2" / "pytorch_model.bin", weights_only=True)
    del vq["decoder.conv_out.bias"]
    vq["encoder.extra.weight"] = torch.zeros(1)
    vq["encoder.conv_in.weight"] = torch.zeros(1, 2, 3)
    torch.save(vq, tmp_path / "official" / "magvitv2" / "pytorch_model.bin")
    with pytest.raises(UsageError) as e:
        convert_showo(src, tmp_path / "out", max_seq_length=model.cfg.max_seq_length, magvit_config=TINY_MAGVIT)
    message = str(e.value)
    assert "missing vq_model.decoder.conv_out.bias" in message
    assert "unexpected vq_model.encoder.extra.weight" in message
    assert "vq_model.encoder.conv_in.weight (1, 2, 3) (expected (32, 3, 3, 3))" in message
    (tmp_path / "official" / "magvitv2").rename(tmp_path / "official" / "elsewhere")
    with pytest.raises(UsageError, match="no magvitv2 folder found"):
        convert_showo(src, tmp_path / "out", magvit_config=TINY_MAGVIT)
    # a magvitv2 folder without weights, or a Show-o folder without: the cause, and what was looked for
    (tmp_path / "official" / "magvitv2").mkdir()
    with pytest.raises(UsageError, match=r"magvitv2 folder .*magvitv2: no weights \(looked for pytorch_model.safetensors, "):
        convert_showo(src, tmp_path / "out")
    (tmp_path / "official" / "magvitv2").rmdir()
    (tmp_path / "official" / "elsewhere").rename(tmp_path / "official" / "magvitv2")
    (src / "pytorch_model.bin").rename(src / "weights.bin")
    with pytest.raises(UsageError, match=r"Show-o folder .*show-o: no weights \(looked for pytorch_model.safetensors, "):
        convert_showo(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written on an error


# ----- prompts longer than the text slot ---------------------------------------------------------------


def dpg_length_prompt(words: int = 130) -> str:
    """A DPG-Bench-length prompt (its prompts run 37-130 words) in words the tiny tokenizer knows."""
    scene = "a red circle above a blue square and a green triangle to the left of a yellow circle".split()
    return " ".join((scene * (words // len(scene) + 1))[:words])


def test_a_long_prompt_is_cut_to_the_text_slot_as_the_reference_pipeline_cuts_it(model):
    ids = model.tokenizer.encode(dpg_length_prompt(), add_special_tokens=False)
    assert len(ids) == 130 > model.text_slot
    t2i, bos, eos = model.cfg.special_id("<|t2i|>"), model.cfg.bos_id, model.cfg.eos_id
    # Show-o's UniversalPrompting.t2i_gen_prompt: ([<|t2i|>, <bos>] + text + [<eos>])[:max_text_len - 1] + [<eos>]
    assert model.t2i_prefix(ids) == ([t2i, bos] + ids + [eos])[: model.prefix_len - 1] + [eos]
    assert model.prompt_cut(dpg_length_prompt()) == 130 - model.text_slot and model.prompt_cut("a red circle") == 0
    try:
        model.long_text = "refuse"
        assert model.prompt_cut(dpg_length_prompt()) == 0
        (problem,) = model.prompt_problems([dpg_length_prompt(), "a red circle"])
        assert "is 130 tokens" in problem and "--long-text truncate" in problem
        with pytest.raises(UsageError, match="does not fit Show-o's text slot"):
            model.t2i_prefix(ids)
    finally:
        model.long_text = "truncate"


def test_dpg_export_cuts_and_counts_long_prompts_or_refuses_them(folder, tmp_path, capsys):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "long.txt").write_text(dpg_length_prompt())
    (prompts / "short.txt").write_text("a red circle")
    args = ["export", "dpg", "--model", str(folder), "--prompts", str(prompts), "--n", "1", "--steps", "2"]
    assert main([*args, "--out", str(tmp_path / "cut")]) == 0
    assert re.search(r"truncated_prompts\s+1\n", capsys.readouterr().out)
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["long.png", "short.png"]
    assert main([*args, "--out", str(tmp_path / "refused"), "--long-text", "refuse"]) == 2
    assert "long.txt: text" in capsys.readouterr().err and not (tmp_path / "refused").exists()


def test_curation_cuts_and_counts_long_captions_or_refuses_them(tmp_path):
    from hermesflow import config
    from hermesflow.accel import partial_state
    from hermesflow.data import read_homologous
    from hermesflow.errors import DataError
    from hermesflow.recipes.run import curate_round, settle, train_data
    from hermesflow.scorers.similarity import SentenceSimilarity
    from hermesflow.settings import RunConfig
    from hermesflow.world.build import write_world

    roomy = ShowoBackbone.from_pretrained(make_tiny_showo(tmp_path / "showo", context=256))  # room to caption a long text
    write_world(tmp_path / "data", 2, seed=0, split="train")
    lines = (tmp_path / "data" / "data.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    lines[0] = json.dumps({**first, "caption": dpg_length_prompt()})
    (tmp_path / "data" / "data.jsonl").write_text("\n".join(lines) + "\n")
    cfg = config.build(RunConfig, out=tmp_path / "run", data=tmp_path / "data", n_captions=2, n_images=2, steps=2,
                       min_chosen_accuracy=0.0)
    state = partial_state()
    data = train_data(roomy, settle(cfg, roomy), tmp_path / "run", state)
    manifest = curate_round(roomy, SentenceSimilarity(), data, tmp_path / "run" / "round-1", cfg, 0, None, state)
    assert manifest["truncated_prompts"] == 1 and manifest["counts"]["records"] == 2
    refusing = config.replace(cfg, long_text="refuse", out=tmp_path / "refused")
    with pytest.raises(DataError, match="is 130 tokens"):
        train_data(roomy, settle(refusing, roomy), tmp_path / "refused", state)
    assert read_homologous(tmp_path / "data").records[0].caption == dpg_length_prompt()


def test_the_per_token_choice_score_takes_away_the_sums_pull_towards_short_options_under_phis_bpe(tmp_path, world):
    """Show-o reads text with Phi-1.5's byte-level BPE: a tiny Show-o with such a tokenizer and Phi's own
    0.02-std initial weights (it knows nothing), a 3-token option against a 12-token one. Measured: the
    sum takes the short option 12 times of 12, the mean per token 2 of 12. (With the wider random weights
    of `make_tiny_showo` the mean took it 12 of 12 too: a model with preferences of its own cannot
    show the tokenizer's pull apart from them.)"""
    backbone = ShowoBackbone.from_pretrained(make_tiny_showo(tmp_path / "bpe", bpe=True))
    with torch.no_grad():  # Phi's own 0.02-std init: a model that knows nothing, so only the length can decide
        for p in backbone.showo.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(p.numel()))
    _, images = world
    short, long = "a circle", "a red circle above a blue square and a green triangle"
    lengths = [len(backbone._answer_ids(c)) for c in (short, long)]
    assert lengths[0] * 3 < lengths[1]
    prepared = backbone.prepare_images(images)
    inputs = prepared.repeat(4, *[1] * (prepared.dim() - 1))
    questions = [q for q in ("what is in the image?", "what does it show?", "describe it.", "what shapes are there?") for _ in images]
    choices = [[short, long] if i % 2 else [long, short] for i in range(len(questions))]
    picked = {score: [a == short for a in backbone.answer(inputs, questions, choices, score=score)] for score in ("sum", "mean")}
    assert sum(picked["sum"]) == len(questions)  # the sum always takes the shorter option
    assert sum(picked["mean"]) < len(questions)  # per token, the option's length no longer decides alone
