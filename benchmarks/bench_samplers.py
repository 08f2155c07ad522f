"""Our samplers side by side with their peers', in one run at the same settings, and how close each
batched sampling call comes to the bound that binds it on this machine.

Janus (Janus-Pro's architecture): images with our `JanusBackbone.generate` against transformers'
own `JanusForConditionalGeneration.generate(generation_mode="image")`, captions (8 per image, as
curation draws them) against its `generate(generation_mode="text", num_return_sequences=8)`: same
prompt, batch, guidance, temperature and token counts, timed alternately, best of `--repeats` after
a warm-up.

Show-o: our MaskGIT sampler (256 image tokens; at real width also Show-o-512's 1024) and caption
sampler; the official pipeline (`Showo.t2i_generate`, `Showo.mmu_generate`) needs its own
environment (transformers 4.41), so with `--showo-reference DIR --showo-python PY` (a checkout of
showlab/Show-o and a Python that can import it) it is timed in a subprocess by
`benchmarks/showo_reference.py`, over the same weights and sequences, after ours; without them the
figures recorded in `SHOWO_RECORDED` are printed with their date and commit.

Two widths (`Width` below): "tiny" (hidden 64, fp32: per-call overhead) and "real" (Janus-Pro-1B's
and Phi-1.5's layer widths, hidden 2048, vocabularies and heads as published, `--layers` decoder
layers so they fit the CPU; bf16). Random weights: speed does not depend on them, and nothing is
downloaded.

Utilisation, at real width: a batched MaskGIT step is a matmul-bound call, so its FLOPs (counted by
`torch.utils.flop_counter`) per second over this machine's matmul FLOP/s in the same dtype; an
autoregressive decode step reads every weight once for a handful of rows, so its weight bytes per
second over this machine's memory bandwidth (a large copy).

Run: `python benchmarks/bench_samplers.py` (about 4 minutes; `--only janus` or `--only showo`).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from bench_model import best_of  # this folder is on the path of a script run from it
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tiny models' builders and tokenizers

# The official pipeline's images/s and captions/s at each width's settings, from a run with
# --showo-reference, printed when no checkout is given.
SHOWO_RECORDED = {("tiny", 256): {"images": 1.69, "captions": 3.5}, ("real", 256): {"images": 0.568, "captions": 0.0398},
                  ("real", 512): {"images": 0.183}}
SHOWO_RECORDED_FROM = "showlab/Show-o 45a5a2d, 2026-12-07, 2-core CPU"

@dataclass(frozen=True)
class Width:
    """What a width runs: tiny in fp32 (per-call overhead), real in bf16 (what a GPU run uses), with
    fewer MaskGIT steps and Janus image tokens there so each measurement stays under a minute (a
    step, or a token, costs the same whatever their number; Show-o's text slot is computed once)."""

    dtype: torch.dtype
    batch: int
    maskgit_steps: int
    janus_image_tokens: int  # of 576
    repeats: int  # of the official Show-o calls (a real-width one takes tens of seconds)


WIDTHS = {"tiny": Width(torch.float32, 16, 8, 576, 2), "real": Width(torch.bfloat16, 8, 1, 48, 1)}
CAPTIONS = 8  # samples per image, as curation draws them (`hermesflow run --n-captions`)
UTILISATION_BATCH = 16  # images per batched MaskGIT call when utilisation is measured

PROMPT = "a photo of a red circle to the left of a blue square"


def side_by_side(ours: Callable[[], object], theirs: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best wall times of the two, timed alternately (one warm-up each), so a busy spell hits both."""
    ours(), theirs()
    a, b = [], []
    for _ in range(repeats):
        for fn, times in ((ours, a), (theirs, b)):
            tic = time.perf_counter()
            fn()
            times.append(time.perf_counter() - tic)
    return min(a), min(b)


def matmul_flops(dtype: torch.dtype, width: int = 2048) -> float:
    """This machine's FLOP/s for a square matmul in `dtype`, best of 10: measured beside each
    utilisation figure, since a shared machine's speed drifts within a run."""
    a = torch.randn(width, width, dtype=dtype)
    return 2 * width**3 / best_of(lambda: a @ a, 10)


def memory_bandwidth() -> float:
    """Bytes/s of a 256 MB copy (far beyond any cache), which reads and writes each byte; best of 10."""
    big = torch.ones(256 * 2**20 // 4)
    out = torch.empty_like(big)
    return 2 * big.numel() * 4 / best_of(lambda: out.copy_(big), 10)


def counted_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def weight_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


# ----- Janus ------------------------------------------------------------------------------------------


def janus(width: str, layers: int, dtype: torch.dtype):
    """A random Janus backbone at 384 px (576 image tokens): the tests' tiny one (hidden 64), or
    Janus-Pro-1B's published config with `layers` decoder layers (and as many vision layers)."""
    from tiny_models import tiny_janus_config, tiny_janus_tokenizer
    from transformers import JanusConfig, JanusForConditionalGeneration
    from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil

    from hermesflow.backbones.janus import JanusBackbone
    from hermesflow.plan import PUBLISHED_DIR

    tokenizer = tiny_janus_tokenizer()
    image = tokenizer.convert_tokens_to_ids("<image_placeholder>")
    if width == "tiny":
        config = tiny_janus_config(len(tokenizer), image_size=384, image_token_id=image)
        config.text_config.max_position_embeddings = 1024
    else:
        raw = json.loads((PUBLISHED_DIR / "janus-pro-1b" / "config.json").read_text())
        raw["text_config"].update(num_hidden_layers=layers, bos_token_id=1, eos_token_id=2, pad_token_id=3)
        raw["vision_config"]["num_hidden_layers"] = layers
        config = JanusConfig(**{**raw, "image_token_id": image})
    torch.manual_seed(0)
    model = JanusForConditionalGeneration(config).to(dtype).eval()
    processor = JanusImageProcessorPil(size={"height": 384, "width": 384}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return JanusBackbone(model, tokenizer, processor)


def bench_janus(width: str, args) -> None:
    from hermesflow.backbones import GenerationConfig
    from hermesflow.backbones.janus import CAPTION_QUESTION

    dtype, tokens = WIDTHS[width].dtype, WIDTHS[width].janus_image_tokens
    backbone = janus(width, args.layers, dtype)
    n, w = WIDTHS[width].batch, 4.0  # Janus's own cfg_weight 5 = 1 + w
    backbone.n_image_tokens = backbone.model.model.vision_model.config.num_image_tokens = tokens  # ours, theirs
    gen = GenerationConfig(guidance=w, temperature=1.0, seed=0)
    ids, mask = backbone._left_pad([backbone._generation_ids(PROMPT)] * n)
    config = copy.deepcopy(backbone.model.generation_config)
    config.generation_kwargs = {"boi_token_id": backbone.tokens.boi}
    config.do_sample, config.temperature, config.top_k, config.guidance_scale = True, 1.0, 0, 1 + w
    config.bos_token_id, config.pad_token_id = backbone.tokens.bos, backbone.tokens.pad

    def theirs_images():
        with torch.no_grad():
            return backbone.model.generate(ids, attention_mask=mask, generation_mode="image", generation_config=config)

    ours, theirs = side_by_side(lambda: backbone.generate([PROMPT], n, gen), theirs_images, args.repeats)
    label = f"Janus {width:<4} {str(dtype)[6:]}"
    drawn = "576 tokens" if tokens == 576 else f"the first {tokens} of 576 tokens"
    print(f"{label} images, 1 prompt x {n}, {drawn}, guidance {1 + w:g}: ours {n / ours:7.2f}/s   "
          f"transformers {n / theirs:7.2f}/s   ours/theirs {theirs / ours:5.2f}x")

    # curation's shape: each image captioned CAPTIONS times (hermesflow run's --n-captions default)
    m = n // CAPTIONS
    pixels = backbone.prepare_images([np.random.default_rng(i).integers(0, 255, (384, 384, 3), dtype=np.uint8)
                                      for i in range(m)]).to(dtype)
    prompt = torch.tensor([backbone._understanding_ids(CAPTION_QUESTION)] * m)
    budget = backbone.caption_max_tokens

    def theirs_captions():
        with torch.no_grad():
            return backbone.model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), pixel_values=pixels,
                                           generation_mode="text", do_sample=True, temperature=1.0, top_k=0,
                                           num_return_sequences=CAPTIONS, max_new_tokens=budget, min_new_tokens=budget,
                                           eos_token_id=backbone.tokens.eos, pad_token_id=backbone.tokens.pad)

    # Random weights rarely say <eos>, so ours runs the whole budget too; theirs is held to it.
    ours_captions = lambda: backbone.sample_captions(pixels, CAPTIONS, GenerationConfig(temperature=1.0))
    ours, theirs = side_by_side(ours_captions, theirs_captions, args.repeats)
    print(f"{label} captions, {m} image(s) x {CAPTIONS} samples x {budget} tokens: ours {n / ours:7.2f}/s   "
          f"transformers {n / theirs:7.2f}/s   ours/theirs {theirs / ours:5.2f}x")
    if width == "real":
        # one decode step of the batched image call: every weight of the language model and the
        # generation head is read once for 2n rows
        step = ours_images_step(backbone, n, gen)
        lm = backbone.model.model.language_model
        read = weight_bytes(lm.layers) + weight_bytes(backbone.model.model.generation_head) + weight_bytes(lm.norm)
        bandwidth = memory_bandwidth()
        print(f"{label} image decode step ({2 * n} rows): {step * 1000:6.1f} ms, weights {read / 1e9:.2f} GB read "
              f"= {read / step / 1e9:5.1f} GB/s, {read / step / bandwidth:4.0%} of the memory bandwidth measured "
              f"beside it ({bandwidth / 1e9:.0f} GB/s)")


def ours_images_step(backbone, n: int, gen) -> float:
    """Seconds per token of the batched image call past its prompt: (whole call − 1-token call) / (tokens − 1)."""
    full = best_of(lambda: backbone.generate([PROMPT], n, gen), 1)
    saved = backbone.n_image_tokens
    backbone.n_image_tokens = 1
    try:
        short = best_of(lambda: backbone.generate([PROMPT], n, gen), 1)
    finally:
        backbone.n_image_tokens = saved
    return (full - short) / (saved - 1)


# ----- Show-o -----------------------------------------------------------------------------------------

PHI_VOCAB = 50295  # Phi-1.5's text vocabulary; Show-o's image codes and special tokens follow it


def showo(width: str, layers: int, dtype: torch.dtype, side: int = 256):
    """A random Show-o backbone at `side` px, 16 px per token (256 px: 256 image tokens, Show-o's;
    512 px: 1024, Show-o-512's), 8192 codes: Phi at the tests' tiny size, or Phi-1.5's (hidden
    2048, 32 heads, MLP 8192, its 50295-id text vocabulary) with `layers` layers. The MAGVIT-v2
    tokenizer is the tests' tiny one with 13 bits: sampling never runs it."""
    from tiny_showo import TINY_MAGVIT_256, TINY_PHI, tiny_showo_tokenizer

    from hermesflow.backbones.showo import PHI_1_5, SPECIAL_TOKENS, ShowoBackbone, ShowoConfig

    tokenizer = tiny_showo_tokenizer(size=PHI_VOCAB if width == "real" else None)
    tokens = (side // 16) ** 2
    phi = {**PHI_1_5, "num_hidden_layers": layers} if width == "real" else {**TINY_PHI, "max_position_embeddings": 512}
    magvit = replace(TINY_MAGVIT_256, bits=13)
    cfg = ShowoConfig(phi=phi, magvit=magvit.to_dict(), llm_vocab_size=len(tokenizer) - 1 - len(SPECIAL_TOKENS),
                      num_vq_tokens=tokens, image_size=side, bos_id=0, eos_id=0)
    torch.manual_seed(0)
    model = ShowoBackbone(cfg, tokenizer)
    model.showo.to(dtype)
    return model.eval()


def bench_showo(width: str, args) -> None:
    """Images at 256 tokens and captions; at real width also images at 1024 tokens (Show-o-512)."""
    from hermesflow.backbones import GenerationConfig

    dtype, steps = WIDTHS[width].dtype, WIDTHS[width].maskgit_steps
    gen = GenerationConfig(guidance=5.0, temperature=1.0, steps=steps)
    label = f"Show-o {width:<4} {str(dtype)[6:]}"
    for side in (256, 512) if width == "real" else (256,):
        backbone = showo(width, args.layers, dtype, side)
        n = WIDTHS[width].batch if side == 256 else WIDTHS[width].batch // 2
        images = lambda: backbone.generate([PROMPT], n, gen)  # noqa: B023 (called within this iteration)
        ours = {"images": n / best_of(images, args.repeats)}
        codes = torch.randint(0, backbone.cfg.codebook_size, (n // CAPTIONS, backbone.n_image_tokens))
        if side == 256:
            captions = lambda: backbone.sample_captions(codes, CAPTIONS, GenerationConfig(temperature=1.0))  # noqa: B023
            ours["captions"] = n / best_of(captions, args.repeats)
        same = ""
        if args.showo_reference:
            peer = showo_peer(backbone, codes if side == 256 else None, n, width, args)
            theirs, source = {"images": n / peer["images_seconds"], "captions": 1 / (peer["caption_seconds"] or 1)}, "official"
            if dtype == torch.float32:  # the two draw the same codes from one generator (bf16 rounds differently in each)
                same = "   same codes: " + ("yes" if torch.equal(peer["codes"], images()) else "NO")
        else:
            theirs, source = SHOWO_RECORDED[(width, side)], f"official (recorded: {SHOWO_RECORDED_FROM})"
        vs = {k: f"{source} {theirs[k]:7.3g}/s   ours/official {ours[k] / theirs[k]:5.2f}x" for k in ours}
        print(f"{label} images, 1 prompt x {n}, {backbone.n_image_tokens} tokens, {steps} steps, guidance 5: "
              f"ours {ours['images']:7.3g}/s   {vs['images']}{same}")
        if side == 256:
            print(f"{label} captions, {n // CAPTIONS} image(s) x {CAPTIONS} samples x {backbone.caption_max_tokens} "
                  f"tokens: ours {ours['captions']:7.3g}/s   {vs['captions']} (one at a time, as inference_mmu.py does)")
        if width == "real" and side == 256:
            batched = lambda: backbone.generate([PROMPT], UTILISATION_BATCH, gen)  # noqa: B023
            flops, seconds, bound = counted_flops(batched), best_of(batched, 1), matmul_flops(dtype)
            print(f"{label} batched MaskGIT step ({2 * UTILISATION_BATCH} rows): {flops / seconds / 1e9:6.0f} GFLOP/s "
                  f"= {flops / seconds / bound:4.0%} of the {str(dtype)[6:]} matmul measured beside it "
                  f"({bound / 1e9:.0f} GFLOP/s)")


def showo_peer(backbone, codes: torch.Tensor | None, n: int, width: str, args) -> dict:
    """The official pipeline's seconds per batched image call of `n` and per caption of `codes[0]`
    (None: no captions), and its codes for seed 0, from `showo_reference.py` run by
    `--showo-python` over the same weights and sequences."""
    from safetensors.torch import save_file

    from hermesflow.backbones.maskgit import MASKED

    cfg = backbone.cfg
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        (work / "phi").mkdir()
        phi = {**cfg.phi, "model_type": "phi", "vocab_size": cfg.vocab_size, "qk_layernorm": True,
               "tie_word_embeddings": False, "bos_token_id": cfg.bos_id, "eos_token_id": cfg.eos_id}
        (work / "phi" / "config.json").write_text(json.dumps(phi))
        save_file({k: v.contiguous() for k, v in backbone.showo.state_dict().items()}, work / "weights.safetensors")
        masked = torch.full((n, backbone.n_image_tokens), MASKED)
        prompt = backbone._encode(PROMPT)
        settings = {"dtype": str(next(backbone.showo.parameters()).dtype)[6:], "vocab_size": cfg.vocab_size,
                    "llm_vocab_size": cfg.llm_vocab_size, "codebook_size": cfg.codebook_size,
                    "num_vq_tokens": cfg.num_vq_tokens, "max_seq_length": cfg.max_seq_length, "pad_id": cfg.pad_id,
                    "soi_id": cfg.special_id("<|soi|>"), "eoi_id": cfg.special_id("<|eoi|>"), "guidance": 5.0,
                    "steps": WIDTHS[width].maskgit_steps, "caption_tokens": backbone.caption_max_tokens if codes is not None else 0, "repeats": WIDTHS[width].repeats,
                    "seed": 0}
        torch.save({"settings": settings, "t2i_cond": backbone.t2i_ids([prompt] * n, masked),
                    "t2i_uncond": backbone.t2i_ids([[]] * n, masked),
                    "mmu": backbone.mmu_ids(codes[:1], [backbone._encode(cfg.caption_prompt)]) if codes is not None else None},
                   work / "inputs.pt")
        subprocess.run([args.showo_python, str(Path(__file__).with_name("showo_reference.py")), args.showo_reference,
                        str(work)], check=True)
        return torch.load(work / "outputs.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("janus", "showo"))
    parser.add_argument("--widths", nargs="+", default=["tiny", "real"], choices=("tiny", "real"))
    parser.add_argument("--layers", type=int, default=2, help="decoder layers at real width")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--showo-reference", metavar="DIR", help="a checkout of showlab/Show-o to time beside ours")
    parser.add_argument("--showo-python", metavar="PY", default="python", help="a Python that can import DIR")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    for width in args.widths:
        if args.only in (None, "janus"):
            bench_janus(width, args)
        if args.only in (None, "showo"):
            bench_showo(width, args)


if __name__ == "__main__":
    main()
