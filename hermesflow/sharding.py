"""Sharded training with PyTorch's own FSDP2 (`--sharding fsdp`), on the processes accelerate launched.

accelerate owns launch, process group and device; its FSDP plugin does not shard on CPU (it silently
becomes DDP), so the loop applies `fully_shard` itself: each of the backbone's transformer blocks
(`Backbone.shard_units`) is one unit, gathered just before its forward and freed after, and the
module the loop calls (`PolicyLogps`) is the root, holding what no block holds (embeddings, heads,
a vision tower). Only the optimizer goes through `accelerator.prepare`.

Each process then holds 1/N of the weights, gradients and AdamW state. A checkpoint is sharded too
(`torch.distributed.checkpoint`, each process writing its own part); the trained model is gathered
into an ordinary, unsharded module on the main process only (`gathered`), which writes it.

Inference (curation, evaluation, GRPO's sampling) runs on sharded weights too (`sharded_inference`):
the root's own parameters whole for the phase, each block gathered for its forward by FSDP's hook.
Every process must then issue the same all-gathers in the same order, yet processes sample different
numbers of forward passes (a batch more, a caption that stops early, the main process evaluating
alone). So each forward first all-reduces an "I have work" flag, and a process whose work is done
drains: it issues the flag's all-reduce and each block's gather, as a forward would, until the flag
sums to zero and every process leaves at the same collective. This holds while every forward runs
each block once, in order (the transformer stacks of every backbone, KV-cached decoding included).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn as nn

from hermesflow.errors import UsageError

SHARDINGS = ("ddp", "fsdp")


def check_sharding(sharding: str, world: int) -> None:
    """Refuse, in one line, a sharding that would run as something else."""
    if sharding not in SHARDINGS:
        raise UsageError(f"--sharding must be one of {list(SHARDINGS)}, got {sharding!r}")
    if sharding == "fsdp" and world < 2:
        raise UsageError("--sharding fsdp shards over processes, and this is one: launch several (torchrun --nproc_per_node N "
                         "-m hermesflow ..., or accelerate launch with a multi-GPU config), or train with --sharding ddp")


def broadcast_from_main(module: nn.Module) -> None:
    """Every process takes the main process's parameters and buffers, as DDP does when it wraps a model:
    what each process initialised on its own (LoRA's adapters) is then one model, with one fingerprint."""
    for tensor in [*module.parameters(), *module.buffers()]:
        torch.distributed.broadcast(tensor.data, src=0)


def shard(root: nn.Module, units: list[nn.Module]) -> nn.Module:
    """FSDP2 over every process: each unit sharded on its own, then the root (in place; returns it)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device = next(root.parameters()).device
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for unit in units:
        fully_shard(unit, mesh=mesh)
    return fully_shard(root, mesh=mesh)


def meta_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` whose parameters live on the meta device (no memory), its buffers and every
    other attribute copied: the frame the gathered weights are put back into after sharded training."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad) for p in module.parameters()}
    return copy.deepcopy(module, memo)


def held_fraction(module: nn.Module) -> float:
    """The fraction of `module`'s parameter elements this process holds (1/N of each sharded one)."""
    params = list(module.parameters())
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in params)
    return local / sum(p.numel() for p in params)


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def gathered(sharded: nn.Module, frame: nn.Module, prefix: str = "", main_only: bool = False) -> nn.Module | None:
    """The whole weights of a sharded module (a collective: every process calls it), put into `frame`
    (a `meta_copy` of the module taken before sharding, or of its submodule at `prefix`); returns the
    frame. `main_only`: only the main process receives them, in CPU memory (the others get None)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True, cpu_offload=main_only))
    if main_only and torch.distributed.get_rank() != 0:
        return None
    own = {key[len(prefix):]: value.detach().clone() for key, value in full.items() if key.startswith(prefix)}
    frame.load_state_dict(own, assign=True)
    return frame


def frozen_copy(policy: nn.Module, frame: nn.Module | None, prefix: str) -> nn.Module:
    """A frozen copy of the model at `prefix` in `policy`: deep-copied, or if the policy is sharded
    gathered into a copy of `frame` (its `meta_copy`), so that the whole weights exist once, as the copy."""
    model = gathered(policy, meta_copy(frame), prefix) if is_sharded(policy) else copy.deepcopy(policy.get_submodule(prefix.rstrip(".")))
    return model.eval().requires_grad_(False)


@contextlib.contextmanager
def sharded_inference(root: nn.Module, units: list[nn.Module]) -> Iterator[None]:
    """Forward passes on a sharded `root` (its blocks `units`, in forward order), each process as many
    as it has work for; on leaving, a process drains until every process has left (module docstring).
    Every process enters."""
    device = next(root.parameters()).device

    def others_working(mine: int) -> bool:
        flag = torch.tensor([mine], device=device)
        torch.distributed.all_reduce(flag)
        return bool(flag.item())

    def working(module: nn.Module, args: tuple) -> None:
        others_working(1)

    ran = [len(units) - 1]  # the block run last (as if a forward pass had just ended)

    def in_order(i: int):
        def check(module: nn.Module, args: tuple) -> None:
            if i != (ran[0] + 1) % len(units):
                raise UsageError(f"sharded inference: a forward pass ran block {i} after block {ran[0]}, so the processes' "
                                 "gathers would no longer match; shard_units() must be blocks every forward runs once, in order")
            ran[0] = i
        return check

    hooks = [unit.register_forward_pre_hook(in_order(i), prepend=True) for i, unit in enumerate(units)]
    hooks.append(units[0].register_forward_pre_hook(working, prepend=True))  # before FSDP's gather
    # FSDP makes root the first module to run forward, and a root keeps its weights after it; the root
    # here never runs forward, so it is made root first (else each block would be, and stay whole)
    root._get_fsdp_state()._lazy_init()
    root.unshard()
    try:
        yield
        while others_working(0):  # the collectives of another process's forward
            for unit in units:
                unit.unshard()
                unit.reshard()
    finally:
        for hook in hooks:
            hook.remove()
        root.reshard()


def save_state(model: nn.Module, opt: torch.optim.Optimizer, folder: Path) -> None:
    """The sharded model and optimizer state into `folder` (a collective: each process writes its part)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, opt)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(folder))


def load_state(model: nn.Module, opt: torch.optim.Optimizer, folder: Path) -> None:
    """`save_state`'s files back into the sharded model and optimizer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, opt)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
