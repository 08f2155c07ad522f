"""Pair-DPO training on one round's preference data, through Hugging Face `accelerate`.

The loop only wires components: the round's `Example`s (a data record joined by id with its
`Preference`; by default only homologous rows, with both pairs, whatever the loss trains), the
reference log-probs (cached once per round, computed in parallel across processes, or online), the
policy log-probs (`PolicyLogps`, an nn.Module so that DDP sees one forward), and a loss from
`hermesflow.losses`, which names the branches it trains: only those are scored. Image masks are
drawn afresh each step by default (seeded by seed, round, id and step), so the image reference is
then computed online with the step's masks while caption references stay cached. The accelerator
picks the device; `dtype` bf16 trains in mixed precision. Batches, masks and condition dropout are
pure functions of (seed, step), and each process takes its slice of the global batch, so a run
resumed from `save_state` continues exactly, and N processes match one process with the same
global batch.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from hermesflow.backbones import Backbone, ImageEstimator, LogProbs, MaskedEstimator
from hermesflow.errors import DataError, UsageError
from hermesflow.io import atomic_write_bytes, atomic_write_json
from hermesflow.loop import TrainingLoop
from hermesflow.losses import BRANCHES, BranchLogps, PairDPOLoss
from hermesflow.options import TrainingOptions
from hermesflow.prefs import AnswerPair, Preference, to_line
from hermesflow.records import HomologousData, Record
from hermesflow.sharding import broadcast_from_main, frozen_copy, gathered, held_fraction, meta_copy, shard


@dataclass(frozen=True)
class Example:
    """One homologous training tuple (x, y, x_w, x_l, y_w, y_l): the data record (x, y) and its
    preference pairs, with the round seed of its image masks (`mask_seeds` derives each step's)."""

    record: Record
    pref: Preference
    mask_seed: int
    replayed: bool = False  # a pair of an earlier round, trained again (--replay)

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def key(self) -> str:
        """The example's name among a round's examples: its record's id, and for a replayed pair also
        the round it was curated in (the record's own pair of this round may train beside it)."""
        return f"{self.record.id}@round-{self.pref.round + 1}" if self.replayed else self.record.id


PAIR_ROWS = ("homologous", "branch")
MASK_DRAWS = ("step", "round")


def examples_from(prefs: list[Preference], data: HomologousData, loss_type: str, seed: int,
                  pair_rows: str = "homologous", replayed: bool = False) -> list[Example]:
    """Training tuples: each preference joined with its data record by id. `pair_rows` "homologous"
    keeps the rows with both a caption and an image pair whatever the loss trains, so that arms
    differing only in their loss train on the same tuples; "branch" keeps every row with a pair in
    each branch the loss trains (a one-branch loss then sees more rows than a two-branch one)."""
    if pair_rows not in PAIR_ROWS:
        raise UsageError(f"--pair-rows must be one of {list(PAIR_ROWS)}, got {pair_rows!r}")
    records = {r.id: r for r in data.records}
    missing = [p.id for p in prefs if p.id not in records]
    if missing:
        raise DataError([f"preference rows name ids that the data does not hold: {missing[:5]} ({len(missing)} in all); "
                         "pass the --data the round was curated from"])
    needed = ("und", "gen") if pair_rows == "homologous" else BRANCHES[loss_type]
    return [Example(records[p.id], p, _mask_seed(seed, p.round, p.id), replayed) for p in prefs if all(p.has(b) for b in needed)]


def _mask_seed(seed: int, round_index: int, example_id: str) -> int:
    return random.Random(f"mask/{seed}/{round_index}/{example_id}").randrange(2**31)


def mask_seeds(batch: list[Example], step: int, draws: str) -> list[int]:
    """The image-mask seed of each example at a step: a fresh one per step ("step", derived from the
    example's round seed, so from seed, round, id and step) or the round's own ("round"). The same
    seed serves chosen and rejected, policy and reference, and a resumed run draws the same masks."""
    if draws not in MASK_DRAWS:
        raise UsageError(f"--mask-draws must be one of {list(MASK_DRAWS)}, got {draws!r}")
    if draws == "round":
        return [e.mask_seed for e in batch]
    return [random.Random(f"mask-step/{e.mask_seed}/{step}").randrange(2**31) for e in batch]


def estimator_of(backbone: Backbone, cfg: TrainingOptions) -> ImageEstimator:
    """The backbone's own kind of estimator, with the config's mask settings for masked generators."""
    estimator = backbone.default_estimator()
    if isinstance(estimator, MaskedEstimator):
        return MaskedEstimator(cfg.mask_samples, "ratio" if cfg.ratio_weighting else "none")
    return estimator


class PolicyLogps(nn.Module):
    """Log-probs of the chosen and rejected samples of the trained branches of a batch of tuples,
    under the wrapped backbone: {branch: (chosen, rejected)}, each a LogProbs of (B,); rejected is
    None for the image branch when `gen_rejected` is off (the positive-only objective).

    The gen branch uses the same mask seeds for chosen and rejected, and for policy and reference."""

    def __init__(self, backbone: Backbone, branches: tuple[str, ...], estimator: ImageEstimator, gen_rejected: bool = True):
        super().__init__()
        self.backbone = backbone
        self.branches = branches
        self.estimator = estimator
        self.gen_rejected = gen_rejected

    def forward(self, batch: list[Example], uncond: list[bool] | None = None, seeds: list[int] | None = None,
                branches: tuple[str, ...] | None = None) -> dict[str, tuple[LogProbs, LogProbs | None]]:
        """`uncond[i]` scores example i's images under the empty prompt (condition dropout); `seeds[i]`
        is its mask seed (default: the round's); `branches` scores a subset of the policy's."""
        b, n, out = self.backbone, len(batch), {}
        branches = self.branches if branches is None else branches
        if "und" in branches:
            inputs = b.prepare_images([e.record.load_image() for e in batch])
            lp = understanding_logps(b, torch.cat([inputs, inputs]), [e.pref.und for e in batch] * 2,
                                     [e.pref.und.chosen for e in batch] + [e.pref.und.rejected for e in batch])
            out["und"] = (lp[:n], lp[n:])
        if "gen" in branches:
            uncond = uncond or [False] * n
            seeds = [e.mask_seed for e in batch] if seeds is None else seeds
            sides = 2 if self.gen_rejected else 1
            prompts = ["" if u else e.record.caption for e, u in zip(batch, uncond)] * sides
            images = [e.pref.gen.chosen for e in batch] + ([e.pref.gen.rejected for e in batch] if self.gen_rejected else [])
            lp = b.image_logps(prompts, torch.tensor(images, device=b.device), self.estimator, list(seeds) * sides)
            out["gen"] = (lp[:n], lp[n:] if self.gen_rejected else None)
        return out


def understanding_logps(backbone: Backbone, inputs: torch.Tensor, pairs: list, texts: list[str]) -> LogProbs:
    """log π(text | image) of each row's text: a caption pair's caption, or an answer pair's answer
    given its question (`prefs.AnswerPair`), in order."""
    asks = [i for i, p in enumerate(pairs) if isinstance(p, AnswerPair)]
    if not asks:
        return backbone.caption_logps(inputs, texts)
    if len(asks) == len(pairs):
        return backbone.answer_logps(inputs, [p.question for p in pairs], texts)
    says = sorted(set(range(len(pairs))) - set(asks))
    answers = backbone.answer_logps(inputs[asks], [pairs[i].question for i in asks], [texts[i] for i in asks])
    captions = backbone.caption_logps(inputs[says], [texts[i] for i in says])
    order = torch.argsort(torch.tensor(asks + says, device=answers.total.device))
    return LogProbs(torch.cat([answers.total, captions.total])[order], torch.cat([answers.count, captions.count])[order])


def logp_values(lp: LogProbs, cfg: TrainingOptions) -> torch.Tensor:
    """What the loss sees: sums, or per-token means with --length-normalize."""
    return (lp.mean() if cfg.length_normalize else lp.total).float()


def branch_logps(chosen: LogProbs, rejected: LogProbs | None, ref: tuple[torch.Tensor, torch.Tensor] | None,
                 cfg: TrainingOptions, weight: torch.Tensor | None = None) -> BranchLogps:
    """One branch's log-probs as the loss takes them. The chosen token count goes along when the NLL
    term is per token (--sft-norm token) and the log-probs are sums; with --length-normalize they are
    per-token means already."""
    count = chosen.count.float() if cfg.sft_norm == "token" and not cfg.length_normalize else None
    return BranchLogps(logp_values(chosen, cfg), None if rejected is None else logp_values(rejected, cfg),
                       *(ref if ref is not None else (None, None)), chosen_count=count, weight=weight)


def loss_of(cfg: TrainingOptions) -> PairDPOLoss:
    """The configured loss; a combination it does not define is a usage error naming the flags."""
    try:
        return PairDPOLoss(cfg.loss_type, beta_und=cfg.beta_und, beta_gen=cfg.beta_gen, sft_und=cfg.sft_und,
                           sft_gen=cfg.sft_gen, gen_objective=cfg.gen_objective, dpop_lambda=cfg.dpop_lambda)
    except ValueError as e:
        raise UsageError(f"--loss-type {cfg.loss_type} --gen-objective {cfg.gen_objective}: {e}") from None


def sft_weights(batch: list[Example], min_accuracy: float) -> torch.Tensor:
    """1 for examples whose chosen image's self-VQA accuracy reaches `min_accuracy` (their image
    term trains under the positive-only objective), else 0."""
    return torch.tensor([float(e.pref.gen.chosen_score >= min_accuracy) for e in batch])


def reference_branches(cfg: TrainingOptions, gen_objective_needs_pair: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(cached, online): which trained branches take their reference from the round's cache and which
    compute it each step. Image references are cached only when each example keeps one mask for the
    round; with per-step masks they are computed with the step's masks. The positive-only image
    objective needs no image reference at all."""
    needed = tuple(b for b in BRANCHES[cfg.loss_type] if b == "und" or gen_objective_needs_pair)
    if cfg.reference == "online":
        return (), needed
    online = tuple(b for b in needed if b == "gen" and cfg.mask_draws == "step")
    return tuple(b for b in needed if b not in online), online


def reference_cache_key(fingerprint: str, examples: list[Example], cfg: TrainingOptions, dtype: str, estimator: ImageEstimator,
                        branches: tuple[str, ...] = ("und", "gen")) -> str:
    """Everything the cached reference of `branches` depends on: the weights (their `fingerprint`), the precision, the
    length normalisation and the content of the preference records; for the image branch also the
    estimator, the condition dropout and the mask seeds."""
    h = hashlib.sha1()
    for e in examples:
        h.update(to_line(e.pref).encode())
        if "gen" in branches:
            h.update(f"{e.mask_seed}\n".encode())
    settings = f"{'+'.join(branches)}-{dtype}-{'mean' if cfg.length_normalize else 'sum'}"
    if "gen" in branches:
        settings += f"-{estimator.key()}-uncond{cfg.cond_dropout > 0}"
    return f"{fingerprint}-{hashlib.sha1(settings.encode()).hexdigest()[:8]}-{h.hexdigest()[:12]}"


@dataclass
class ReferenceLogps:
    """A round's cached reference log-probs, typed: for each cached branch (`und`, `gen`, and
    `gen_uncond` under condition dropout, the image pair scored under the empty prompt) an (N, 2)
    float32 tensor of (chosen, rejected), row i for example `ids[i]`, with the mask seed each image
    row was scored with. Saved as safetensors, the ids and what made them in its metadata."""

    ids: list[str]
    mask_seeds: torch.Tensor  # (N,) int64
    values: dict[str, torch.Tensor]  # branch -> (N, 2) float32

    def __post_init__(self) -> None:
        self.row = {item: i for i, item in enumerate(self.ids)}

    def pair(self, branch: str, batch: list[Example], uncond: list[bool], device) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) of `batch`'s examples; an image pair scored under the empty prompt where `uncond`."""
        rows = torch.tensor([self.row[e.key] for e in batch])
        values = self.values[branch][rows]
        if branch == "gen" and any(uncond):
            values = torch.where(torch.tensor(uncond)[:, None], self.values["gen_uncond"][rows], values)
        return values[:, 0].to(device), values[:, 1].to(device)

    def save(self, path: Path, meta: dict[str, str]) -> None:
        from safetensors.torch import save

        atomic_write_bytes(path, save({"mask_seeds": self.mask_seeds, **self.values}, metadata={"ids": json.dumps(self.ids), **meta}))

    @classmethod
    def load(cls, path: Path) -> "ReferenceLogps":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            ids = json.loads(f.metadata()["ids"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return cls(ids, tensors.pop("mask_seeds"), tensors)


@torch.no_grad()
def reference_logps(policy: PolicyLogps, examples: list[Example], cfg: TrainingOptions, accelerator, batch_size: int = 64) -> ReferenceLogps:
    """Reference log-probs of every example for the policy's branches, computed once per round under
    the policy's precision (image masks: each example's round seed), each process taking its share;
    the same `ReferenceLogps` on every process."""
    from accelerate.utils import gather_object

    world, rank = accelerator.num_processes, accelerator.process_index
    mine = examples[rank::world]
    refs = []
    was_training = policy.training
    policy.eval()
    for s in tqdm(range(0, len(mine), batch_size), desc="reference log-probs", disable=not accelerator.is_main_process, dynamic_ncols=True):
        chunk = mine[s : s + batch_size]
        with accelerator.autocast():
            out = policy(chunk)
            if cfg.cond_dropout > 0 and "gen" in out:  # condition dropout needs the reference under the empty prompt too
                uncond = policy(chunk, [True] * len(chunk))["gen"]
                out["gen_uncond"] = uncond
        pairs = {key: torch.stack([logp_values(chosen, cfg), logp_values(rejected, cfg)], dim=1).cpu()
                 for key, (chosen, rejected) in out.items()}
        refs += [(e.key, e.mask_seed, {key: v[i] for key, v in pairs.items()}) for i, e in enumerate(chunk)]
    policy.train(was_training)
    gathered = gather_object(refs)
    return ReferenceLogps([item for item, _, _ in gathered], torch.tensor([seed for _, seed, _ in gathered], dtype=torch.int64),
                          {key: torch.stack([v[key] for _, _, v in gathered]) for key in (gathered[0][2] if gathered else {})})


def dropped_conditions(step: int, batch: list[Example], p: float, seed: int) -> list[bool]:
    """Which examples of a step train their image pair unconditionally (seeded per step and id)."""
    return [p > 0 and random.Random(f"cond-dropout/{seed}/{step}/{e.key}").random() < p for e in batch]


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


def cached_reference(policy: PolicyLogps, examples: list[Example], cfg: TrainingOptions, dtype: str, accelerator,
                     out: Path, fingerprint: str) -> ReferenceLogps:
    """The reference log-probs of this round's examples for the policy's branches, from
    `out/reference-<key>.safetensors` or computed (in parallel across processes) and written there.
    The key names what made them; every example must be there with its branches' values, and, when
    image log-probs are cached, with the mask seed it is trained with."""
    key = reference_cache_key(fingerprint, examples, cfg, dtype, policy.estimator, policy.branches)
    path = out / f"reference-{key}.safetensors"
    if not path.exists():
        refs = reference_logps(policy, examples, cfg, accelerator)
        if accelerator.is_main_process:
            refs.save(path, {"model": fingerprint, "estimator": policy.estimator.key(),
                             "branches": ",".join(policy.branches)})
        accelerator.wait_for_everyone()
    refs = ReferenceLogps.load(path)
    wrong = [e.key for e in examples if e.key not in refs.row or any(b not in refs.values for b in policy.branches)
             or ("gen" in policy.branches and int(refs.mask_seeds[refs.row[e.key]]) != e.mask_seed)]
    if wrong:
        raise DataError([f"{path}: cached reference log-probs do not match the examples (first: {wrong[0]}); delete the file"])
    return refs


def train(backbone: Backbone, examples: list[Example], cfg: TrainingOptions, out: Path, seed: int = 0, dtype: str = "fp32",
          fingerprint: str | None = None, reference_model: Backbone | None = None) -> Backbone | None:
    """Train the policy on the examples (resuming from `out/state` if present), with `seed` choosing
    batch order, mask draws and condition dropout, in `dtype` (bf16: mixed precision over fp32
    weights); returns the backbone (under --sharding fsdp gathered on the main process only: None on
    the others). `fingerprint`: the starting weights' (`Backbone.fingerprint`),
    when the caller has it, so that a stage hashes the weights once; a LoRA adapter added since
    leaves it valid (its zero-initialised output changes no log-prob). `reference_model` (--reference-model
    base): the model the DPO terms are measured against, in place of the starting weights."""
    if not examples:
        if cfg.pair_rows == "homologous":
            raise UsageError("no training examples: no preference row has both a caption and an image pair (--pair-rows "
                             "homologous); curate more records, or train each branch on its own pairs with --pair-rows branch")
        raise UsageError(f"no training examples: no preference row has a pair in every branch --loss-type {cfg.loss_type} trains")
    loop = TrainingLoop(out, cfg, dtype, "train", "training")
    accelerator = loop.accelerator
    world, rank = accelerator.num_processes, accelerator.process_index
    if cfg.batch_size % world:
        raise UsageError(f"--batch-size {cfg.batch_size} must divide evenly over {world} processes")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    branches = BRANCHES[cfg.loss_type]
    loss_fn = loss_of(cfg)
    positive_only = "gen" in branches and not loss_fn.needs_pair("gen")
    if positive_only and not sft_weights(examples, cfg.sft_min_accuracy).any():
        raise UsageError(f"--gen-objective sft: no example's chosen image has self-accuracy >= --sft-min-accuracy "
                         f"{cfg.sft_min_accuracy}, so no image would train; lower it")
    for param in backbone.parameters():  # fp32 master weights for what trains; frozen (LoRA base) weights stay as loaded
        if param.requires_grad:
            param.data = param.data.float()
    if reference_model is not None and backbone.peft_model is not None:
        raise UsageError("--reference-model base with --lora-r: the LoRA reference is the adapter disabled, the round's "
                         "starting model; train without LoRA, or with --reference-model round")
    if cfg.sharding == "fsdp" and cfg.log_branch_grad_norms:
        raise UsageError("--log-branch-grad-norms takes gradients of whole weights: train with --sharding ddp to log them")
    backbone.to(accelerator.device)
    if world > 1:  # every process starts from the main process's weights, as DDP makes them (FSDP would not)
        broadcast_from_main(backbone)
    policy = PolicyLogps(backbone, branches, estimator_of(backbone, cfg), gen_rejected=not positive_only)
    frame = meta_copy(backbone) if cfg.sharding == "fsdp" else None  # where the sharded weights are gathered back
    cached, online = reference_branches(cfg, not positive_only)
    refs, reference = None, None
    if reference_model is not None:  # frozen, in the precision of the policy's master weights
        reference_model = reference_model.to(accelerator.device).float().eval().requires_grad_(False)
    anchor = reference_model or backbone
    if cached:  # computed with whole weights, before sharding
        refs = cached_reference(PolicyLogps(anchor, cached, policy.estimator), examples, cfg, dtype, accelerator, out,
                                anchor.fingerprint() if reference_model is not None else fingerprint or backbone.fingerprint())
    units = backbone.shard_units() if cfg.sharding == "fsdp" else ()
    if units:  # before the frozen copy, so that the whole weights are held once (as that copy), not twice
        shard(policy, units)
    if online and backbone.peft_model is None:  # online, with a frozen copy (with LoRA: the adapter disabled)
        frozen = reference_model or frozen_copy(policy, frame, "backbone.")
        reference = PolicyLogps(frozen, online, policy.estimator)
        if units:
            shard(reference, reference.backbone.shard_units())
    policy, inner = loop.prepare(policy)
    held = held_fraction(policy)
    opt = loop.opt
    for step in loop.steps({**vars(cfg), "seed": seed, "dtype": dtype}):
        indices = batch_indices(step, len(examples), cfg.batch_size, seed)
        local = [examples[i] for i in indices[rank::world]]
        uncond = dropped_conditions(step, local, cfg.cond_dropout, seed)
        seeds = mask_seeds(local, step, cfg.mask_draws)
        with accelerator.autocast():  # as accelerate's prepared forward does; an FSDP policy is not prepared
            logps = policy(local, uncond, seeds)
        ref = _reference(inner, reference, refs, cached, online, local, uncond, seeds, cfg, accelerator)
        weight = sft_weights(local, cfg.sft_min_accuracy).to(accelerator.device) if positive_only else None
        logs = {b: branch_logps(c, r, ref.get(b), cfg, weight if b == "gen" else None) for b, (c, r) in logps.items()}
        out_ = loss_fn(**logs)
        loss = out_.loss.mean()
        opt.zero_grad(set_to_none=True)
        if not loop.finite(loss, step):
            continue
        grad_norms = branch_grad_norms(policy, logs, loss_fn) if cfg.log_branch_grad_norms else {}
        accelerator.backward(loss)
        loop.clip(policy)
        loop.set_lr(step)
        opt.step()
        row = _step_metrics(accelerator, out_, step + 1, loop.lr_at(step + 1), loop.skipped, grad_norms)
        # the bar names what it shows: the total loss, and each branch's DPO reward margin (chosen minus rejected)
        loop.record(step, row, {"loss": f"{row['loss']:.4f}", **{f"{b} margin": f"{row[f'{b}/rewards/margins']:.3f}" for b in branches
                                                                 if f"{b}/rewards/margins" in row}})
    loop.finish()
    if frame is not None:  # one copy, on the main process
        backbone, identical = gathered(policy, frame, "backbone.", main_only=True), True
    else:  # DDP should keep every rank's parameters identical; check it rather than trust it
        backbone = accelerator.unwrap_model(policy).backbone
        digest = torch.stack([p.detach().double().sum() for p in backbone.parameters()])
        identical = bool((accelerator.gather(digest[None]) == digest).all())
    if accelerator.is_main_process:
        summary = {"steps": cfg.train_steps, "processes": world, "sharding": cfg.sharding, "weights_held": round(held, 4),
                   "ranks_identical": identical,
                   "skipped_nonfinite": loop.skipped, "examples": len(examples),
                   "examples_replayed": sum(e.replayed for e in examples), "pair_rows": cfg.pair_rows,
                   "branches": list(branches), "gen_objective": cfg.gen_objective if "gen" in branches else None,
                   "mask_draws": cfg.mask_draws, "sft_norm": cfg.sft_norm,
                   "reference": {"cached": list(cached), "online": list(online)}}
        if positive_only:
            kept = int(sft_weights(examples, cfg.sft_min_accuracy).sum())
            summary["sft_image"] = {"min_accuracy": cfg.sft_min_accuracy, "kept": kept, "dropped": len(examples) - kept}
        atomic_write_json(out / "summary.json", summary)
    accelerator.wait_for_everyone()
    return backbone


def _reference(inner: PolicyLogps, reference: PolicyLogps | None, refs: ReferenceLogps | None, cached: tuple[str, ...], online: tuple[str, ...],
               batch: list[Example], uncond: list[bool], seeds: list[int], cfg: TrainingOptions,
               accelerator) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The reference's (chosen, rejected) log-probs of the branches that need one: the `cached`
    ones from the round's cache, the `online` ones computed now with the step's mask seeds, by a
    frozen copy or by the policy itself with its LoRA adapter disabled."""
    out = {b: refs.pair(b, batch, uncond, accelerator.device) for b in cached}
    if online:
        with torch.no_grad(), accelerator.autocast():
            if reference is not None:
                now = reference(batch, uncond, seeds, online)
            else:
                with inner.backbone.reference_context():
                    now = inner(batch, uncond, seeds, online)
        out |= {b: (logp_values(c, cfg), logp_values(r, cfg)) for b, (c, r) in now.items()}
    return out


def branch_grad_norms(policy: nn.Module, logs: dict[str, BranchLogps], loss_fn: PairDPOLoss) -> dict[str, torch.Tensor]:
    """The gradient norm of each branch's own objective alone (this process's batch), to see whether
    one branch dominates the update: summed image log-probs over many tokens can outweigh captions.
    A branch's example weights apply as in the loss (the positive-only image term leaves out the
    examples below --sft-min-accuracy)."""
    params = [p for p in policy.parameters() if p.requires_grad]
    norms = {}
    for branch, lp in logs.items():
        own = loss_fn.branch_loss(branch, lp).float()
        own = own if lp.weight is None else own * lp.weight
        grads = torch.autograd.grad(own.mean(), params, retain_graph=True, allow_unused=True)
        norms[f"{branch}/grad_norm"] = torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))[None]
    return norms


def _step_metrics(accelerator, out, step: int, lr: float, skipped: int, extra: dict) -> dict:
    """TRL's metric names per trained branch, averaged over the global batch across processes."""
    local = {**extra, "loss": out.loss.detach()}
    for branch, branch_loss in out.branch_losses.items():
        local[f"loss/{branch}"] = branch_loss
        if branch not in out.chosen_rewards:  # the positive-only image branch has no reference, so no rewards
            continue
        chosen, rejected = out.chosen_rewards[branch], out.rejected_rewards[branch]
        local[f"{branch}/rewards/chosen"] = chosen
        local[f"{branch}/rewards/rejected"] = rejected
        local[f"{branch}/rewards/margins"] = chosen - rejected
        local[f"{branch}/rewards/accuracies"] = (chosen > rejected).float()
    for branch, nll in out.nll_losses.items():
        local[f"nll/{branch}"] = nll
    gathered = {k: accelerator.gather_for_metrics(v.float()).mean().item() for k, v in local.items()}
    return {"step": step, **gathered, "lr": lr, "skipped_nonfinite": skipped}
