"""What sampling on sharded weights costs beside whole weights: two processes (torchrun, gloo on CPU),
each doing the same curation-like work (images for its prompts, captions of them, multiple-choice
answers about them), first on the whole weights (as under DDP), then on the same model sharded over
the two (`Backbone.shard`, `Backbone.inference`: each block gathered for its forward, every decoding
step). Prints the median wall time of each over `--repeats`, their ratio, and the share of the
weights each process holds, side by side from one run.

On GPUs the gathers run on NVLink or InfiniBand beside the compute; here they are gloo over loopback
on two cores, so the ratio is an upper bound of the cost on this machine, not a GPU figure.

Run: `python benchmarks/bench_sharding.py [--model FOLDER] [--prompts 8] [--repeats 3]` (it starts
its two processes itself; the shipped built-in model by default, about a minute).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch


def work(model, prompts: int) -> None:
    """One process's share of a curation batch: 2 images per prompt, 2 captions per image, an answer each."""
    from hermesflow.backbones import GenerationConfig

    gen = GenerationConfig(guidance=2.0, temperature=1.0, steps=10, seed=0)
    texts = ["a red circle", "two blue squares", "a green triangle above a yellow circle", "three purple squares"]
    with model.sampling():
        tokens = model.generate([texts[i % len(texts)] for i in range(prompts)], 2, gen)
        inputs = model.prepare_generated(tokens)
        model.sample_captions(inputs, 2, gen)
        model.choice_logps(inputs, ["what color is the circle?"] * len(inputs), [["red", "blue", "green"]] * len(inputs))


def timed(model, prompts: int, repeats: int) -> float:
    import torch.distributed as dist

    times = []
    for _ in range(repeats):
        dist.barrier()
        tic = time.perf_counter()
        work(model, prompts)
        dist.barrier()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def run(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from hermesflow.backbones import BASE_MODEL, load_backbone
    from hermesflow.sharding import held_fraction

    dist.init_process_group("gloo")
    folder = args.model or BASE_MODEL
    whole = load_backbone(folder).eval()
    n = sum(p.numel() for p in whole.parameters())
    whole_s = timed(whole, args.prompts, args.repeats)
    sharded = load_backbone(folder).eval().shard()
    held = held_fraction(sharded)
    with sharded.inference():
        sharded_s = timed(sharded, args.prompts, args.repeats)
    if dist.get_rank() == 0:
        print(f"model {folder} ({n / 1e6:.1f} M parameters, fp32), 2 processes (gloo, CPU), {args.prompts} prompts each, "
              f"median of {args.repeats}")
        print(f"  whole weights on each process: {whole_s:.2f} s")
        print(f"  sharded over the two:         {sharded_s:.2f} s  ({sharded_s / whole_s:.2f}x), each process holding "
              f"{held:.2f} of the weights")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if "RANK" not in os.environ:  # start the two processes
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561", __file__, *sys.argv[1:]]
        raise SystemExit(subprocess.call(cmd, env=env))
    torch.manual_seed(0)
    run(args)


if __name__ == "__main__":
    main()
