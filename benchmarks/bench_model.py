"""Speed of a backbone, measured side by side in one run.

1. image generation: one prompt x 8 samples in one batch vs 8 sequential calls, in fp32 and bf16
   (any backbone: `--model DIR`, e.g. a Janus folder);
2. built-in model only: caption sampling with the KV cache vs recomputing the whole sequence each
   token (16-token captions), and the pretraining step's achieved GFLOP/s (FLOPs counted by torch's
   FlopCounterMode) over a plain fp32 matmul's GFLOP/s on this machine.

Run: `python benchmarks/bench_model.py` (an untrained default-size built-in model; `--model DIR` to
time a saved model of any backbone).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from hermesflow.backbones import GenerationConfig, load_backbone
from hermesflow.testbed.model import UnifiedConfig, UnifiedModel
from hermesflow.testbed.pretrain import losses, make_batch
from hermesflow.world.build import world_records


def best_of(fn, repeats: int = 3) -> float:
    """Best wall time of `repeats` calls after one warm-up call (seconds)."""
    fn()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return min(times)


def bench_captions(model: UnifiedModel, images: np.ndarray) -> None:
    # An untrained model rarely emits [EOS], so every batch runs the full 16 tokens.
    codes, gen = model.prepare_images(images), GenerationConfig(temperature=1.0)
    cached = best_of(lambda: model.sample_captions(codes, 1, gen, use_cache=True))
    full = best_of(lambda: model.sample_captions(codes, 1, gen, use_cache=False))
    n = len(images)
    print(f"captions, {n} images x 16 tokens: KV cache {n / cached:8.1f}/s   recompute {n / full:8.1f}/s   "
          f"speed-up {full / cached:5.2f}x (goal >= 3x)")


def bench_generation(model, label: str) -> None:
    prompt = "a photo of a red circle and a blue square"
    batched = best_of(lambda: model.generate([prompt], 8, GenerationConfig(steps=10, guidance=2.0)))
    sequential = best_of(lambda: [model.generate([prompt], 1, GenerationConfig(steps=10, guidance=2.0, seed=s)) for s in range(8)])
    print(f"images ({label}), 1 prompt x 8 samples: batched {8 / batched:8.1f}/s   sequential {8 / sequential:8.1f}/s   "
          f"speed-up {sequential / batched:5.2f}x (goal >= 4x)")


def bench_training(model: UnifiedModel, batch_size: int) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = make_batch(model, 0, 0, batch_size, 0.1)

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = sum(losses(model, batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        step(False)
    flops = counter.get_total_flops()
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    matmul = best_of(lambda: a @ b, repeats=10)
    matmul_gflops = 2 * 1024**3 / matmul / 1e9
    print(f"matmul fp32 1024^3: {matmul_gflops:7.1f} GFLOP/s")
    model.train()
    for bf16 in (False, True):
        seconds = best_of(lambda: step(bf16))
        achieved = flops / seconds / 1e9
        print(f"pretrain step ({'bf16' if bf16 else 'fp32'}, batch {batch_size}, {flops / 1e9:.1f} GFLOP): "
              f"{seconds * 1000:7.1f} ms  {achieved:7.1f} GFLOP/s  = {achieved / matmul_gflops:5.2f}x the fp32 matmul")
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a saved model folder of any backbone (default: an untrained default-size built-in model)")
    parser.add_argument("--batch-size", type=int, default=63)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_backbone(args.model) if args.model else UnifiedModel(UnifiedConfig())
    model.eval()
    print(f"model: {model.model_type}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"torch threads {torch.get_num_threads()}")
    bench_generation(model, "fp32")
    bench_generation(load_backbone(args.model, "bf16") if args.model else model.bfloat16(), "bf16")
    if isinstance(model, UnifiedModel):
        model.float()
        images = np.stack([image for _, image in world_records(64, seed=0, split="eval")])
        bench_captions(model, images)
        bench_training(model, args.batch_size)


if __name__ == "__main__":
    main()
