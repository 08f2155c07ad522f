"""`hermesflow plan`: the memory one training process needs, before a run, from the model built on
the meta device (no weights read, no memory taken).

Weights, gradients, AdamW's state and the reference follow from the parameters and how training
treats them (`train.py`): what trains is held in fp32 (master weights under bf16), what is frozen
stays as loaded; AdamW keeps two fp32 moments; with full fine-tuning and per-step masks the reference
is a frozen copy, with LoRA the adapter disabled (nothing), with a cached reference a few numbers.
Under `--sharding fsdp` each of these is split over the processes, and one transformer block is
gathered whole at a time (two, with prefetching) besides the root's own parameters.

Activations are counted, not guessed: one training step's forward (the caption branch's two
sequences and the image branch's two per example) runs on the meta device under autograd, and the
tensors autograd saves for the backward pass are added up once per storage. What that leaves out
(the backward's temporaries, the allocator's slack) is what `benchmarks/bench_plan.py` measures.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from hermesflow.errors import UsageError
from hermesflow.sharding import SHARDINGS

PUBLISHED_DIR = Path(__file__).resolve().parent / "presets" / "models"
GB = 1e9


def published() -> list[str]:
    """Names of the model configs shipped here (the Hub is not needed to plan for them)."""
    return sorted(p.name for p in PUBLISHED_DIR.iterdir() if (p / "config.json").is_file())


@dataclass
class Anatomy:
    """What memory follows from: the model on the meta device (weights in the dtype they load in,
    frozen parts marked), its transformer blocks, its LoRA targets, and one step's forward."""

    module: nn.Module
    units: list[nn.Module]
    lora_targets: tuple[str, ...]
    forward: Callable[[int], torch.Tensor]  # runs the training forward of n examples, returns a scalar


def anatomy(model: str, dtype: torch.dtype) -> Anatomy:
    """The model of a folder (its config.json) or of a published name, built on the meta device."""
    folder = PUBLISHED_DIR / model if (PUBLISHED_DIR / model / "config.json").is_file() else Path(model)
    path = folder / "config.json"
    if not path.is_file():
        raise UsageError(f"--model {model}: neither a folder with config.json nor a published config ({', '.join(published())})")
    raw = json.loads(path.read_text(encoding="utf-8"))
    kind = raw.pop("model_type", None)
    builders = {"hermesflow-unified": _unified, "show-o": _showo, "janus": _janus}
    if kind not in builders:
        raise UsageError(f"{path}: model_type {kind!r} cannot be planned; known: {', '.join(builders)}")
    with torch.device("meta"):
        return builders[kind](raw, dtype)


def _unified(raw: dict, dtype: torch.dtype) -> Anatomy:
    from hermesflow.testbed.model import UnifiedConfig, UnifiedModel

    model = UnifiedModel(UnifiedConfig(**raw)).to(dtype)
    net = model.net

    def forward(n: int) -> torch.Tensor:  # every sequence fills the model's one layout: 2 captions and 2 images per example
        tokens = torch.zeros(4 * n, model.seq_len, dtype=torch.long)
        logits, _ = net(tokens, None, extend_cache=False)
        return logits.float().log_softmax(-1).sum()

    return Anatomy(model, model.shard_units(), tuple(model.lora_targets), forward)


def _showo(raw: dict, dtype: torch.dtype) -> Anatomy:
    from hermesflow.backbones.showo import ShowoBackbone, ShowoConfig

    model = ShowoBackbone(ShowoConfig(**raw))
    model.showo.to(dtype)
    length = model.prefix_len + model.n_image_tokens + 2  # the text-to-image layout; captions are shorter

    def forward(n: int) -> torch.Tensor:
        ids = torch.zeros(4 * n, length, dtype=torch.long)
        return model.showo(input_ids=ids).logits.float().log_softmax(-1).sum()

    return Anatomy(model, model.shard_units(), tuple(model.lora_targets), forward)


JANUS_TEXT = 48  # tokens of a prompt or caption with its chat template (the shapes world's are shorter)


def _janus(raw: dict, dtype: torch.dtype) -> Anatomy:
    from transformers import JanusConfig, JanusForConditionalGeneration

    from hermesflow.backbones.janus import LANGUAGE_MODEL, language_model_projections

    model = JanusForConditionalGeneration(JanusConfig(**raw)).to(dtype)
    frame = nn.Module()
    frame.model = model  # the backbone's own path to it: LoRA targets and blocks are named as in JanusBackbone
    inner, cfg = model.model, model.config
    side, image = cfg.vision_config.image_size, inner.vision_model.config.num_image_tokens
    lm = frame.get_submodule(LANGUAGE_MODEL)

    def forward(n: int) -> torch.Tensor:
        pixels = torch.zeros(2 * n, 3, side, side, dtype=dtype)  # captions: the image twice, chosen and rejected
        seen = inner.aligner(inner.vision_model(pixel_values=pixels).last_hidden_state)
        text = inner.language_model.embed_tokens(torch.zeros(2 * n, JANUS_TEXT, dtype=torch.long))
        hidden = lm(inputs_embeds=torch.cat([seen, text], dim=1)).last_hidden_state
        caption = model.lm_head(hidden[:, -JANUS_TEXT:]).float().log_softmax(-1).sum()
        drawn = model.prepare_embeddings_for_image_generation(torch.zeros(2 * n, image, dtype=torch.long))
        hidden = lm(inputs_embeds=torch.cat([text, drawn], dim=1)).last_hidden_state
        return caption + inner.generation_head(hidden[:, -image:]).float().log_softmax(-1).sum()

    return Anatomy(frame, list(lm.layers), language_model_projections(frame), forward)


def saved_bytes(forward: Callable[[int], torch.Tensor], n: int, params: set[int]) -> int:
    """Bytes autograd keeps for the backward of `forward(n)` on the meta device, each storage once,
    the parameters' own storages left out (they are counted as weights)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in params:
            storages[storage._cdata] = max(storages.get(storage._cdata, 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward(n)
    return sum(storages.values())


@dataclass
class Plan:
    """Bytes per process, by part; `per_example` is the activations of one example of the batch."""

    parameters: int
    trainable: int
    weights: float
    gradients: float
    optimizer: float
    reference: float
    gathered: float
    activations: float
    per_example: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.reference + self.gathered + self.activations


def plan(model: str, dtype: str = "bf16", lora_r: int = 0, sharding: str = "ddp", processes: int = 1, batch_size: int = 8,
         reference: str = "online") -> Plan:
    """The memory of one training process (see the module docstring). `reference` online: full
    fine-tuning keeps a frozen copy (the default, per-step image masks); cached: it keeps none."""
    if sharding not in SHARDINGS:
        raise UsageError(f"--sharding must be ddp or fsdp, got {sharding!r}")
    if processes < 1 or batch_size % processes:
        raise UsageError(f"--batch-size {batch_size} must divide evenly over {processes} processes")
    loaded = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    body = anatomy(model, loaded)
    if lora_r:
        from peft import LoraConfig, get_peft_model

        with torch.device("meta"):
            get_peft_model(body.module, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules=list(body.lora_targets)))
    params = list(body.module.parameters())
    trainable = [p for p in params if p.requires_grad]
    share = processes if sharding == "fsdp" else 1
    weight = lambda p: 4 if p.requires_grad else p.element_size()  # noqa: E731 - what trains is held in fp32
    weights = sum(p.numel() * weight(p) for p in params) / share
    grads = sum(p.numel() * 4 for p in trainable) / share
    optimizer = 2 * grads
    ref = weights if reference == "online" and not lora_r else 0.0  # LoRA's reference is the adapter disabled
    gathered = 0.0
    if sharding == "fsdp":
        in_units = {id(p) for unit in body.units for p in unit.parameters()}
        root = sum(p.numel() * weight(p) for p in params if id(p) not in in_units)
        block = max((sum(p.numel() * weight(p) for p in unit.parameters()) for unit in body.units), default=0)
        gathered = root + 2 * block
    per_process = batch_size // processes
    # autocast has no meta device: under bf16 the forward runs in bf16 throughout (autocast keeps
    # norms and softmaxes in fp32, so this counts those low)
    body.module.to(torch.bfloat16 if dtype == "bf16" else torch.float32)
    keys = {p.untyped_storage()._cdata for p in body.module.parameters()}
    with torch.device("meta"):
        one = saved_bytes(body.forward, 1, keys)
        activations = saved_bytes(body.forward, per_process, keys) if per_process != 1 else one
    return Plan(sum(p.numel() for p in params), sum(p.numel() for p in trainable), weights, grads, optimizer, ref, gathered,
                activations, one)


def largest_batch(p: Plan, memory: float, processes: int) -> int:
    """The largest global batch whose per-process share fits in `memory` bytes (0: none does)."""
    room = memory - (p.total - p.activations)
    return max(0, math.floor(room / p.per_example)) * processes if p.per_example else 0


def format_plan(p: Plan, model: str, settings: str, memory: float | None, processes: int) -> str:
    rows = [("weights", p.weights), ("gradients", p.gradients), ("AdamW state", p.optimizer), ("reference", p.reference),
            ("gathered blocks (FSDP)", p.gathered), ("activations", p.activations), ("total", p.total)]
    lines = [f"{model}: {p.parameters / 1e9:.2f} B parameters, {p.trainable / 1e9:.3f} B trained; {settings}",
             "per process:"] + [f"  {name:<24} {value / GB:8.2f} GB" for name, value in rows]
    if memory is not None:
        fit = largest_batch(p, memory, processes)
        lines.append(f"largest --batch-size that fits {memory / GB:.0f} GB per process: "
                     + (str(fit) if fit else "none (the model alone does not fit)"))
    lines.append("activations: the tensors the forward saves for the backward, counted on the meta device; the "
                 "backward's temporaries and the allocator's slack come on top (docs/models.md)")
    return "\n".join(lines)
