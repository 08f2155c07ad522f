"""Sharded training with PyTorch's own FSDP2 (`--sharding fsdp`), on the processes accelerate launched.

accelerate owns launch, process group and device; its FSDP plugin does not shard on CPU (it silently
becomes DDP), so the loop applies `fully_shard` itself: each of the backbone's transformer blocks
(`Backbone.shard_units`) is one unit, gathered just before its forward and freed after, and the
module the loop calls (`PolicyLogps`) is the root, holding what no block holds (embeddings, heads,
a vision tower). Only the optimizer goes through `accelerator.prepare`.

Each process then holds 1/N of the weights, gradients and AdamW state. A checkpoint is sharded too
(`torch.distributed.checkpoint`, each process writing its own part); the trained model is gathered
into an ordinary, unsharded module (`gathered`) that every process gets back, as after DDP.
"""

from __future__ import annotations

import copy
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


def gathered(sharded: nn.Module, frame: nn.Module, prefix: str = "") -> nn.Module:
    """The whole weights of a sharded module (a collective: every process calls it), put into `frame`
    (a `meta_copy` of the module taken before sharding, or of its submodule at `prefix`); returns the frame."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True))
    own = {key[len(prefix):]: value.detach().clone() for key, value in full.items() if key.startswith(prefix)}
    frame.load_state_dict(own, assign=True)
    return frame


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
