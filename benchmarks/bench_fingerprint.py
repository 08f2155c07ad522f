"""What the weights' fingerprint costs on a model of 1 B parameters in bf16 (2 GB), built here.

The fingerprint (`BackboneBase.fingerprint`: sha1 over every tensor's name, dtype, shape and bytes)
names the weights in every stage's settings and in the cached reference's key, so a round hashes
its model once per stage (curation, training, evaluation). This prints its median wall time over
`--repeats` calls, the rate in GB/s, and the time to read the same bytes without hashing (a copy
to bytes), side by side, so the hash's share is visible.

Run: `python benchmarks/bench_fingerprint.py` (about 2.5 GB of memory, under a minute).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn


def model(params: float, width: int) -> nn.Module:
    """A stack of bf16 linear layers of `width` (weights left uninitialised: the bytes are hashed as they are)."""
    layers = max(1, round(params / (width * width)))
    return nn.Sequential(*(nn.Linear(width, width, bias=False, dtype=torch.bfloat16, device="cpu") for _ in range(layers)))


def main() -> None:
    from hermesflow.backbones import BackboneBase

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=1e9)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with torch.device("meta"):
        frame = model(args.params, args.width)
    net = frame.to_empty(device="cpu")
    n = sum(p.numel() for p in net.parameters())
    size = sum(p.numel() * p.element_size() for p in net.parameters())
    times = {"fingerprint": [], "read bytes only": []}
    for _ in range(args.repeats):
        tic = time.perf_counter()
        BackboneBase.fingerprint(net)
        times["fingerprint"].append(time.perf_counter() - tic)
        tic = time.perf_counter()
        for tensor in net.state_dict().values():
            tensor.detach().contiguous().view(torch.uint8).numpy().tobytes()
        times["read bytes only"].append(time.perf_counter() - tic)
    print(f"{n / 1e9:.2f} B parameters, bf16, {size / 1e9:.2f} GB; median of {args.repeats}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<16} {median:6.2f} s  ({size / 1e9 / median:.2f} GB/s)")
    print(f"  hashing / reading: {statistics.median(times['fingerprint']) / statistics.median(times['read bytes only']):.1f}x")


if __name__ == "__main__":
    main()
