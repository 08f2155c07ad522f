"""Cost of one training step of each image objective, relative to a plain Pair-DPO step, measured
side by side in one run on the shipped base model.

The baseline is the first version's step: `sum` loss, image DPO, masks fixed per round, every
reference log-prob cached. Each other variant changes one thing: the image objective (`dpop`,
`apo_zero`, `cal_dpo`: the same four log-probs, other arithmetic; `sft`: the chosen image only, no
rejected image, no image reference), and the mask draws (`step`, the default now: fresh masks each
step, so the image reference is computed online by a frozen copy with the same masks). Every step
goes through the training loop's own pieces (`PolicyLogps`, `_reference`, `branch_logps`, the
configured loss), with SGD at lr 0 so that every variant times the same weights. Variants run
round-robin, so drift hits all alike. Each is timed by its median CPU time over `--repeats` steps
on one thread (`--threads`): on a machine shared with other work, wall-clock minima swing by 2x
between variants that do identical work, CPU time of a single thread much less. Wall time is shown
beside it.

Run: `python benchmarks/bench_objectives.py` (shipped base, batch 8; a few minutes on this shared machine).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

BASE = Path(__file__).resolve().parents[1] / "hermesflow" / "assets" / "base"
OBJECTIVES = ("dpo", "dpop", "apo_zero", "cal_dpo", "sft")


def setup(batch_size: int):
    """The shipped base, and one batch of tuples from the world: each record's own image over
    another record's, its caption over another's."""
    from hermesflow.backbones import load_backbone
    from hermesflow.data import read_homologous
    from hermesflow.prefs import CaptionPair, ImagePair, Preference
    from hermesflow.train import Example
    from hermesflow.world.build import write_world

    model = load_backbone(BASE)
    folder = write_world(Path(tempfile.mkdtemp(prefix="bench-objectives-")) / "data", batch_size, seed=0, split="train")
    records = read_homologous(folder).records
    tokens = [tuple(model.prepare_images([r.load_image()])[0].tolist()) for r in records]
    examples = []
    for i, r in enumerate(records):
        j = (i + 1) % len(records)
        pref = Preference(r.id, 0, r.caption, CaptionPair(r.caption, records[j].caption, 1.0, 0.5, "initial"),
                          ImagePair(tokens[i], tokens[j], 1.0, 0.5, "initial"))
        examples.append(Example(r, pref, mask_seed=1000 + i))
    return model, examples


def make_step(cfg, model, frozen, examples, accelerator):
    """One training step of the configured variant, as the loop runs it; returns a callable(step)."""
    from hermesflow.losses import BRANCHES
    from hermesflow.train import (
        PolicyLogps,
        _reference,
        branch_logps,
        estimator_of,
        loss_of,
        mask_seeds,
        reference_branches,
        reference_logps,
        sft_weights,
    )

    loss_fn = loss_of(cfg)
    branches = BRANCHES[cfg.loss_type]
    positive_only = not loss_fn.needs_pair("gen")
    policy = PolicyLogps(model, branches, estimator_of(model, cfg), gen_rejected=not positive_only)
    cached, online = reference_branches(cfg, not positive_only)
    refs = reference_logps(PolicyLogps(model, cached, policy.estimator), examples, cfg, accelerator) if cached else None
    reference = PolicyLogps(frozen, online, policy.estimator) if online else None
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    uncond = [False] * len(examples)

    def step(i: int) -> None:
        seeds = mask_seeds(examples, i, cfg.mask_draws)
        logps = policy(examples, uncond, seeds)
        ref = _reference(policy, reference, refs, cached, online, examples, uncond, seeds, cfg, accelerator)
        weight = sft_weights(examples, cfg.sft_min_accuracy) if positive_only else None
        logs = {b: branch_logps(c, r, ref.get(b), cfg, weight if b == "gen" else None) for b, (c, r) in logps.items()}
        loss = loss_fn(**logs).loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def variants() -> dict[str, dict]:
    """Name -> the options that differ from the baseline (first: the baseline itself)."""
    out = {"dpo, round masks (baseline)": {"gen_objective": "dpo", "mask_draws": "round"}}
    for objective in OBJECTIVES[1:]:
        out[f"{objective}, round masks"] = {"gen_objective": objective, "mask_draws": "round"}
    for objective in OBJECTIVES:
        out[f"{objective}, step masks"] = {"gen_objective": objective, "mask_draws": "step"}
    return out


def main() -> None:
    from hermesflow.loop import make_accelerator
    from hermesflow.options import TrainingOptions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, examples = setup(args.batch_size)
    model.train()
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    base = TrainingOptions(batch_size=args.batch_size)
    accelerator = make_accelerator("fp32")
    steps = {name: make_step(replace(base, **opts), model, frozen, examples, accelerator) for name, opts in variants().items()}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    wall: dict[str, list[float]] = {name: [] for name in steps}
    for name, step in steps.items():  # warm-up
        step(0)
    for i in range(1, args.repeats + 1):
        for name, step in steps.items():
            tic, tic_cpu = time.perf_counter(), time.process_time()
            step(i)
            cpu[name].append(time.process_time() - tic_cpu)
            wall[name].append(time.perf_counter() - tic)
    cpu_s = {name: statistics.median(t) for name, t in cpu.items()}
    wall_s = {name: statistics.median(t) for name, t in wall.items()}
    base_cpu, base_wall = next(iter(cpu_s.values())), next(iter(wall_s.values()))
    print(f"one training step, batch {args.batch_size}, shipped base, median of {args.repeats}, {torch.get_num_threads()} thread(s)")
    print(f"{'variant':<30} {'CPU ms':>8} {'ratio':>6}   {'wall ms':>8} {'ratio':>6}")
    for name in steps:
        print(f"{name:<30} {cpu_s[name] * 1000:8.1f} {cpu_s[name] / base_cpu:5.2f}x   "
              f"{wall_s[name] * 1000:8.1f} {wall_s[name] / base_wall:5.2f}x")


if __name__ == "__main__":
    main()
