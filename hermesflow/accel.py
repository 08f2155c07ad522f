"""Where jobs run: accelerate picks the device, with one CPU rule of our own, and launches that would
run as something other than they say are refused before any work (`check_launch`)."""

from __future__ import annotations

import os

import torch

from hermesflow.errors import UsageError


def cpu_only() -> bool:
    """True when no accelerator is present. accelerate treats several CPU processes (torchrun) as one
    distributed job only when told `cpu=True`; with a GPU present it must be free to pick it."""
    xpu = getattr(torch, "xpu", None)
    return not (torch.cuda.is_available() or (xpu is not None and xpu.is_available()) or torch.backends.mps.is_available())


def check_launch(env: dict | None = None) -> None:
    """Refuse, in one line, a launch that would silently run as something else:
    - accelerate's FSDP or DeepSpeed plugin configs (on CPU accelerate turns FSDP into plain DDP without
      a word, and a plugin would wrap models our loop saves whole; HermesFlow shards with FSDP2 itself,
      --sharding fsdp);
    - `accelerate launch` with a config of several processes that started one (its CPU launcher
      does: it sets the rendezvous address but starts a single process, which then trains alone)."""
    env = os.environ if env is None else env
    for flag, plugin in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if env.get(flag, "").lower() == "true":
            raise UsageError(f"accelerate's {plugin} plugin config is not supported: launch with a multi-GPU config or torchrun, "
                             "and shard with --sharding fsdp (PyTorch's FSDP2, applied by HermesFlow itself)")
    if "ACCELERATE_USE_CPU" in env and "MASTER_ADDR" in env and "WORLD_SIZE" not in env:
        raise UsageError("accelerate launch started one process though its config asks for several (its CPU launcher "
                         "does); run several CPU processes with torchrun --nproc_per_node N -m hermesflow ...")


def partial_state():
    from accelerate import PartialState

    check_launch()
    return PartialState(cpu=cpu_only())
