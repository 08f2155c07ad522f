"""The one training loop every objective here runs on: Pair-DPO (`train`), online GRPO (`grpo`) and
the built-in model's pretraining (`testbed.pretrain`).

`TrainingLoop` owns what they share, so it is written once: the accelerator (device, precision,
trackers), AdamW over the trainable parameters with a learning rate per step (by default a linear
warm-up and cosine decay; the step sets it, so a resumed run needs no scheduler state), resume from
`out/state` (accelerate's `save_state`, written to a temporary folder and swapped in place), the
metrics rows of `out/metrics.jsonl` (cut back to the resumed step, one line per step), the progress
bar, and the guard that skips non-finite losses and stops after several in a row. An objective
supplies only its step.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from hermesflow.accel import check_launch, cpu_only
from hermesflow.errors import HermesFlowError, UsageError
from hermesflow.io import atomic_write_json, keep_rows_up_to
from hermesflow.options import TrainingOptions
from hermesflow.sharding import check_sharding, is_sharded, load_state, save_state
from hermesflow.stages import say


def make_accelerator(dtype: str, report_to: str = "", cpu: bool = False):
    """The accelerator picks the device (the CPU when `cpu`); bf16 trains in mixed precision over fp32
    weights. A loss that leaves part of a model unused (a one-branch loss on Janus) needs DDP to look
    for unused parameters."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    check_launch()
    return Accelerator(cpu=cpu or cpu_only(), mixed_precision="bf16" if dtype == "bf16" else "no", log_with=report_to or None,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def lr_lambda(warmup: int, steps: int):
    """Linear warm-up, then cosine decay to zero. Kept over transformers' get_cosine_schedule_with_warmup,
    whose first step runs at learning rate 0 (a wasted step); here step 0 runs at lr / warmup."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


class TrainingLoop:
    """One training run's shared machinery, in `out` with the optimiser settings of `training`.

        loop = TrainingLoop(out, training, dtype, "train", "training")
        policy, inner = loop.prepare(policy)
        for step in loop.steps():
            ... the objective's step: loss, loop.finite(loss, step), backward, loop.clip(policy),
            loop.set_lr(step), loop.opt.step() ...
            loop.record(step, row, postfix)
        loop.finish()
    """

    def __init__(self, out: Path, training: TrainingOptions, dtype: str, desc: str, name: str,
                 lr_at: Callable[[int], float] | None = None, betas: tuple[float, float] = (0.9, 0.999), cpu: bool = False):
        """`desc` labels the progress bar, `name` the resume message ("resuming: training from step 100
        ..."); `lr_at(step)` is the learning rate of each step (default: `training.lr` times `lr_lambda`)."""
        self.out, self.training, self.desc, self.name, self.betas = Path(out), training, desc, name, betas
        factor = lr_lambda(training.warmup, training.train_steps)
        self.lr_at = lr_at or (lambda step: training.lr * factor(step))
        self.accelerator = make_accelerator(dtype, training.report_to, cpu)
        check_sharding(training.sharding, self.accelerator.num_processes)
        self.state_dir = self.out / "state"
        self.start = self.skipped = self._in_a_row = 0
        self.opt = self.policy = None
        self._metrics = None

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def sharded(self) -> bool:
        return self.training.sharding == "fsdp"

    def prepare(self, policy: nn.Module) -> tuple[nn.Module, nn.Module]:
        """AdamW over the policy's trainable parameters, prepared by the accelerator with the policy
        (with --sharding fsdp the policy comes sharded, `sharding.shard`, before a frozen reference is
        copied from it, and only the optimizer is prepared); then the saved state, if any. Returns
        (policy, the unwrapped policy)."""
        policy.train()
        t, accelerator = self.training, self.accelerator
        if self.sharded and not is_sharded(policy):
            raise RuntimeError("--sharding fsdp: the policy must be sharded before TrainingLoop.prepare")
        self.opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=t.lr, weight_decay=t.weight_decay,
                                     betas=self.betas)
        if self.sharded:
            self.opt = accelerator.prepare(self.opt)
        else:
            policy, self.opt = accelerator.prepare(policy, self.opt)
        self.policy = policy
        if (self.state_dir / "step.json").exists():
            saved = json.loads((self.state_dir / "step.json").read_text())
            self._check_state(saved)
            if self.sharded:
                load_state(policy, self.opt.optimizer, self.state_dir)
            else:
                # a state saved before the rate followed from the step holds its scheduler: redundant now, and
                # accelerate refuses a folder whose custom objects it was not told of
                old_scheduler = self.state_dir / "custom_checkpoint_0.pkl"
                if self.main and old_scheduler.exists():
                    old_scheduler.unlink()
                accelerator.wait_for_everyone()
                accelerator.load_state(str(self.state_dir))
            self.start, self.skipped = saved["step"], saved.get("skipped_nonfinite", 0)
            if self.main:
                say(f"resuming: {self.name} from step {self.start} of {t.train_steps} ({self.state_dir})")
        return policy, accelerator.unwrap_model(policy)

    def _check_state(self, saved: dict) -> None:
        """A saved state resumes only as it was saved: a sharded one at its number of processes (its files
        hold each process's part of the optimizer), an unsharded one unsharded."""
        sharding, processes = saved.get("sharding", "ddp"), saved.get("processes")
        if sharding != self.training.sharding:
            raise UsageError(f"{self.state_dir} was saved with --sharding {sharding}; resume it with --sharding {sharding}, "
                             f"or start again with a new --out")
        if self.sharded and processes != self.accelerator.num_processes:
            raise UsageError(f"{self.state_dir} holds a sharded state of {processes} processes; resume it with {processes} "
                             f"(this launch has {self.accelerator.num_processes}), or start again with a new --out")

    def steps(self, trackers_config: dict | None = None) -> Iterator[int]:
        """The steps still to run, under a progress bar; metrics rows past the resumed step are cut."""
        self.out.mkdir(parents=True, exist_ok=True)
        if self.training.report_to:
            self.accelerator.init_trackers("hermesflow", config={k: str(v) for k, v in (trackers_config or {}).items()})
        if self.main:
            keep_rows_up_to(self.out / "metrics.jsonl", self.start)
            self._metrics = open(self.out / "metrics.jsonl", "a", encoding="utf-8")
        total = self.training.train_steps
        self.bar = tqdm(range(self.start, total), initial=self.start, total=total, desc=self.desc, disable=not self.main,
                        dynamic_ncols=True)
        return iter(self.bar)

    def set_lr(self, step: int) -> float:
        """Set (and return) the learning rate of `step` before the optimiser steps."""
        lr = self.lr_at(step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        return lr

    def finite(self, loss: torch.Tensor, step: int) -> bool:
        """Whether the loss is finite on every process. A non-finite step is skipped and counted;
        `max_nonfinite` in a row stop training."""
        device = self.accelerator.device
        if self.accelerator.reduce(torch.tensor(float(torch.isfinite(loss)), device=device), reduction="mean").item() == 1.0:
            self._in_a_row = 0
            return True
        self._in_a_row, self.skipped = self._in_a_row + 1, self.skipped + 1
        if self._in_a_row >= self.training.max_nonfinite:
            raise HermesFlowError(f"training stopped: {self._in_a_row} non-finite losses in a row at step {step} "
                                  f"(lower --lr or --beta-gen, or use --length-normalize)")
        return False

    def clip(self, policy: nn.Module) -> None:
        if self.training.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(policy.parameters(), self.training.max_grad_norm)

    def record(self, step: int, row: dict | None, postfix: dict | None = None) -> None:
        """After step `step` (0-based) has updated the weights: write its metrics row (if any), and save
        the state every `save_every` steps (not after the last: the caller writes the model)."""
        if row is not None and self.training.report_to:
            self.accelerator.log(row, step=step + 1)
        if row is not None and self._metrics is not None:
            self._metrics.write(json.dumps(row) + "\n")
            self._metrics.flush()
            if postfix:
                self.bar.set_postfix(postfix)
        every, total = self.training.save_every, self.training.train_steps
        if every and (step + 1) % every == 0 and step + 1 < total:
            self.save(step + 1)

    def save(self, step: int) -> None:
        """The state (accelerate's save_state, or the sharded state) into a temporary folder, then swapped in place."""
        accelerator, tmp = self.accelerator, self.state_dir.with_name("state.tmp")
        meta = {"step": step, "skipped_nonfinite": self.skipped, "sharding": self.training.sharding,
                "processes": accelerator.num_processes}
        if self.main:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        if self.sharded:
            save_state(self.policy, self.opt.optimizer, tmp)
        else:
            accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if self.main:
            atomic_write_json(tmp / "step.json", meta)
            old = self.state_dir.with_name("state.old")
            shutil.rmtree(old, ignore_errors=True)
            if self.state_dir.exists():
                self.state_dir.rename(old)
            tmp.rename(self.state_dir)
            shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    def finish(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
        if self.training.report_to:
            self.accelerator.end_training()
        self.accelerator.wait_for_everyone()
