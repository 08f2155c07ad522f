"""Cost of a Pair-DPO training step, measured side by side in one run.

1. a step with cached reference log-probs vs. with an online frozen reference model (time and peak
   memory; each variant runs in its own fresh process so that its peak RSS is its own);
   Peak memory is the process's resident peak (VmHWM) over training steps, after the model and
   data are set up: the cached variant never builds a second model;
2. a Pair-DPO step vs. a plain cross-entropy step (negative log-likelihood) over the same four
   sequences per example (y_w, y_l given x; x_w, x_l given y).

Run: `python benchmarks/bench_train.py` (default model size, batch 8).
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import time
from pathlib import Path

import torch


def _setup(batch_size: int):
    import tempfile

    from hermesflow.backbones import MaskedEstimator
    from hermesflow.data import read_homologous
    from hermesflow.prefs import CaptionPair, ImagePair, Preference
    from hermesflow.testbed.model import UnifiedConfig, UnifiedModel
    from hermesflow.train import Example, PolicyLogps
    from hermesflow.world.build import write_world

    torch.manual_seed(0)
    model = UnifiedModel(UnifiedConfig())
    folder = Path(tempfile.mkdtemp(prefix="bench-train-")) / "data"
    write_world(folder, batch_size, seed=0, split="train")
    examples = []
    for record in read_homologous(folder).records:
        tokens = tuple(model.prepare_images([record.load_image()])[0].tolist())
        pref = Preference(record.id, 0, record.caption, CaptionPair(record.caption, "a photo of a circle", 1.0, 0.5, "initial"),
                          ImagePair(tokens, (0,) * 16, 1.0, 0.5, "initial"))
        examples.append(Example(record, pref, mask_seed=len(examples)))
    return model, examples, lambda m: PolicyLogps(m, ("und", "gen"), MaskedEstimator())


VARIANTS = ("cached", "online", "cross-entropy")


def _make_step(variant: str, policy, reference, cached, opt, loss_fn, examples):
    from hermesflow.losses import BranchLogps

    def step() -> None:
        logps = policy(examples)
        if variant == "cross-entropy":
            loss = -sum(c.total.mean() + r.total.mean() for c, r in logps.values())
        else:
            if variant == "online":
                with torch.no_grad():
                    ref = reference(examples)
            else:
                ref = cached
            branches = {b: BranchLogps(c.total, r.total, ref[b][0].total, ref[b][1].total) for b, (c, r) in logps.items()}
            loss = loss_fn(**branches).loss.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def _components(batch_size: int, online: bool = True):
    from hermesflow.losses import PairDPOLoss

    model, examples, policy_of = _setup(batch_size)
    policy = policy_of(model).train()
    with torch.no_grad():  # at the start the policy is the reference: no second model is needed
        cached = policy(examples)
    reference = policy_of(copy.deepcopy(model).eval().requires_grad_(False)) if online else None
    opt = torch.optim.SGD(policy.parameters(), lr=0.0)  # lr 0: every variant times the same weights
    return policy, reference, cached, opt, PairDPOLoss("sum"), examples


def interleaved_times(batch_size: int, repeats: int) -> dict[str, float]:
    """Best step time of each variant, measured round-robin in one process so drift hits all alike."""
    policy, reference, cached, opt, loss_fn, examples = _components(batch_size)
    steps = {v: _make_step(v, policy, reference, cached, opt, loss_fn, examples) for v in VARIANTS}
    times = {v: [] for v in VARIANTS}
    for v in VARIANTS:
        steps[v]()
    for _ in range(repeats):
        for v in VARIANTS:
            tic = time.perf_counter()
            steps[v]()
            times[v].append(time.perf_counter() - tic)
    return {v: min(t) for v, t in times.items()}


def _peak_rss(variant: str, batch_size: int, queue) -> None:
    policy, reference, cached, opt, loss_fn, examples = _components(batch_size, online=variant == "online")
    step = _make_step(variant, policy, reference, cached, opt, loss_fn, examples)
    step()
    # Linux: "5" resets the peak (VmHWM), so the peak below is that of training steps alone
    Path("/proc/self/clear_refs").write_text("5")
    for _ in range(3):
        step()
    hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
    queue.put(int(hwm.split()[1]) / 1024)


def peak_rss(variant: str, batch_size: int) -> float:
    """Peak resident memory (MiB) of a fresh process that builds the model and runs the variant."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_peak_rss, args=(variant, batch_size, queue))
    p.start()
    result = queue.get()
    p.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    seconds = interleaved_times(args.batch_size, args.repeats)
    memory = {v: peak_rss(v, args.batch_size) for v in ("cached", "online")}
    for v in VARIANTS:
        shown = f"   peak RSS {memory[v]:8.1f} MiB" if v in memory else ""
        print(f"{v:<14} step {seconds[v] * 1000:8.1f} ms{shown}")
    print(f"cached reference is {seconds['online'] / seconds['cached']:4.2f}x faster than online (goal >= 1.25x), "
          f"peak memory {memory['online'] - memory['cached']:+.1f} MiB for online")
    print(f"Pair-DPO step / cross-entropy step over the same sequences: {seconds['cached'] / seconds['cross-entropy']:4.2f}x (goal <= 1.15x)")

if __name__ == "__main__":
    main()
