"""The `hermesflow` command: one sub-command per verb, each configured by a dataclass.

Bad input (HermesFlowError) is printed as `error: ...` lines without a traceback, exit code 2.
Verbs that read data check all of it before they create any output.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from hermesflow import __version__, config
from hermesflow.data import read_data, read_homologous
from hermesflow.errors import HermesFlowError
from hermesflow.io import atomic_write_json
from hermesflow.settings import (
    AblateConfig,
    ConvertShowoConfig,
    CurateConfig,
    EvalConfig,
    ImportOfficialConfig,
    PretrainConfig,
    ReportConfig,
    RunConfig,
    TrainConfig,
    ValidateConfig,
    WorldConfig,
)


def run_world(cfg: WorldConfig) -> int:
    from hermesflow.world.build import write_world

    path = write_world(cfg.out, cfg.n, cfg.seed, cfg.split, image_size=cfg.image_size)
    print_summary(read_homologous(path).summary())
    return 0


def run_validate(cfg: ValidateConfig) -> int:
    data = read_data(cfg.data, cfg, image_size=cfg.image_size or None, skip_bad=cfg.skip_bad)
    for problem in data.skipped:
        print(f"skipped: {problem}", file=sys.stderr)
    print_summary(data.summary())
    return 0


def run_pretrain(cfg) -> int:
    from hermesflow.pretrain import pretrain

    pretrain(cfg)
    print(f"model written to {cfg.out}")
    return 0


def run_eval(cfg: EvalConfig) -> int:
    from hermesflow.backbones import GenerationConfig, load_backbone
    from hermesflow.data import check_fit
    from hermesflow.evaluate import data_eval_items, evaluate, format_table, save_sample_sheet, world_eval_items
    from hermesflow.scorers.similarity import SentenceSimilarity

    backbone = load_backbone(cfg.model, cfg.dtype).eval()
    if cfg.data:
        data = read_data(cfg.data, cfg)
        check_fit(backbone, data)
        items = data_eval_items(data, cfg.n)
    else:
        items = world_eval_items(cfg.n, cfg.seed, backbone.image_size)
    gen = GenerationConfig(guidance=cfg.guidance, temperature=cfg.temperature, steps=cfg.steps, seed=cfg.seed)
    metrics, generated = evaluate(backbone, items, gen, SentenceSimilarity(cfg.encoder))
    metrics["model"] = str(cfg.model)
    cfg.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg.out / "metrics.json", metrics)
    config.save(cfg, cfg.out / "eval_config.yaml")
    save_sample_sheet(cfg.out / "generated.png", generated)
    print(format_table(metrics))
    print(f"written to {cfg.out / 'metrics.json'}")
    return 0


def run_curate(cfg: CurateConfig) -> int:
    from hermesflow.accel import partial_state

    from hermesflow.backbones import load_backbone
    from hermesflow.data import check_fit
    from hermesflow.iterate import curate_round, require_qa
    from hermesflow.scorers.similarity import SentenceSimilarity

    data = require_qa(read_data(cfg.data, cfg))
    state = partial_state()
    backbone = load_backbone(cfg.model, cfg.dtype).to(state.device).eval()
    check_fit(backbone, data)
    manifest = curate_round(backbone, SentenceSimilarity(cfg.encoder, cfg.pooling), data, cfg.out, cfg, cfg.round, cfg.previous, state)
    if state.is_main_process:
        config.save(cfg, cfg.out / "curate_config.yaml")
        print(json.dumps(manifest["counts"], indent=2))
    return 0


def run_train(cfg: TrainConfig) -> int:
    from hermesflow.accel import partial_state

    from hermesflow.backbones import load_backbone
    from hermesflow.iterate import train_round

    data = read_data(cfg.data, cfg)
    backbone = load_backbone(cfg.model)
    state = partial_state()
    train_round(backbone, data, cfg.prefs, cfg, state, out=cfg.out)
    if state.is_main_process:
        config.save(cfg, cfg.out / "train_config.yaml")
        written = "model" if not cfg.lora_r or cfg.lora_merge else "adapter"
        print(f"{written} written to {cfg.out / written}")
    return 0


def run_convert_showo(cfg: ConvertShowoConfig) -> int:
    from hermesflow.convert_showo import convert_showo

    out = convert_showo(cfg.src, cfg.dst, magvit=cfg.magvit, tokenizer=cfg.tokenizer, max_seq_length=cfg.max_seq_length)
    print(f"Show-o model written to {out}")
    return 0


def run_rounds(cfg: RunConfig) -> int:
    from hermesflow.iterate import run

    run(cfg)
    return 0


def run_report(cfg: ReportConfig) -> int:
    from hermesflow.report import build_ablation_report, build_report

    ablation = (cfg.run / "ablation.json").exists()
    page = build_ablation_report(cfg.run, cfg.gallery) if ablation else build_report(cfg.run, cfg.gallery)
    print(f"report written to {page}")
    return 0


def run_ablate(cfg: AblateConfig) -> int:
    from hermesflow.ablate import ablate

    ablate(cfg)
    return 0


def run_import_official(cfg: ImportOfficialConfig) -> int:
    from hermesflow.importer import import_official
    from hermesflow.io import atomic_write_text

    pairs = import_official(cfg.file)
    ties = {branch: [p.id for p in pairs if branch in p.tied()] for branch in ("caption", "image")}
    for branch, ids in ties.items():
        if ids:
            print(f"note: {len(ids)} records score their {branch} pair equally (ids {', '.join(ids[:5])}"
                  f"{', ...' if len(ids) > 5 else ''}); such a pair carries no preference to learn from", file=sys.stderr)
    if cfg.out:
        atomic_write_text(cfg.out, "".join(json.dumps(p.to_json(), ensure_ascii=False) + "\n" for p in pairs))
    print_summary({"records": len(pairs), "caption_ties": len(ties["caption"]), "image_ties": len(ties["image"]),
                   **({"written": str(cfg.out)} if cfg.out else {})})
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
    "pretrain": (PretrainConfig, run_pretrain),
    "eval": (EvalConfig, run_eval),
    "curate": (CurateConfig, run_curate),
    "train": (TrainConfig, run_train),
    "iterate": (RunConfig, run_rounds),
    "run": (RunConfig, run_rounds),
    "report": (ReportConfig, run_report),
    "ablate": (AblateConfig, run_ablate),
    "convert-showo": (ConvertShowoConfig, run_convert_showo),
    "import-official": (ImportOfficialConfig, run_import_official),
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
    except BrokenPipeError:  # `hermesflow validate DATA | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0
