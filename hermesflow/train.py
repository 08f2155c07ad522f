"""Pair-DPO training on one round's preference data, through Hugging Face `accelerate`.

The loop only wires components: the rows and the reference log-probs of a round (`reference`),
the policy log-probs (`PolicyLogps`, an nn.Module so that DDP sees one forward), and a loss from
`hermesflow.losses`. Batches are a pure function of (seed, step), and each process takes its
slice of the global batch, so a run resumed from `save_state` continues exactly, and N processes
match one process with the same global batch.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from hermesflow.errors import DataError, HermesFlowError, UsageError
from hermesflow.io import atomic_write_json, keep_rows_up_to
from hermesflow.losses import PairDPOLoss, PairLogps
from hermesflow.settings import TrainConfig


@dataclass
class Example:
    """One homologous training tuple (x, y, x_w, x_l, y_w, y_l) with its cached reference log-probs."""

    id: str
    image_tokens: list[int]
    caption: str
    und_chosen: str
    und_rejected: str
    gen_chosen: list[int]
    gen_rejected: list[int]
    mask_seed: int
    ref: dict[str, float] | None = None


class PolicyLogps(nn.Module):
    """Log-probs of the four sides of a batch of tuples under the wrapped backbone.

    The gen branch uses the same mask seeds for chosen and rejected, and for policy and reference."""

    def __init__(self, backbone: nn.Module, cfg: TrainConfig):
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg

    def forward(self, batch: list[Example], uncond: list[bool] | None = None) -> dict[str, torch.Tensor]:
        """`uncond[i]` scores example i's images under the empty prompt (condition dropout)."""
        b = self.backbone
        cfg = self.cfg
        images = torch.tensor([e.image_tokens for e in batch] * 2)
        captions = [e.und_chosen for e in batch] + [e.und_rejected for e in batch]
        und = b.caption_logprob(images, captions, average=cfg.length_normalize)
        uncond = uncond or [False] * len(batch)
        prompts = ["" if u else e.caption for e, u in zip(batch, uncond)] * 2
        tokens = torch.tensor([e.gen_chosen for e in batch] + [e.gen_rejected for e in batch])
        seeds = [e.mask_seed for e in batch] * 2
        gen = b.image_logprob(prompts, tokens, seeds, samples=cfg.mask_samples,
                              ratio_weighting=cfg.ratio_weighting, average=cfg.length_normalize)
        n = len(batch)
        return {"und_chosen": und[:n], "und_rejected": und[n:], "gen_chosen": gen[:n], "gen_rejected": gen[n:]}


def examples_from_rows(rows: list[dict], images: dict[str, list[int]], loss_type: str, seed: int) -> list[Example]:
    """Training tuples from preference rows joined with the data's image tokens by id.
    Pair-DPO needs both pairs of a row; a one-branch loss needs only its own."""
    need = {"und": ("und",), "gen": ("gen",)}.get(loss_type, ("und", "gen"))
    missing = [row["id"] for row in rows if row["id"] not in images]
    if missing:
        raise DataError([f"preference rows name ids that the data does not hold: {missing[:5]} ({len(missing)} in all); "
                         "pass the --data the round was curated from"])
    out = []
    for row in rows:
        if not all("chosen" in row[k] for k in need):
            continue
        und, gen = row["und"], row["gen"]
        out.append(Example(
            id=row["id"],
            image_tokens=images[row["id"]],
            caption=row["caption"],
            und_chosen=und.get("chosen", row["caption"]),
            und_rejected=und.get("rejected", row["caption"]),
            gen_chosen=gen.get("chosen", [0] * 16),
            gen_rejected=gen.get("rejected", [0] * 16),
            mask_seed=_mask_seed(seed, row["round"], row["id"]),
        ))
    return out


def _mask_seed(seed: int, round_index: int, example_id: str) -> int:
    return random.Random(f"mask/{seed}/{round_index}/{example_id}").randrange(2**31)


@torch.no_grad()
def precompute_reference(model: nn.Module, examples: list[Example], cfg: TrainConfig, batch_size: int = 64) -> dict[str, dict]:
    """Reference log-probs of every example (once per round), with the mask seeds that made them."""
    policy = PolicyLogps(model, cfg).eval()
    refs = {}
    for s in tqdm(range(0, len(examples), batch_size), desc="reference log-probs", dynamic_ncols=True):
        chunk = examples[s : s + batch_size]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):  # as the policy will run
            out = policy(chunk)
            if cfg.cond_dropout > 0:  # condition dropout needs the reference under the empty prompt too
                uncond = policy(chunk, [True] * len(chunk))
                out |= {"gen_chosen_uncond": uncond["gen_chosen"], "gen_rejected_uncond": uncond["gen_rejected"]}
        for i, e in enumerate(chunk):
            refs[e.id] = {k: float(v[i]) for k, v in out.items()} | {"mask_seed": e.mask_seed}
    return refs


def dropped_conditions(step: int, batch: list[Example], p: float, seed: int) -> list[bool]:
    """Which examples of a step train their image pair unconditionally (seeded per step and id)."""
    return [p > 0 and random.Random(f"cond-dropout/{seed}/{step}/{e.id}").random() < p for e in batch]


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """The global batch of a step: consecutive slices of a seeded permutation per epoch (the last
    partial slice is skipped). With fewer examples than a batch, the permutation repeats to fill it,
    so every process always gets its full share."""
    per_epoch = max(1, n // batch_size)
    epoch, pos = divmod(step, per_epoch)
    order = list(range(n))
    random.Random(f"order/{seed}/{epoch}").shuffle(order)
    order = order * -(-batch_size // n)
    return order[pos * batch_size : (pos + 1) * batch_size]


def lr_lambda(cfg: TrainConfig):
    def factor(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        progress = (step - cfg.warmup) / max(1, cfg.train_steps - cfg.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def train(model: nn.Module, examples: list[Example], refs: dict[str, dict] | None, cfg: TrainConfig, out: Path) -> nn.Module:
    """Train the policy on the examples (resuming from `out/state` if present); returns the model."""
    from accelerate import Accelerator

    if not examples:
        raise UsageError("no training examples: every preference pair was dropped")
    accelerator = Accelerator(cpu=True)  # the built-in model builds its tensors on the CPU
    world, rank = accelerator.num_processes, accelerator.process_index
    if cfg.batch_size % world:
        raise UsageError(f"--batch-size {cfg.batch_size} must divide evenly over {world} processes")
    torch.manual_seed(cfg.seed)
    reference = None
    if cfg.reference == "online":
        import copy

        reference = PolicyLogps(copy.deepcopy(model).eval().requires_grad_(False), cfg)
    policy = PolicyLogps(model, cfg).train()
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    # The scheduler is not prepared: accelerate would step it once per process per step.
    policy, opt = accelerator.prepare(policy, opt)
    accelerator.register_for_checkpointing(sched)
    loss_fn = PairDPOLoss(cfg.loss_type, beta_und=cfg.beta_und, beta_gen=cfg.beta_gen, sft_und=cfg.sft_und, sft_gen=cfg.sft_gen)

    out.mkdir(parents=True, exist_ok=True)
    state_dir, start = out / "state", 0
    if (state_dir / "step.json").exists():
        accelerator.load_state(str(state_dir))
        start = json.loads((state_dir / "step.json").read_text())["step"]
    if accelerator.is_main_process:
        keep_rows_up_to(out / "metrics.jsonl", start)
    metrics_file = open(out / "metrics.jsonl", "a", encoding="utf-8") if accelerator.is_main_process else None
    nonfinite_in_a_row, skipped = 0, 0
    bar = tqdm(range(start, cfg.train_steps), initial=start, total=cfg.train_steps, desc="train", disable=not accelerator.is_main_process, dynamic_ncols=True)
    for step in bar:
        indices = batch_indices(step, len(examples), cfg.batch_size, cfg.seed)
        local = [examples[i] for i in indices[rank::world]]
        uncond = dropped_conditions(step, local, cfg.cond_dropout, cfg.seed)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            logps = policy(local, uncond)
            if reference is not None:
                with torch.no_grad():
                    ref = reference(local, uncond)
            else:
                ref = {k: torch.tensor([refs[e.id][k + ("_uncond" if u and k.startswith("gen") else "")]
                                        for e, u in zip(local, uncond)]) for k in logps}
        out_ = loss_fn(PairLogps(**{f"policy_{k}": v.float() for k, v in logps.items()}, **{f"ref_{k}": v.float() for k, v in ref.items()}))
        loss = out_.loss.mean()
        finite = accelerator.reduce(torch.tensor(float(torch.isfinite(loss))), reduction="mean").item() == 1.0
        opt.zero_grad(set_to_none=True)
        if not finite:
            nonfinite_in_a_row, skipped = nonfinite_in_a_row + 1, skipped + 1
            if nonfinite_in_a_row >= cfg.max_nonfinite:
                raise HermesFlowError(f"training stopped: {nonfinite_in_a_row} non-finite losses in a row at step {step} "
                                      f"(lower --lr or --beta-gen, or use --length-normalize)")
            sched.step()
            continue
        nonfinite_in_a_row = 0
        grad_norms = branch_grad_norms(policy, logps, ref, cfg) if cfg.log_branch_grad_norms else {}
        accelerator.backward(loss)
        if cfg.max_grad_norm > 0:
            accelerator.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        opt.step()
        sched.step()
        row = _step_metrics(accelerator, out_, step + 1, sched.get_last_lr()[0], skipped, grad_norms)
        if metrics_file is not None:
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
            bar.set_postfix(loss=f"{row['loss']:.4f}", und=f"{row['und/rewards/margins']:.3f}", gen=f"{row['gen/rewards/margins']:.3f}")
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.train_steps:
            _save_state(accelerator, state_dir, step + 1)
    if metrics_file is not None:
        metrics_file.close()
    accelerator.wait_for_everyone()
    backbone = accelerator.unwrap_model(policy).backbone
    # DDP should keep every rank's parameters identical; check it rather than trust it.
    digest = torch.stack([p.detach().double().sum() for p in backbone.parameters()])
    identical = bool((accelerator.gather(digest[None]) == digest).all())
    if accelerator.is_main_process:
        atomic_write_json(out / "summary.json", {"steps": cfg.train_steps, "processes": world, "ranks_identical": identical,
                                                 "skipped_nonfinite": skipped, "examples": len(examples)})
    accelerator.wait_for_everyone()
    return backbone


def branch_grad_norms(policy: nn.Module, logps: dict, ref: dict, cfg) -> dict[str, torch.Tensor]:
    """The gradient norm of each branch's DPO loss alone (this process's batch), to see whether one
    branch dominates the update: summed image log-probs over many tokens can outweigh captions."""
    params = [p for p in policy.parameters() if p.requires_grad]
    norms = {}
    for branch, beta in (("und", cfg.beta_und), ("gen", cfg.beta_gen)):
        margin = beta * ((logps[f"{branch}_chosen"] - ref[f"{branch}_chosen"]) - (logps[f"{branch}_rejected"] - ref[f"{branch}_rejected"]))
        grads = torch.autograd.grad(-torch.nn.functional.logsigmoid(margin.float()).mean(), params, retain_graph=True, allow_unused=True)
        norms[f"{branch}/grad_norm"] = torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))[None]
    return norms


def _step_metrics(accelerator, out, step: int, lr: float, skipped: int, extra: dict) -> dict:
    """TRL's metric names per branch, averaged over the global batch across processes."""
    local = {
        **extra,
        "loss": out.loss.detach(),
        "loss/und": out.loss_und.detach(),
        "loss/gen": out.loss_gen.detach(),
    }
    for branch in ("und", "gen"):
        chosen, rejected = getattr(out, f"{branch}_chosen_rewards"), getattr(out, f"{branch}_rejected_rewards")
        local[f"{branch}/rewards/chosen"] = chosen
        local[f"{branch}/rewards/rejected"] = rejected
        local[f"{branch}/rewards/margins"] = chosen - rejected
        local[f"{branch}/rewards/accuracies"] = (chosen > rejected).float()
    gathered = {k: accelerator.gather_for_metrics(v.float()).mean().item() for k, v in local.items()}
    return {"step": step, **gathered, "lr": lr, "skipped_nonfinite": skipped}


def _save_state(accelerator, state_dir: Path, step: int) -> None:
    """accelerate's save_state into a temporary folder, then swapped in place."""
    tmp = state_dir.with_name("state.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / "step.json", {"step": step})
        old = state_dir.with_name("state.old")
        shutil.rmtree(old, ignore_errors=True)
        if state_dir.exists():
            state_dir.rename(old)
        tmp.rename(state_dir)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
