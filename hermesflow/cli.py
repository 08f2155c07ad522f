"""The `hermesflow` command: one sub-command per verb, each configured by a dataclass.

Bad input (HermesFlowError) is printed as `error: ...` lines without a traceback, exit code 2; an
error of the system (a file that cannot be written) as one line naming the path, exit code 1; Ctrl-C
as one line saying how to resume, exit code 130 (SIGTERM alike, exit code 143). Verbs that read data check all of it, and `--out`
is checked to be a writable folder, before they create any output or load a model.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable

from hermesflow import __version__, config
from hermesflow.data import read_homologous
from hermesflow.errors import HermesFlowError, UsageError
from hermesflow.io import atomic_write_json
from hermesflow.settings import (
    AblateConfig,
    AnswerConfig,
    ConvertShowoConfig,
    CurateConfig,
    EvalConfig,
    ExportConfig,
    ImportOfficialConfig,
    PlanConfig,
    PretrainConfig,
    QuestionsConfig,
    ReportConfig,
    RunConfig,
    StatusConfig,
    TrainConfig,
    ValidateConfig,
    WorldConfig,
)


def run_world(cfg: WorldConfig) -> int:
    from hermesflow.world.build import write_world

    prompts = cfg.prompts if cfg.prompts != "auto" else ("seen" if cfg.split == "train" else "all")
    path = write_world(cfg.out, cfg.n, cfg.seed, cfg.split, image_size=cfg.image_size, prompts=prompts)
    print_summary(read_homologous(path).summary())
    return 0


def run_validate(cfg: ValidateConfig) -> int:
    from hermesflow.world.judge import read_world_data

    data = read_world_data(cfg.data, cfg.reading, image_size=cfg.image_size or None)
    if cfg.model:
        from hermesflow.backbones import load_backbone
        from hermesflow.data import check_fit

        data = check_fit(load_backbone(cfg.model), data, skip_bad=cfg.reading.skip_bad)
    if cfg.write_clean:
        from hermesflow.data import write_clean

        print(f"{write_clean(data, cfg.write_clean)} good records written to {cfg.write_clean}", file=sys.stderr)
    summary = data.summary()
    print_summary(summary)
    if summary["without_qa"]:
        print(f"note: {summary['without_qa']} of {summary['records']} records have no questions, which curation needs; "
              "`hermesflow questions` writes them, `--questions FILE` adds them", file=sys.stderr)
    return 0


def run_pretrain(cfg) -> int:
    from hermesflow.testbed.pretrain import pretrain

    pretrain(cfg)
    print(f"model written to {cfg.out}")
    return 0


def run_eval(cfg: EvalConfig) -> int:
    from hermesflow.backbones import GenerationConfig, load_backbone
    from hermesflow.data import check_fit
    from hermesflow.evaluate import data_eval_items, format_table
    from hermesflow.judges import vlm_judge
    from hermesflow.recipes.run import evaluation_settings, evaluation_stage, settle
    from hermesflow.scorers.similarity import SentenceSimilarity
    from hermesflow.world.build import draw_seed, world_eval_items
    from hermesflow.world.judge import read_world_data

    backbone = load_backbone(cfg.model, cfg.dtype).eval()
    cfg = settle(cfg, backbone)
    if cfg.data:
        data = read_world_data(cfg.data, cfg.reading)
        check_fit(backbone, data)  # before any work: a refused record writes nothing
        items = data_eval_items(data, cfg.n)
    else:
        items = world_eval_items(cfg.n, cfg.seed, backbone.image_size, cfg.draw)
    seed = cfg.seed if cfg.data else draw_seed(cfg.seed, cfg.draw)
    gen = GenerationConfig(guidance=cfg.guidance, temperature=cfg.temperature, steps=cfg.steps, seed=seed)
    settings = evaluation_settings(cfg.n, cfg.data, gen, cfg.encoder, "mean", cfg.dtype, cfg.judge, cfg.api, cfg.reading.questions,
                                   None if cfg.data else cfg.draw, cfg.choice_score)
    judge = vlm_judge(cfg.judge, cfg.api, cfg.out)
    result = evaluation_stage(backbone, cfg.out, lambda: items, gen, SentenceSimilarity(cfg.encoder), lambda: judge, settings,
                              cfg.overwrite, ("metrics.json", "generated.png", "eval_config.yaml"))
    if judge is not None:
        print(f"api: {judge.client.usage.line()}", file=sys.stderr)
    atomic_write_json(cfg.out / "metrics.json", {**result.to_json(), "model": str(cfg.model)})
    config.save(cfg, cfg.out / "eval_config.yaml")
    print(format_table(result))
    print(f"written to {cfg.out / 'metrics.json'}")
    return 0


def run_curate(cfg: CurateConfig) -> int:
    from hermesflow.accel import partial_state
    from hermesflow.backbones import load_backbone
    from hermesflow.data import check_fit
    from hermesflow.recipes.run import curate_round, require_qa, settle
    from hermesflow.scorers.similarity import SentenceSimilarity
    from hermesflow.world.judge import read_world_data

    data = require_qa(read_world_data(cfg.data, cfg.reading))
    state = partial_state()
    backbone = load_backbone(cfg.model, cfg.dtype).to(state.device).eval()
    cfg = settle(cfg, backbone)
    check_fit(backbone, data)
    manifest = curate_round(backbone, SentenceSimilarity(cfg.curation.encoder, cfg.curation.pooling), data, cfg.out, cfg, cfg.round - 1,
                            cfg.previous, state)
    if state.is_main_process:
        config.save(cfg, cfg.out / "curate_config.yaml")
        print(json.dumps(manifest["counts"], indent=2))
    return 0


def run_train(cfg: TrainConfig) -> int:
    from hermesflow.accel import partial_state
    from hermesflow.backbones import load_backbone
    from hermesflow.recipes.run import settle, train_round
    from hermesflow.world.judge import read_world_data

    if cfg.training.replay:
        raise UsageError("--replay trains on a run's earlier rounds, which `hermesflow train` is not given: use hermesflow run")
    data = read_world_data(cfg.data, cfg.reading)
    backbone = load_backbone(cfg.model)
    cfg = settle(cfg, backbone)  # GRPO samples with the curation's guidance
    state = partial_state()
    train_round(backbone, data, cfg.prefs, cfg, state, out=cfg.out)
    if state.is_main_process:
        config.save(cfg, cfg.out / "train_config.yaml")
        written = "model" if not cfg.training.lora_r or cfg.training.lora_merge else "adapter"
        print(f"{written} written to {cfg.out / written}")
    return 0


def run_convert_showo(cfg: ConvertShowoConfig) -> int:
    from hermesflow.convert_showo import convert_showo, read_magvit_config

    sizes = read_magvit_config(cfg.magvit_config) if cfg.magvit_config else None
    out = convert_showo(cfg.src, cfg.dst, magvit=cfg.magvit, tokenizer=cfg.tokenizer, max_seq_length=cfg.max_seq_length,
                        magvit_config=sizes)
    print(f"Show-o model written to {out}")
    return 0


def run_rounds(cfg: RunConfig) -> int:
    from hermesflow.recipes.run import run

    run(cfg)
    return 0


def run_report(cfg: ReportConfig) -> int:
    from hermesflow.report import build_ablation_report, build_report
    from hermesflow.world.judge import WORLD

    ablation = (cfg.run / "ablation.json").exists()
    page = (build_ablation_report if ablation else build_report)(cfg.run, cfg.gallery, WORLD)
    print(f"report written to {page}")
    return 0


def run_status(cfg: StatusConfig) -> int:
    from hermesflow.status import status

    print("\n".join(status(cfg.run)))
    return 0


def run_plan(cfg: PlanConfig) -> int:
    from hermesflow.plan import GB, format_plan, plan

    p = plan(cfg.model, cfg.dtype, cfg.lora_r, cfg.sharding, cfg.processes, cfg.batch_size, cfg.reference)
    settings = (f"{cfg.dtype}, {'LoRA r ' + str(cfg.lora_r) if cfg.lora_r else 'full fine-tuning'}, {cfg.sharding} over "
                f"{cfg.processes} process{'es' if cfg.processes > 1 else ''}, --batch-size {cfg.batch_size}, {cfg.reference} reference")
    print(format_plan(p, cfg.model, settings, cfg.gpu_memory * GB if cfg.gpu_memory else None, cfg.processes))
    return 0


def run_ablate(cfg: AblateConfig) -> int:
    from hermesflow.recipes.ablate import ablate

    ablate(cfg)
    return 0


def run_questions(cfg: QuestionsConfig) -> int:
    from hermesflow.api import ReplyCache, api_client
    from hermesflow.questions import generate_questions
    from hermesflow.world.judge import WORLD, read_world_data

    data = read_world_data(cfg.data, cfg.reading)
    client = cache = None
    if cfg.source == "llm":
        client = api_client(cfg.api)
        cache = ReplyCache(cfg.api.api_cache or cfg.out.with_name(cfg.out.name + ".cache.jsonl"))
    try:
        summary = generate_questions(data, cfg.out, cfg.source, client, cache, cfg.redo, cfg.api.workers, WORLD)
    finally:
        if client is not None:
            print(f"api: {client.usage.line()}", file=sys.stderr)
    print_summary(summary)
    return 0


def run_export(cfg: ExportConfig) -> int:
    from hermesflow.backbones import GenerationConfig, load_backbone
    from hermesflow.benchmarks import export_dpg, export_geneval
    from hermesflow.recipes.run import settle

    backbone = load_backbone(cfg.model, cfg.dtype).eval()
    cfg = settle(cfg, backbone)
    gen = GenerationConfig(guidance=cfg.guidance, temperature=cfg.temperature, steps=cfg.steps, seed=cfg.seed)
    export = export_geneval if cfg.benchmark == "geneval" else export_dpg
    print_summary(export(backbone, cfg.prompts, cfg.out, cfg.n, gen))
    return 0


def run_answer(cfg: AnswerConfig) -> int:
    from hermesflow.backbones import load_backbone
    from hermesflow.benchmarks import answer_pope

    metrics = answer_pope(load_backbone(cfg.model, cfg.dtype).eval(), cfg.questions, cfg.images, cfg.out, cfg.batch_size, cfg.choice_score)
    print_summary({k: round(v, 4) if isinstance(v, float) else "undefined" if v is None else v for k, v in metrics.items()})
    print(f"written to {cfg.out / 'answers.jsonl'} and {cfg.out / 'metrics.json'}")
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
    "status": (StatusConfig, run_status),
    "ablate": (AblateConfig, run_ablate),
    "plan": (PlanConfig, run_plan),
    "convert-showo": (ConvertShowoConfig, run_convert_showo),
    "import-official": (ImportOfficialConfig, run_import_official),
    "questions": (QuestionsConfig, run_questions),
    "export": (ExportConfig, run_export),
    "answer": (AnswerConfig, run_answer),
}


# Verbs whose --out is a folder they create: checked to be writable before any model loads.
OUT_FOLDER_VERBS = ("world", "pretrain", "eval", "curate", "train", "iterate", "run", "ablate")


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: `--round 3` must not silently mean `--rounds 3`
    parser = argparse.ArgumentParser(prog="hermesflow", description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"hermesflow {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, (cls, _) in VERBS.items():
        doc = cls.__doc__.strip()
        usage = config.usage(f"hermesflow {name}", cls)
        verb = verbs.add_parser(name, help=doc, description=doc, usage=usage, allow_abbrev=False, add_help=not hasattr(cls, "COMMON"))
        if hasattr(cls, "COMMON"):  # a verb of many flags: -h shows the common ones, --help-all every one
            verb.add_argument("-h", "--help", action=ShortHelp, verb=(f"hermesflow {name}", cls), help="the common flags")
            verb.add_argument("--help-all", action="help", help="every flag, grouped in the order a run uses them")
        config.add_arguments(verb, cls)
    return parser


class ShortHelp(argparse.Action):
    """`-h`: print the verb's common flags and exit."""

    def __init__(self, option_strings, dest, verb: tuple[str, type], help: str):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)
        self.verb = verb

    def __call__(self, parser, namespace, values, option_string=None):
        print(config.short_help(*self.verb), end="")
        parser.exit()


def verb_parser(parser: argparse.ArgumentParser, verb: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[verb]


def unknown_arguments(parser: argparse.ArgumentParser, extra: list[str]) -> str:
    """`unrecognized arguments: --modle foo (did you mean --model?)`, naming the closest known flag."""
    known = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    hints = []
    for arg in extra:
        if arg.startswith("--"):
            close = difflib.get_close_matches(arg.split("=")[0], known, n=1, cutoff=0.6)
            hints += [f"{arg.split('=')[0]}: did you mean {close[0]}?"] if close else []
    return f"unrecognized arguments: {' '.join(extra)}" + (f" ({'; '.join(hints)})" if hints else "")


def check_out_folder(path: Path) -> None:
    """--out must be a folder, or creatable as one, where we may write: said before any model loads."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {path}: exists and is not a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"--out {path}: cannot be created, {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {path}: {existing} is not writable")
    try:  # permissions are not all: /proc, /sys or a read-only mount refuse files even to root
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as e:
        raise UsageError(f"--out {path}: no file can be written in {existing} ({e.strerror or e})") from None


def _out_hint(args: argparse.Namespace) -> str:
    out = getattr(args, "out", None)
    return f" (the work saved in {out} is kept)" if out else ""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or `kill`'s stop), handled as Ctrl-C is: every file is written whole, so a rerun resumes."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the verb's parser, with its usage, not the top-level one
        verb_parser(parser, args.verb).error(unknown_arguments(verb_parser(parser, args.verb), extra))
    cls, run = VERBS[args.verb]
    try:
        cfg = config.resolve(cls, args)
        if args.verb in OUT_FOLDER_VERBS:
            check_out_folder(Path(cfg.out))
        return run(cfg)
    except HermesFlowError as e:
        for line in str(e).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: every file is written whole (atomically or line by line), so a rerun resumes
        print(f"\ninterrupted: rerun the same command to resume{_out_hint(args)}", file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130
    except BrokenPipeError:  # `hermesflow validate DATA | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0
    except OSError as e:  # the system refused (disk full, permissions): one line naming the path
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
