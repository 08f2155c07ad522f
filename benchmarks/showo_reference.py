"""Times the official Show-o pipeline for `bench_samplers.py`; run by it in the reference's own
environment, never imported by HermesFlow.

Usage (bench_samplers.py does this): `PY benchmarks/showo_reference.py SHOWO_DIR WORK_DIR`, where
SHOWO_DIR is a checkout of showlab/Show-o (its `models/` and `training/prompting_utils.py` are
imported) and PY a Python that can import it (Show-o pins transformers 4.41). WORK_DIR holds what
bench_samplers.py wrote: `phi/config.json` (the Phi configuration), `weights.safetensors` (the
same weights as ours, under Phi's names) and `inputs.pt` (the sequences and settings). This script
builds `Showo` over them, times `Showo.t2i_generate` (the text-to-image call of
`inference_t2i.py`: the unconditional rows in the same batch, guidance in MUSE's form, the cosine
schedule) and `Showo.mmu_generate` (the captioning call of `inference_mmu.py`, one image at a time
as there), each the best of `repeats` (after a warm-up call when more than one), and writes `outputs.pt` (no captions when `caption_tokens` is 0): the seconds and the
codes t2i_generate drew with `torch.Generator().manual_seed(seed)`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def best_of(fn, repeats: int) -> float:
    """Best of `repeats` timed calls, after a warm-up call unless there is only one."""
    if repeats > 1:
        fn()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return min(times)


def main() -> None:
    showo_dir, work = Path(sys.argv[1]), Path(sys.argv[2])
    sys.path.insert(0, str(showo_dir))
    import torch
    from models.modeling_showo import Showo
    from omegaconf import OmegaConf
    from safetensors.torch import load_file
    from training.prompting_utils import create_attention_mask_for_mmu, create_attention_mask_predict_next

    torch.set_grad_enabled(False)
    inputs = torch.load(work / "inputs.pt")
    s = inputs["settings"]
    dtype = getattr(torch, s["dtype"])
    model = Showo(w_clip_vit=False, vocab_size=s["vocab_size"], llm_vocab_size=s["llm_vocab_size"],
                  llm_model_path=str(work / "phi"), codebook_size=s["codebook_size"], num_vq_tokens=s["num_vq_tokens"],
                  load_from_showo=True)
    missing, unexpected = model.showo.load_state_dict(load_file(work / "weights.safetensors"), strict=False)
    if missing or unexpected:
        raise SystemExit(f"the weights do not fit the official model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.to(dtype).eval()
    config = OmegaConf.create({"model": {"showo": {"num_vq_tokens": s["num_vq_tokens"], "num_new_special_tokens": 10,
                                                    "llm_vocab_size": s["llm_vocab_size"]}},
                               "dataset": {"preprocessing": {"max_seq_length": s["max_seq_length"]}}})
    cond, uncond = inputs["t2i_cond"], inputs["t2i_uncond"]
    mask = create_attention_mask_predict_next(torch.cat([cond, uncond]), pad_id=s["pad_id"], soi_id=s["soi_id"],
                                              eoi_id=s["eoi_id"], rm_pad_in_image=True).to(dtype)

    def images(seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        return model.t2i_generate(input_ids=cond.clone(), uncond_input_ids=uncond.clone(), attention_mask=mask,
                                  guidance_scale=s["guidance"], temperature=1.0, timesteps=s["steps"],
                                  generator=generator, config=config)

    out = {"images_seconds": best_of(images, s["repeats"]), "caption_seconds": None, "codes": images(s["seed"])}
    if s["caption_tokens"]:
        mmu = inputs["mmu"]  # one understanding sequence: [mmu][soi] image [eoi][bos] prompt
        mmu_mask = create_attention_mask_for_mmu(mmu, eoi_id=s["eoi_id"]).to(dtype)
        out["caption_seconds"] = best_of(lambda: model.mmu_generate(
            mmu, attention_mask=mmu_mask, max_new_tokens=s["caption_tokens"], temperature=1.0, top_k=None, eot_token=None),
            s["repeats"])
    torch.save(out, work / "outputs.pt")


if __name__ == "__main__":
    main()
