"""Cost of one online GRPO step relative to one Pair-DPO step, on the shipped base, side by side in one run.

- Pair-DPO: the default recipe's step on a batch of 8 tuples: policy log-probs of both branches
  (caption pair; image pair under one random mask), the image reference online from a frozen copy
  with the step's masks, the loss, backward and an AdamW step.
- GRPO (`hermesflow.grpo.grpo_step` itself, default options unless told): sample G images for each of
  B captions with the policy (MaskGIT, guidance, recording the trajectory), reward them by self-VQA,
  then μ clipped-ratio updates; with the trajectory estimator (sampler's logits) and with the
  random-mask one. The sampling-and-reward part is also timed alone.

The variants run interleaved (one step of each per repeat, after a warm-up step of each), so machine
noise falls on all alike; the learning rate is 0, so every step times the same weights. The ratio
is median GRPO step time / median Pair-DPO step time.

Run: `python benchmarks/bench_grpo.py` (about 2 minutes on 2 cores; --repeats, --prompts, --group).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch


def dpo_step_fn(model, records, batch_size: int):
    """A closure running one Pair-DPO step of the default recipe on `batch_size` tuples."""
    from hermesflow.options import TrainingOptions
    from hermesflow.prefs import CaptionPair, ImagePair, Preference
    from hermesflow.train import Example, PolicyLogps, branch_logps, estimator_of, loss_of, mask_seeds

    cfg = TrainingOptions()
    examples = []
    for record in records[:batch_size]:
        tokens = tuple(model.prepare_images([record.load_image()])[0].tolist())
        pref = Preference(record.id, 0, record.caption, CaptionPair(record.caption, "a photo of a circle", 1.0, 0.5, "initial"),
                          ImagePair(tokens, (0,) * len(tokens), 1.0, 0.5, "initial"))
        examples.append(Example(record, pref, mask_seed=len(examples)))
    policy = PolicyLogps(model, ("und", "gen"), estimator_of(model, cfg)).train()
    reference = PolicyLogps(copy.deepcopy(model).eval().requires_grad_(False), ("gen",), policy.estimator)
    with torch.no_grad():
        cached_und = policy(examples, branches=("und",))["und"]
    loss_fn = loss_of(cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)
    step_index = [0]

    def step() -> None:
        seeds = mask_seeds(examples, step_index[0], cfg.mask_draws)
        step_index[0] += 1
        logps = policy(examples, None, seeds)
        with torch.no_grad():
            ref_gen = reference(examples, None, seeds)["gen"]
        refs = {"und": (cached_und[0].total, cached_und[1].total), "gen": (ref_gen[0].total, ref_gen[1].total)}
        logs = {b: branch_logps(c, r, refs[b], cfg) for b, (c, r) in logps.items()}
        loss = loss_fn(**logs).loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def grpo_step_fn(model, records, cfg):
    """A closure running `grpo_step` (the real one) with the given options, and one timing only its
    sampling and rewards."""
    from hermesflow.backbones import GenerationConfig
    from hermesflow.grpo import ImageLogps, grpo_estimator, grpo_step, sample_rollout, self_vqa_rewards
    from hermesflow.loop import make_accelerator
    from hermesflow.recipes.run import sampler_of

    accelerator = make_accelerator(cfg.dtype)
    sampler = sampler_of(cfg.curation, model)
    policy = ImageLogps(model, grpo_estimator(model, cfg.grpo, cfg.training, sampler)).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)
    step_index = [0]

    def step() -> dict:
        row = grpo_step(policy, policy, None, opt, accelerator, records, cfg.grpo, cfg.training, sampler, cfg.seed, step_index[0])
        step_index[0] += 1
        return row

    def sample_only() -> None:
        local = records[: cfg.grpo.grpo_prompts]
        gen = GenerationConfig(guidance=sampler.guidance, temperature=sampler.temperature, steps=sampler.steps, seed=step_index[0])
        rollout = sample_rollout(model, local, cfg.grpo.grpo_group, gen, cfg.grpo.grpo_estimator == "trajectory", 0)
        with model.sampling():
            self_vqa_rewards(model, rollout.tokens, [r for r in local for _ in range(cfg.grpo.grpo_group)], cfg.grpo.grpo_reward)

    return step, sample_only


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped base)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8, help="Pair-DPO tuples per step (the default recipe's)")
    parser.add_argument("--prompts", type=int, default=4, help="GRPO captions per step (--grpo-prompts)")
    parser.add_argument("--group", type=int, default=8, help="GRPO images per caption (--grpo-group)")
    parser.add_argument("--inner-steps", type=int, default=2, help="GRPO μ (--grpo-inner-steps)")
    args = parser.parse_args()

    from hermesflow import config
    from hermesflow.backbones import BASE_MODEL, load_backbone
    from hermesflow.data import read_homologous
    from hermesflow.settings import RunConfig
    from hermesflow.world.build import write_world

    model = load_backbone(args.model or BASE_MODEL, "fp32")
    folder = Path(tempfile.mkdtemp(prefix="bench-grpo-")) / "data"
    write_world(folder, max(args.batch_size, args.prompts) * 4, seed=0, split="train")
    records = list(read_homologous(folder).records)

    variants = {"pair-dpo": dpo_step_fn(model, records, args.batch_size)}
    for estimator in ("trajectory", "random_mask"):
        cfg = config.build(RunConfig, out=Path("."), recipe="grpo", grpo_prompts=args.prompts, grpo_group=args.group,
                        grpo_inner_steps=args.inner_steps, grpo_estimator=estimator)
        step, sample_only = grpo_step_fn(model, records, cfg)
        variants[f"grpo {estimator}"] = step
        if estimator == "trajectory":
            variants["grpo sampling+reward only"] = sample_only
    for fn in variants.values():  # warm-up
        fn()
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn))
    base = statistics.median(times["pair-dpo"])
    print(f"model {args.model or BASE_MODEL}; Pair-DPO batch {args.batch_size}; GRPO {args.prompts} captions x {args.group} images, "
          f"mu {args.inner_steps}, 10 MaskGIT steps, guidance 2; {args.repeats} repeats, {torch.get_num_threads()} threads")
    print(f"{'variant':<28}{'median s/step':>14}{'x Pair-DPO':>12}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<28}{median:>14.3f}{median / base:>12.1f}")


if __name__ == "__main__":
    main()
