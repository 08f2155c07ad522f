"""Cost of a Pair-DPO training step, measured side by side in one run.

1. a step with cached reference log-probs vs. with an online frozen reference model (time and peak
   memory; each variant runs in its own fresh process so that its peak RSS is its own);
2. a Pair-DPO step vs. a plain cross-entropy step (negative log-likelihood) over the same four
   sequences per example (y_w, y_l given x; x_w, x_l given y).

Run: `python benchmarks/bench_train.py` (default model size, batch 8).
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import resource
import time

import torch


def _setup(batch_size: int):
    from hermesflow.model import UnifiedConfig, UnifiedModel
    from hermesflow.settings import TrainConfig
    from hermesflow.train import Example, PolicyLogps
    from hermesflow.world.build import world_records

    torch.manual_seed(0)
    model = UnifiedModel(UnifiedConfig())
    cfg = TrainConfig()
    examples = []
    for record, image in world_records(batch_size, seed=0, split="train"):
        tokens = model.encode_images(image[None])[0].tolist()
        examples.append(Example(record["id"], tokens, record["caption"], record["caption"], "a photo of a circle",
                                tokens, [0] * 16, mask_seed=len(examples)))
    return model, cfg, examples, PolicyLogps


def _step_time(variant: str, batch_size: int, repeats: int, queue) -> None:
    from hermesflow.losses import PairDPOLoss, PairLogps

    model, cfg, examples, PolicyLogps = _setup(batch_size)
    policy = PolicyLogps(model, cfg).train()
    reference = PolicyLogps(copy.deepcopy(model).eval().requires_grad_(False), cfg)
    with torch.no_grad():
        cached = reference(examples)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    loss_fn = PairDPOLoss("sum")
    if variant == "online":
        del cached

    def step() -> None:
        logps = policy(examples)
        if variant == "cross-entropy":
            loss = -sum(v.mean() for v in logps.values())
        else:
            if variant == "online":
                with torch.no_grad():
                    ref = reference(examples)
            else:
                ref = cached
            pair = PairLogps(**{f"policy_{k}": v for k, v in logps.items()}, **{f"ref_{k}": v for k, v in ref.items()})
            loss = loss_fn(pair).loss.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    if variant == "cached":
        del reference  # with cached log-probs no second model stays in memory
    step()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        step()
        times.append(time.perf_counter() - tic)
    queue.put((min(times), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def measure(variant: str, batch_size: int, repeats: int) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_step_time, args=(variant, batch_size, repeats, queue))
    p.start()
    result = queue.get()
    p.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    results = {v: measure(v, args.batch_size, args.repeats) for v in ("cached", "online", "cross-entropy")}
    for v, (seconds, rss) in results.items():
        print(f"{v:<14} step {seconds * 1000:8.1f} ms   peak RSS {rss:8.1f} MiB")
    cached, online, ce = results["cached"][0], results["online"][0], results["cross-entropy"][0]
    print(f"cached reference is {online / cached:4.2f}x faster than online (goal >= 1.25x), "
          f"peak memory {results['online'][1] - results['cached'][1]:+.1f} MiB for online")
    print(f"Pair-DPO step / cross-entropy step over the same sequences: {cached / ce:4.2f}x (goal <= 1.15x)")


if __name__ == "__main__":
    main()
