"""Configs as dataclasses: command line flags and YAML files made from the same fields.

Each verb's settings are one dataclass whose fields carry their help text (`help=` metadata), so a
field is documented once and appears as `--field-name` on the command line and as `field_name:` in
a YAML file. Precedence: defaults < a preset's values (`PRESETS` on the config class) < `--config
file.yaml` < flags. The resolved config is saved next to a verb's outputs.

Kept over transformers' HfArgumentParser, which builds the same flags from dataclasses: this one
checks every number's range and every choice in YAML files too, names the file and field that are
wrong, and tells required flags from defaults, which HfArgumentParser leaves to the caller.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from hermesflow.errors import UsageError
from hermesflow.io import atomic_write_text

C = TypeVar("C")


def option(default: Any, help: str, minimum: float | None = None, maximum: float | None = None, **kwargs: Any) -> Any:
    """A config field with its help text and, for numbers, the range it must lie in (inclusive)."""
    return dataclasses.field(default=default, metadata={"help": help, "minimum": minimum, "maximum": maximum, **kwargs})


def _base_type(annotation: Any) -> Any:
    """`int | None` -> int, `Path` -> Path."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0]
    return annotation


def _help(f: dataclasses.Field) -> str:
    """The field's help with its default said once, or `(required)`."""
    text = f.metadata.get("help", "")
    if f.metadata.get("required"):
        return text + " (required)"
    if "(default" in text or f.default is None or f.default == "":
        return text  # the help says what the default is, or there is none to say
    return text + f" (default: {f.default})"


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--flag` per field of the config dataclass `cls` (a bare argument if `positional`), in the
    argument groups named by the class's GROUPS ({title: field names}), if it has them."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, Any] = {}
    for title, names in getattr(cls, "GROUPS", {}).items():
        group = parser.add_argument_group(title)
        groups.update({name: group for name in names})
    required = parser.add_argument_group("required") if not groups and any(
        f.metadata.get("required") and not f.metadata.get("positional") for f in dataclasses.fields(cls)) else None
    for f in dataclasses.fields(cls):
        kind = _base_type(hints[f.name])
        help_text = _help(f)
        target = required if f.metadata.get("required") and required is not None else groups.get(f.name, parser)
        if f.metadata.get("positional"):
            parser.add_argument(f.name, type=kind, nargs="?", default=argparse.SUPPRESS, help=help_text)
        elif kind is bool:
            target.add_argument(
                "--" + f.name.replace("_", "-"), action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS, help=help_text,
            )
        else:
            target.add_argument(
                "--" + f.name.replace("_", "-"), type=kind, choices=f.metadata.get("choices"),
                default=argparse.SUPPRESS, help=help_text,
            )
    parser.add_argument("--config", type=Path, default=None, help="YAML file of settings; flags override it")


def _coerce(cls: type, name: str, value: Any, source: str) -> Any:
    kind = _base_type(typing.get_type_hints(cls)[name])
    if value is None:
        return None
    if kind is bool and not isinstance(value, bool):
        raise UsageError(f"{source}: {name} must be true or false, got {value!r}")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is Path and isinstance(value, str):
        return Path(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UsageError(f"{source}: {name} must be {kind.__name__}, got {value!r}")
    return value


def load(cls: type[C], path: Path) -> C:
    """A config saved by `save` (or written by hand) with nothing else over it."""
    return resolve(cls, argparse.Namespace(config=Path(path)))


def resolve(cls: type[C], args: argparse.Namespace) -> C:
    """Build the config: dataclass defaults, then the YAML file of `--config`, then the flags."""
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if getattr(args, "config", None) is not None:
        path = args.config
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise UsageError(f"config {path}: cannot be read ({e})") from None
        if not isinstance(loaded, dict):
            raise UsageError(f"config {path}: expected a mapping of setting: value")
        unknown = sorted(set(loaded) - names)
        if unknown:
            raise UsageError(f"config {path}: unknown settings {unknown}; known: {sorted(names)}")
        values.update({k: _coerce(cls, k, v, f"config {path}") for k, v in loaded.items()})
    # argparse gives an omitted optional positional the string "==SUPPRESS==" instead of leaving it out
    values.update({k: v for k, v in vars(args).items() if k in names and str(v) != argparse.SUPPRESS})
    presets = getattr(cls, "PRESETS", None)
    if presets is not None and values.get("preset") in presets:  # a preset stands in for defaults only
        for key, value in presets[values["preset"]].items():
            values.setdefault(key, value)
    missing = [f.name.upper() if f.metadata.get("positional") else "--" + f.name.replace("_", "-")
               for f in dataclasses.fields(cls) if f.metadata.get("required") and values.get(f.name) is None]
    if missing:
        raise UsageError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required")
    for f in dataclasses.fields(cls):
        value = values.get(f.name, f.default)
        low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
        if value is not None and ((low is not None and value < low) or (high is not None and value > high)):
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            raise UsageError(f"--{f.name.replace('_', '-')} must be {bounds}, got {value}")
        choices = f.metadata.get("choices")
        if choices and f.name in values and values[f.name] not in choices:
            raise UsageError(f"{f.name} must be one of {list(choices)}, got {values[f.name]!r}")
    return cls(**values)


def usage(prog: str, cls: type) -> str:
    """`hermesflow curate --model MODEL --data DATA --out OUT [options]`: what must be given, then the rest."""
    parts = [f.name.upper() if f.metadata.get("positional") else f"--{f.name.replace('_', '-')} {f.name.upper()}"
             for f in dataclasses.fields(cls) if f.metadata.get("required")]
    return " ".join([prog, *parts, "[options]"])


def to_dict(config: Any) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()}


def save(config: Any, path: Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))

