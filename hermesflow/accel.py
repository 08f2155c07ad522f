"""Where jobs run: accelerate picks the device, with one CPU rule of our own."""

from __future__ import annotations

import torch


def cpu_only() -> bool:
    """True when no accelerator is present. accelerate treats several CPU processes (torchrun) as one
    distributed job only when told `cpu=True`; with a GPU present it must be free to pick it."""
    xpu = getattr(torch, "xpu", None)
    return not (torch.cuda.is_available() or (xpu is not None and xpu.is_available()) or torch.backends.mps.is_available())


def partial_state():
    from accelerate import PartialState

    return PartialState(cpu=cpu_only())
