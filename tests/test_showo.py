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

from hermesflow.backbones.magvit2 import MagvitConfig, MagvitV2, pixel_values, to_uint8

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
