"""Configs as dataclasses: command line flags and YAML files made from the same fields.

Each verb's settings are one dataclass whose fields carry their help text (`help=` metadata), so a
field is documented once and appears as `--field-name` on the command line and as `field_name:` in
a YAML file. A verb that runs several components nests each component's options as a *group*
field (`RunConfig.curation` is a `CurationOptions`): the component receives that object and nothing
more, while the command line stays flat (`--n-captions`, not `--curation.n-captions`), so every flag
name is unique across a verb's groups. A YAML file may give a group's settings flat or under the
group's name (`curation: {n_captions: 8}`); `save` writes them nested.

Precedence: defaults < the verb's preset (a YAML file under `hermesflow/presets/<verb>/`, loaded as
a config file is) < `--config file.yaml` < flags. Whether a setting changes results is metadata on
its field (`changes_results=False` for a rerun may change it freely). The resolved config is saved
next to a verb's outputs.

Kept over transformers' HfArgumentParser, which builds the same flags from dataclasses: this one
checks every number's range and every choice in YAML files too, names the file and field that are
wrong, and tells required flags from defaults, which HfArgumentParser leaves to the caller.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from hermesflow.errors import UsageError
from hermesflow.io import atomic_write_text

C = TypeVar("C")
PRESETS = Path(__file__).resolve().parent / "presets"


def option(default: Any, help: str, minimum: float | None = None, maximum: float | None = None,
           changes_results: bool = True, **kwargs: Any) -> Any:
    """A config field with its help text, for numbers the range it must lie in (inclusive), and
    whether its value changes a verb's results (a rerun may change the others freely)."""
    return dataclasses.field(default=default, metadata={"help": help, "minimum": minimum, "maximum": maximum,
                                                        "changes_results": changes_results, **kwargs})


def group(cls: type, title: str) -> Any:
    """A field holding one component's options (a dataclass of `option`s), shown under `title` in --help."""
    return dataclasses.field(default_factory=cls, metadata={"group": True, "help": title})


def is_group(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("group"))


@functools.cache
def leaves(cls: type) -> dict[str, tuple[str | None, dataclasses.Field, type]]:
    """Every setting of a verb by its (flag) name: (the group holding it or None, field, owning class).
    Cached per class (a config's fields do not change); callers must not change the dict."""
    out: dict[str, tuple[str | None, dataclasses.Field, type]] = {}
    for f in dataclasses.fields(cls):
        inner = [(f.name, g, f.default_factory) for g in dataclasses.fields(f.default_factory)] if is_group(f) else [(None, f, cls)]
        for where, leaf, owner in inner:
            if leaf.name in out:  # a flag must mean one setting
                raise TypeError(f"{cls.__name__}: setting {leaf.name!r} appears twice")
            out[leaf.name] = (where, leaf, owner)
    return out


def flat(config: Any) -> dict[str, Any]:
    """A config's settings by name, its groups' settings beside its own."""
    values = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        values.update({g.name: getattr(value, g.name) for g in dataclasses.fields(value)} if is_group(f) else {f.name: value})
    return values


def build(cls: type[C], **values: Any) -> C:
    """The config of these settings by name (groups' settings given flat), without range checks."""
    names = leaves(cls)
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise TypeError(f"{cls.__name__}: unknown settings {unknown}")
    own = {k: v for k, v in values.items() if names[k][0] is None}
    for f in dataclasses.fields(cls):
        if is_group(f):
            own[f.name] = f.default_factory(**{k: v for k, v in values.items() if names[k][0] == f.name})
    return cls(**own)


def replace(config: C, **changes: Any) -> C:
    """`dataclasses.replace` with settings named flat, whichever group holds them."""
    return build(type(config), **{**flat(config), **changes})


def results_settings(config: Any) -> dict[str, Any]:
    """The settings by name that change results (those a rerun may not change)."""
    names = leaves(type(config))
    return {k: v for k, v in flat(config).items() if names[k][1].metadata.get("changes_results", True)}


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
    """One `--flag` per setting of the config dataclass `cls` (a bare argument if `positional`): a
    group's settings under the group's title, the verb's own in the sections of its SECTIONS
    ({title: field names}), if it has them."""
    sections: dict[str, Any] = {}
    for title, names in getattr(cls, "SECTIONS", {}).items():
        section = parser.add_argument_group(title)
        sections.update({name: section for name in names})
    for f in dataclasses.fields(cls):
        if is_group(f):
            section = parser.add_argument_group(f.metadata["help"])
            sections.update({g.name: section for g in dataclasses.fields(f.default_factory)})
    required = parser.add_argument_group("required") if any(
        f.metadata.get("required") and not f.metadata.get("positional") and f.name not in sections
        for f in dataclasses.fields(cls)) else None
    for name, (_, f, owner) in leaves(cls).items():
        kind = _base_type(typing.get_type_hints(owner)[name])
        help_text = _help(f)
        target = sections.get(name) or (required if f.metadata.get("required") and required is not None else parser)
        if f.metadata.get("positional"):
            parser.add_argument(name, type=kind, nargs="?", default=argparse.SUPPRESS, help=help_text)
        elif kind is bool:
            target.add_argument("--" + name.replace("_", "-"), action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            target.add_argument("--" + name.replace("_", "-"), type=kind, choices=f.metadata.get("choices"),
                                default=argparse.SUPPRESS, help=help_text)
    parser.add_argument("--config", type=Path, default=None, help="YAML file of settings; flags override it")


def _coerce(cls: type, name: str, value: Any, source: str) -> Any:
    _, _, owner = leaves(cls)[name]
    kind = _base_type(typing.get_type_hints(owner)[name])
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


def read_file(cls: type, path: Path, what: str = "config") -> dict[str, Any]:
    """The settings of a YAML file by name, checked to be settings of `cls` of the right types; a
    group's settings may stand flat or under the group's name."""
    names = leaves(cls)
    groups = {f.name for f in dataclasses.fields(cls) if is_group(f)}
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"{what} {path}: cannot be read ({e})") from None
    if not isinstance(loaded, dict):
        raise UsageError(f"{what} {path}: expected a mapping of setting: value")
    values: dict[str, Any] = {}
    for key, value in loaded.items():
        if key in groups and isinstance(value, dict):
            inside = {name for name, (where, _, _) in names.items() if where == key}
            stray = sorted(set(value) - inside)
            if stray:
                raise UsageError(f"{what} {path}: unknown settings {stray} under {key}; known there: {sorted(inside)}")
            values.update(value)
        else:
            values[key] = value
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise UsageError(f"{what} {path}: unknown settings {unknown}; known: {sorted(names)}")
    return {k: _coerce(cls, k, v, f"{what} {path}") for k, v in values.items()}


def preset_file(cls: type, name: str) -> Path:
    """The YAML file of a verb's preset, packaged beside this module (found installed or not)."""
    return PRESETS / cls.PRESETS / f"{name}.yaml"


def preset_names(folder: str) -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in (PRESETS / folder).glob("*.yaml")))


def load(cls: type[C], path: Path) -> C:
    """A config saved by `save` (or written by hand), completed as a `--config` file is."""
    return complete(cls, read_file(cls, path))


def resolve(cls: type[C], args: argparse.Namespace) -> C:
    """Build the config: dataclass defaults, then the verb's preset, then the YAML file of `--config`,
    then the flags."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None) is not None:
        values.update(read_file(cls, args.config))
    names = leaves(cls)
    # argparse gives an omitted optional positional the string "==SUPPRESS==" instead of leaving it out
    values.update({k: v for k, v in vars(args).items() if k in names and str(v) != argparse.SUPPRESS})
    return complete(cls, values)


def complete(cls: type[C], values: dict[str, Any]) -> C:
    """The config of these settings (by name) completed by the verb's preset, then the defaults, and
    checked: required settings, ranges, choices. A setting equal to its field's `unset` value (0 for
    "the preset's") is the preset's. `complete(type(c), flat(c))` completes a config made in code."""
    names = leaves(cls)
    values = dict(values)
    if getattr(cls, "PRESETS", None):
        preset = values.get("preset", names["preset"][1].default)
        if preset not in preset_names(cls.PRESETS):
            raise UsageError(f"preset must be one of {list(preset_names(cls.PRESETS))}, got {preset!r}")
        for key, (_, f, _) in names.items():
            if "unset" in f.metadata and key in values and values[key] == f.metadata["unset"]:
                del values[key]
        for key, value in read_file(cls, preset_file(cls, preset), "preset").items():  # a preset stands in for defaults only
            values.setdefault(key, value)
    missing = [f.name.upper() if f.metadata.get("positional") else "--" + f.name.replace("_", "-")
               for _, f, _ in names.values() if f.metadata.get("required") and values.get(f.name) is None]
    if missing:
        raise UsageError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required")
    for name, (_, f, _) in names.items():
        value = values.get(name, f.default)
        low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
        if value is not None and ((low is not None and value < low) or (high is not None and value > high)):
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            raise UsageError(f"--{name.replace('_', '-')} must be {bounds}, got {value}")
        choices = f.metadata.get("choices")
        if choices and name in values and values[name] not in choices:
            raise UsageError(f"{name} must be one of {list(choices)}, got {values[name]!r}")
    return build(cls, **values)


def _metavar(f: dataclasses.Field, kind: type) -> str:
    if kind is bool:
        return ""
    if f.metadata.get("choices"):
        return "{" + ",".join(map(str, f.metadata["choices"])) + "}"
    return {Path: "PATH", int: "N", float: "X"}.get(kind, "TEXT")


def short_help(prog: str, cls: type) -> str:
    """The verb's common flags, one line each with its brief (the class's COMMON: {name: brief}, in the
    order a run uses them) and default, then where the rest are: at most about 40 lines."""
    names = leaves(cls)
    lines = [f"usage: {usage(prog, cls)}", "", cls.__doc__.strip().splitlines()[0], "", "common flags:"]
    for name, brief in cls.COMMON.items():
        _, f, owner = names[name]
        kind = _base_type(typing.get_type_hints(owner)[name])
        flag = name.upper() if f.metadata.get("positional") else f"--{name.replace('_', '-')} {_metavar(f, kind)}".strip()
        default = " (required)" if f.metadata.get("required") else (
            "" if f.default is None or f.default == "" or f.default is False else f" (default: {f.default})")
        lines.append(f"  {flag:<26} {brief}{default}" if len(flag) < 26 else f"  {flag}\n  {'':<26} {brief}{default}")
    rest = len(names) - len(cls.COMMON)
    lines += ["", f"{rest} more flags, grouped in the order a run uses them: {prog} --help-all",
              "--config FILE.yaml takes any of them from a file (flags override it)."]
    return "\n".join(lines) + "\n"


def usage(prog: str, cls: type) -> str:
    """`hermesflow curate --model MODEL --data DATA --out OUT [options]`: what must be given, then the rest."""
    parts = [f.name.upper() if f.metadata.get("positional") else f"--{f.name.replace('_', '-')} {f.name.upper()}"
             for _, f, _ in leaves(cls).values() if f.metadata.get("required")]
    return " ".join([prog, *parts, "[options]"])


def to_dict(config: Any) -> dict:
    """The config as plain values, groups nested (paths as strings)."""
    plain = lambda v: str(v) if isinstance(v, Path) else v  # noqa: E731
    return {f.name: to_dict(getattr(config, f.name)) if is_group(f) else plain(getattr(config, f.name))
            for f in dataclasses.fields(config)}


def save(config: Any, path: Path) -> None:
    """Write the resolved config as YAML (atomically), each group's settings under its name."""
    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
