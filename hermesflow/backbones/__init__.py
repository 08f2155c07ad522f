"""Unified models behind one protocol (`base.Backbone`), loaded by the `model_type` of a folder's
config.json. Each adapter lives in its own module and is imported only when a folder asks for it."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from hermesflow.backbones.base import (
    DTYPES,
    Backbone,
    BackboneBase,
    ExactEstimator,
    GenerationConfig,
    ImageEstimator,
    LogProbs,
    MaskedEstimator,
)
from hermesflow.errors import UsageError

# model_type in config.json -> (module, class)
REGISTRY: dict[str, tuple[str, str]] = {
    "hermesflow-unified": ("hermesflow.testbed.model", "UnifiedModel"),
    "janus": ("hermesflow.backbones.janus", "JanusBackbone"),
    "show-o": ("hermesflow.backbones.showo", "ShowoBackbone"),
}

BASE_MODEL = Path(__file__).resolve().parent.parent / "assets" / "base"


def model_type_of(directory: str | Path) -> str:
    """The `model_type` of a model folder, with a clear error for anything that is not one."""
    directory = Path(directory)
    if not directory.exists():
        raise UsageError(f"model folder {directory}: no such folder")
    if not directory.is_dir():
        raise UsageError(f"model folder {directory}: not a folder")
    path = directory / "config.json"
    if not path.is_file():
        raise UsageError(f"model folder {directory}: config.json not found (expected a save_pretrained folder)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"model folder {directory}: config.json is not valid JSON ({e})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("model_type"), str):
        raise UsageError(f"model folder {directory}: config.json has no model_type; known: {', '.join(REGISTRY)}")
    return raw["model_type"]


def backbone_class(model_type: str) -> type:
    if model_type not in REGISTRY:
        raise UsageError(f"model_type {model_type!r} has no HermesFlow adapter; known: {', '.join(REGISTRY)}")
    module, name = REGISTRY[model_type]
    return getattr(importlib.import_module(module), name)


def load_backbone(directory: str | Path | None = None, dtype: str = "fp32") -> Backbone:
    """The backbone saved in `directory` (default: the shipped base model), weights in `dtype`."""
    directory = Path(directory) if directory is not None else BASE_MODEL
    if dtype not in DTYPES:
        raise UsageError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    return backbone_class(model_type_of(directory)).from_pretrained(directory, dtype=DTYPES[dtype])


__all__ = [
    "BASE_MODEL", "DTYPES", "REGISTRY", "Backbone", "BackboneBase", "ExactEstimator", "GenerationConfig",
    "ImageEstimator", "LogProbs", "MaskedEstimator", "backbone_class", "load_backbone", "model_type_of",
]
