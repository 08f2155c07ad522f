"""The `hermesflow` command: one sub-command per verb, each configured by a dataclass.

Bad input (HermesFlowError) is printed as `error: ...` lines without a traceback, exit code 2.
Verbs that read data check all of it before they create any output.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hermesflow import __version__, config
from hermesflow.config import option
from hermesflow.data import read_homologous
from hermesflow.errors import HermesFlowError


@dataclass
class WorldConfig:
    """`hermesflow world`: write a split of the shapes world as homologous data."""

    out: Path = option(None, "output folder (must not exist or be empty)", required=True)
    n: int = option(1000, "number of scenes")
    seed: int = option(0, "random seed; the same seed and split give the same files")
    split: str = option("train", "which split; train and eval never share a scene", choices=("train", "eval"))


@dataclass
class ValidateConfig:
    """`hermesflow validate DATA`: check a homologous data file and summarise it."""

    data: Path = option(None, "data.jsonl, or a folder holding it", positional=True, required=True)
    image_size: int = option(32, "expected image width and height in pixels; 0 accepts any size")
    skip_bad: bool = option(False, "report bad records and go on without them instead of failing")


def run_world(cfg: WorldConfig) -> int:
    from hermesflow.world.build import write_world

    path = write_world(cfg.out, cfg.n, cfg.seed, cfg.split)
    print_summary(read_homologous(path).summary())
    return 0


def run_validate(cfg: ValidateConfig) -> int:
    data = read_homologous(cfg.data, image_size=cfg.image_size or None, skip_bad=cfg.skip_bad)
    for problem in data.skipped:
        print(f"skipped: {problem}", file=sys.stderr)
    print_summary(data.summary())
    return 0


def print_summary(summary: dict) -> None:
    for key, value in summary.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k:<16}{v}")
        else:
            print(f"{key:<18}{value}")


VERBS: dict[str, tuple[type, Callable[..., int]]] = {
    "world": (WorldConfig, run_world),
    "validate": (ValidateConfig, run_validate),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hermesflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hermesflow {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, (cls, _) in VERBS.items():
        doc = cls.__doc__.strip()
        config.add_arguments(verbs.add_parser(name, help=doc, description=doc), cls)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cls, run = VERBS[args.verb]
    try:
        return run(config.resolve(cls, args))
    except HermesFlowError as e:
        for line in str(e).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
