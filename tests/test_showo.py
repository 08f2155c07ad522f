"""The Show-o adapter against numbers from the reference code (tests/fixtures/showo/README.md says how
they were made), and the protocol's promises on a tiny random Show-o folder.

Tolerance: float32 outputs agree with the reference to ATOL (logits, pixels, log-probs); discrete
outputs (codes, masks, sampled tokens) agree exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hermesflow.backbones.base import GenerationConfig
from hermesflow.backbones.magvit2 import MagvitConfig, MagvitV2, pixel_values, to_uint8
from hermesflow.backbones.maskgit import MASKED
from hermesflow.backbones.showo import (
    PHI_1_5,
    SPECIAL_TOKENS,
    OfficialMaskedEstimator,
    ShowoBackbone,
    ShowoConfig,
    official_masks,
)

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
    assert logps.count.tolist() == [float(masks.sum() + 2)] * 2
