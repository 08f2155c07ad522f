"""Self-play rounds (paper §3.3) and the default pipeline (`hermesflow run` / `iterate`).

A recipe: it loads a backbone by its folder's model_type and wires the components (curation,
training, evaluation) round by round, never touching the model's internals. Layout of a run
folder, each stage skipped when its output exists, so a killed run resumes in any round at the
stage it was in (curation and training also resume inside themselves):

    base/eval/metrics.json                  the starting model's scores
    round-1/prefs.jsonl, manifest.json      curated with the round's starting model
    round-1/train/                          reference-<key>.safetensors (cached reference log-probs, keyed by
                                            weights, estimator, precision and preference content),
                                            metrics.jsonl, and accelerate state while training
    round-1/adapter/                        the LoRA adapter in PEFT's format (with --lora-r)
    round-1/model/                          the trained model, the next round's start
    round-1/eval/metrics.json
    summary.json, summary.txt
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from hermesflow import config
from hermesflow.backbones import BASE_MODEL, Backbone, GenerationConfig, load_backbone
from hermesflow.curate import MANIFEST, CurationSettings, check_curation_data, curate, merge
from hermesflow.data import check_fit, read_homologous
from hermesflow.errors import DataError, UsageError
from hermesflow.evaluate import data_eval_items, evaluate
from hermesflow.grpo import grpo_settings, train_grpo
from hermesflow.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from hermesflow.judges import judge_setting, vlm_judge
from hermesflow.options import ApiOptions
from hermesflow.prefs import PREFS, read_prefs
from hermesflow.records import QUESTIONS_HINT, EvalItem, HomologousData
from hermesflow.results import Evaluation
from hermesflow.settings import CurateConfig, RunConfig
from hermesflow.stages import claim, clear, differences, file_digest, refusal, say, settings_file
from hermesflow.train import examples_from, train
from hermesflow.world.build import draw_seed, world_eval_items, write_world
from hermesflow.world.judge import WORLD, read_scenes, read_world_data
from hermesflow.world.render import save_sample_sheet


def curation_settings(cfg, round_index: int) -> CurationSettings:
    """The curation options of a run or curate config, for one round."""
    return CurationSettings(**asdict(cfg.curation), dtype=cfg.dtype, round=round_index, seed=cfg.seed)


# What a stage writes into its folder, deleted by --overwrite when its settings changed; a round's
# curation takes what was trained and evaluated from it along.
CURATE_OUTPUTS = ("shards", PREFS, MANIFEST, "train", "model", "adapter", "eval")
TRAIN_OUTPUTS = ("train", "model", "adapter", "eval")
EVAL_OUTPUTS = ("metrics.json", "generated.png")


def curate_round(backbone: Backbone, similarity, data: HomologousData, round_dir: Path, cfg, round_index: int,
                 previous_dir: Path | None, state) -> dict:
    """Curate (sharded over processes) and merge one round; returns its manifest. The round folder
    records what made it (model, data, previous round, options): a rerun with the same resumes, with
    others is refused unless `cfg.overwrite`."""
    settings = curation_settings(settle(cfg, backbone), round_index)
    fingerprint = backbone.fingerprint()
    judge = round_judge(cfg, settings, state)
    stage = {**config.to_dict(settings), "model": fingerprint, "model_type": backbone.model_type,
             "data": file_digest(data.path), "previous": file_digest(Path(previous_dir) / PREFS) if previous_dir else None,
             **({"judge": judge.fingerprint()} if judge is not None else {})}
    label = f"round {round_index + 1} curation"
    if state.is_main_process:
        reused = claim(round_dir, "curate", label, stage, CURATE_OUTPUTS, cfg.overwrite)
        if reused and (round_dir / MANIFEST).exists():
            say(f"reusing {label}: {round_dir / PREFS} ({len(data.records)} records)")
    state.wait_for_everyone()
    if (round_dir / MANIFEST).exists():
        return json.loads((round_dir / MANIFEST).read_text())
    previous = read_prefs(previous_dir) if previous_dir is not None else {}
    with backbone.inference():  # sharded: each process its share of the batches, however many forwards each takes
        curate(backbone, similarity, data, round_dir, settings, previous, state.process_index, state.num_processes, WORLD, judge)
    state.wait_for_everyone()
    if state.is_main_process:
        merge(round_dir, data, state.num_processes, {
            "round": round_index + 1,  # as in the round-N folder
            "model_type": backbone.model_type,
            "model_sha1": fingerprint,
            "data": str(data.path.resolve()),
            "previous": str(previous_dir) if previous_dir else None,
            "settings": config.to_dict(settings),
            # captions longer than the model's text slot, cut there as generation prompts (--long-text truncate)
            "truncated_prompts": sum(backbone.prompt_cut(r.caption) > 0 for r in data.records),
        })
    state.wait_for_everyone()
    return json.loads((round_dir / MANIFEST).read_text())


def round_judge(cfg, settings: CurationSettings, state) -> Backbone | None:
    """With --judge-model base, the frozen judge of the rounds after the first: the run's starting model
    (None: the policy judges, as always in the first round, where the two are one)."""
    if settings.judge_model == "policy" or settings.round == 0:
        return None
    if isinstance(cfg, CurateConfig):
        raise UsageError("--judge-model base: `hermesflow curate` does not know the run's starting model; "
                         "curate later rounds with `hermesflow run` (or judge with the policy)")
    judge = load_backbone(cfg.model or BASE_MODEL, cfg.dtype).to(state.device).eval()
    settle(cfg, judge)  # it reads over-long prompts as the policy does
    return judge


def check_training_options(training, grpo) -> None:
    """Refuse, in one line, options a round cannot honour together (before any work in `run`): the
    Pair-DPO options a GRPO round has no use for, and an unmerged LoRA model under --sharding fsdp."""
    if training.sharding == "fsdp" and training.lora_r and not training.lora_merge:
        raise UsageError("--sharding fsdp --no-lora-merge: the trained weights are gathered on the main process, which "
                         "writes them as model/ for every process to read back; keep --lora-merge")
    if grpo is None or grpo.recipe != "grpo":
        return
    if training.reference_model == "base":
        raise UsageError("--reference-model base applies to Pair-DPO; GRPO's KL is to the round's starting model (use round)")
    if training.replay:
        raise UsageError("--replay trains again on earlier rounds' pairs; GRPO trains on fresh samples, not pairs (leave --replay at 0)")


def round_reference(cfg, training) -> Backbone | None:
    """With --reference-model base, the model the DPO terms are measured against in every round: the
    run's starting model (None: the round's own starting weights)."""
    if training.reference_model == "round":
        return None
    reference = load_backbone(cfg.model or BASE_MODEL, cfg.dtype)
    settle(cfg, reference)  # it reads over-long prompts as the policy does
    return reference


def train_round(backbone: Backbone, data: HomologousData, round_dir: Path, cfg, state, out: Path | None = None,
                earlier: list[Path] = ()) -> Backbone:
    """Pair-DPO on the round's preferences (reference cached in `out/train`), with --replay also on
    those of the last rounds of `earlier` (the run's earlier round folders, oldest first); writes the
    trained model to `out/model` (default: the round folder), with LoRA also its adapter to
    `out/adapter`, and returns it. A finished round is loaded instead of trained again."""
    out = Path(out) if out is not None else round_dir
    cfg = settle(cfg, backbone)
    training, grpo = cfg.training, cfg.grpo if isinstance(cfg, RunConfig) else None  # `hermesflow train` has no GRPO
    check_training_options(training, grpo)
    replayed = list(earlier)[-training.replay:] if training.replay else []
    reference = round_reference(cfg, training)
    stage = {**config.results_settings(training), "seed": cfg.seed, "dtype": cfg.dtype, "model": backbone.fingerprint(),
             **({"reference_weights": reference.fingerprint()} if reference is not None else {}),
             **({"replayed": [file_digest(Path(d) / PREFS) for d in replayed]} if replayed else {}),
             "model_type": backbone.model_type, "prefs": file_digest(Path(round_dir) / PREFS), "data": file_digest(data.path),
             **(grpo_settings(grpo, cfg.curation) if grpo is not None and grpo.recipe == "grpo" else {})}
    if state.is_main_process:
        reused = claim(out / "train", "train", "a training", stage, tuple(f"../{o}" for o in TRAIN_OUTPUTS), cfg.overwrite)
        if reused and (out / "model" / "config.json").exists():
            say(f"reusing the trained model {out / 'model'}")
    state.wait_for_everyone()
    if (out / "model" / "config.json").exists():
        return load_backbone(out / "model", cfg.dtype)
    backbone = backbone.whole()  # a sharded model is frozen: training starts from its whole weights and shards its own
    if training.lora_r:
        targets = [t.strip() for t in training.lora_target_modules.split(",") if t.strip()] or None
        backbone.add_lora(training.lora_r, training.lora_alpha, targets, seed=cfg.seed)
        if (out / "adapter" / "adapter_config.json").exists():  # trained, not merged: no need to train again
            backbone.load_adapter(out / "adapter")
            backbone.merge_lora()
            return backbone
    examples = examples_from(list(read_prefs(round_dir).values()), data, training.loss_type, cfg.seed, training.pair_rows)
    for folder in replayed:
        examples += examples_from(list(read_prefs(folder).values()), data, training.loss_type, cfg.seed, training.pair_rows, replayed=True)
    if grpo is not None and grpo.recipe == "grpo":  # online GRPO on fresh samples: the curated pairs are not used
        trained = train_grpo(backbone, list(data.records), grpo, training, sampler_of(cfg.curation, backbone), cfg.seed, cfg.dtype, out / "train",
                             cfg.curation.choice_score)
    else:
        trained = train(backbone, examples, training, out / "train", cfg.seed, cfg.dtype, stage["model"], reference)
    if state.is_main_process:
        if training.lora_r:
            trained.save_adapter(out / "adapter")
        trained.merge_lora()
        if not training.lora_r or training.lora_merge:
            trained.save_pretrained(out / "model")
        shutil.rmtree(out / "train" / "state", ignore_errors=True)  # only now: a kill before this resumes
    elif trained is not None:
        trained.merge_lora()
    state.wait_for_everyone()
    if training.sharding == "fsdp":  # gathered on the main process only, which wrote it: every process reads it back
        return load_backbone(out / "model", cfg.dtype)
    return trained


def require_qa(data: HomologousData) -> HomologousData:
    """Curation judges images by the records' questions: every record needs some."""
    missing = [r.id for r in data.records if not r.qa]
    if missing:
        raise DataError([f"{data.path}: {len(missing)} records have no qa, which curation needs to judge images "
                         f"(first: {', '.join(missing[:5])}); {QUESTIONS_HINT}, or leave them out"])
    return data


def sampler_of(curation, backbone: Backbone) -> GenerationConfig:
    """The image sampler of the curation options (what GRPO samples with; guidance unset: the backbone's
    own); its seed is set per step."""
    guidance = backbone.default_guidance if curation.guidance is None else curation.guidance
    return GenerationConfig(guidance=guidance, temperature=curation.image_temperature, steps=curation.steps)


def eval_items(backbone: Backbone, cfg: RunConfig, seed: int) -> list[EvalItem]:
    """The user's held-out data (--eval-data), or the world's eval split at the backbone's resolution."""
    if cfg.eval.eval_data:
        data = read_world_data(cfg.eval.eval_data, cfg.reading)
        check_fit(backbone, data)
        return data_eval_items(data, cfg.eval.eval_n)
    return world_eval_items(cfg.eval.eval_n, seed, backbone.image_size, cfg.eval.eval_draw)


def evaluation_settings(n: int, data: Path | None, gen: GenerationConfig, encoder: Path | None, pooling: str, dtype: str,
                        judge: str, api: ApiOptions, questions: Path | None, draw: str | None, choice_score: str) -> dict:
    """What an evaluation's results depend on besides the model (`hermesflow run`'s and `hermesflow
    eval`'s alike): recorded in its folder. `draw`: the world eval split's draw (None on --eval-data)."""
    return {"n": n, "seed": gen.seed, "data": file_digest(data), "guidance": gen.guidance, "temperature": gen.temperature,
            "steps": gen.steps, "encoder": encoder, "pooling": pooling, "dtype": dtype, **judge_setting(judge, api, questions),
            "draw": draw, "choice_score": choice_score}


def eval_sampler(cfg: RunConfig, seed: int) -> GenerationConfig:
    """How a run's evaluations draw images: its evaluation guidance, with the curation's sampler, on the
    draw's own seeds (`world.build.draw_seed`)."""
    return GenerationConfig(guidance=cfg.eval.eval_guidance, temperature=cfg.curation.image_temperature,
                            steps=cfg.curation.steps, seed=seed if cfg.eval.eval_data else draw_seed(seed, cfg.eval.eval_draw))


def eval_settings(cfg: RunConfig, seed: int) -> dict:
    """`evaluation_settings` of a run's evaluation with `seed`."""
    return evaluation_settings(cfg.eval.eval_n, cfg.eval.eval_data, eval_sampler(cfg, seed), cfg.curation.encoder,
                               cfg.curation.pooling, cfg.dtype, cfg.eval.judge, cfg.api, cfg.reading.questions,
                               None if cfg.eval.eval_data else cfg.eval.eval_draw, cfg.curation.choice_score)


def placed(backbone: Backbone, cfg, state, trained: bool = True) -> Backbone:
    """A model as curation and evaluation use it: on the device, in eval mode, a `trained` one in the
    run's precision (trained over fp32 weights; sampled and scored in bf16; a loaded one is as loaded),
    sharded over the processes under --sharding fsdp (each keeps 1/N of the weights; `Backbone.inference`)."""
    backbone = backbone.to(state.device).eval()
    if trained and cfg.dtype == "bf16":
        backbone = backbone.bfloat16()
    return backbone.shard() if cfg.training.sharding == "fsdp" else backbone


def evaluate_into(backbone: Backbone, folder: Path, cfg: RunConfig, similarity, seed: int | None = None) -> Evaluation:
    """Evaluate into `folder` unless done; `seed` (default cfg.seed) picks the eval scenes and sampling."""
    seed = cfg.seed if seed is None else seed
    cfg = settle(cfg, backbone)
    return evaluation_stage(backbone, folder, lambda: eval_items(backbone, cfg, seed), eval_sampler(cfg, seed), similarity,
                            lambda: vlm_judge(cfg.eval.judge, cfg.api, folder), eval_settings(cfg, seed), cfg.overwrite)


def eval_stage(backbone: Backbone, settings: dict) -> dict:
    """What an evaluation folder records as having made it: the model and the evaluation's settings."""
    return {"model": backbone.fingerprint(), "model_type": backbone.model_type, **settings}


def evaluation_stage(backbone: Backbone, folder: Path, items, gen: GenerationConfig, similarity, vlm, settings: dict,
                     overwrite: bool, outputs: tuple[str, ...] = EVAL_OUTPUTS) -> Evaluation:
    """An evaluation as a resumable stage (`hermesflow run`'s and `hermesflow eval`'s): `folder` records
    the model and `settings`; a finished one with the same is reused, one with others refused unless
    `overwrite`. `items()` and `vlm()` give the eval items and the VLM judge (or None) when there is work."""
    path = folder / "metrics.json"
    stage = eval_stage(backbone, settings)
    if claim(folder, "eval", "an evaluation", stage, outputs, overwrite) and path.exists():
        say(f"reusing the evaluation {path}")
        return Evaluation.read(path)
    result, generated = judged_evaluation(backbone, items(), gen, similarity, vlm(), settings["choice_score"])
    result = replace(result, settings={**result.settings, "draw": settings.get("draw")})  # which draw of the eval split
    folder.mkdir(parents=True, exist_ok=True)
    save_sample_sheet(folder / "generated.png", generated)
    atomic_write_json(path, result.to_json())
    return result


def judged_evaluation(backbone: Backbone, items: list[EvalItem], gen: GenerationConfig, similarity,
                      vlm=None, choice_score: str = "sum") -> tuple[Evaluation, np.ndarray]:
    """`evaluate` with its judge chosen (the VLM if given; else the world's oracle when every item has
    a world scene; else the model itself) and the world's own numbers added (prompts held out of
    post-training scored apart, GenEval-style categories); returns the evaluation and the images."""
    judge = vlm if vlm is not None else WORLD if all(WORLD.knows(it) for it in items) else None
    result, generated = evaluate(backbone, items, gen, similarity, judge, choice_score)
    result = WORLD.metrics(items, generated, result)
    if vlm is not None:  # what the judge cost
        result = replace(result, extra={**result.extra, "judge_api": vars(vlm.client.usage)})
    return result, generated


def summary_row(name: str, result: Evaluation, manifest: dict | None, trained: int | None = None) -> dict:
    """A round's line of summary.json: its scores, and the curated pairs kept and the examples trained on
    (with --pair-rows branch a record's two pairs are separate examples)."""
    return {
        "round": name,
        "understanding": result.understanding_score.mean,
        "understanding_ci95": list(result.understanding_score.ci95),
        "generation": result.generation_score.mean,
        "generation_ci95": list(result.generation_score.ci95),
        # on the eval prompts held out of post-training (world only): where claims about generation are read
        "generation_unseen": result.generation_unseen.mean if result.generation_unseen else None,
        "understanding_unseen": result.unseen.understanding_score.mean if result.unseen and result.unseen.understanding_score else None,
        "gap": result.gap.mean,
        "geneval_overall": result.geneval.get("overall"),
        "geneval_unseen_overall": (result.unseen.geneval or {}).get("overall") if result.unseen else None,
        "caption_similarity": result.caption_similarity.mean if result.caption_similarity else None,
        "pairs_kept": manifest["counts"]["both_kept"] if manifest else None,
        "examples_trained": trained,
    }


def format_summary(rows: list[dict]) -> str:
    """The terminal's and summary.txt's table; `*_unseen`: on the eval prompts held out of post-training."""
    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    head = (f"{'round':<8}{'understanding':>22}{'und_unseen':>11}{'generation':>22}{'gen_unseen':>11}{'gap':>8}{'geneval':>9}"
            f"{'gev_unseen':>11}{'cap_sim':>9}{'trained':>8}")
    lines = [head]
    for r in rows:
        und = f"{r['understanding']:.3f} [{r['understanding_ci95'][0]:.3f},{r['understanding_ci95'][1]:.3f}]"
        gen = f"{r['generation']:.3f} [{r['generation_ci95'][0]:.3f},{r['generation_ci95'][1]:.3f}]"
        pairs = "-" if r.get("examples_trained") is None else str(r["examples_trained"])
        lines.append(f"{r['round']:<8}{und:>22}{number(r.get('understanding_unseen')):>11}{gen:>22}{number(r.get('generation_unseen')):>11}"
                     f"{r['gap']:>8.3f}{number(r['geneval_overall']):>9}{number(r.get('geneval_unseen_overall')):>11}"
                     f"{number(r['caption_similarity']):>9}{pairs:>8}")
    return "\n".join(lines)


def train_data(backbone: Backbone, cfg: RunConfig, out: Path, state) -> HomologousData:
    """The user's data (--data), or a slice of the world's train split drawn at the backbone's
    resolution without the prompts held out for generation (`world.holdout`), so generation can be
    measured on unseen prompts; checked to fit the backbone before any work."""
    if cfg.data:
        data = require_qa(read_world_data(cfg.data, cfg.reading))
    else:
        data_dir = out / "data"
        if state.is_main_process and not (data_dir / "data.jsonl").exists():
            write_world(data_dir, cfg.n_train, seed=cfg.seed + 1, split="train", image_size=max(32, backbone.image_size // 32 * 32),
                        prompts="seen")
        state.wait_for_everyone()
        data = read_scenes(read_homologous(data_dir))
    check_fit(backbone, data)
    check_curation_data(data, cfg.curation, WORLD)  # an oracle or perturbed pair source on data it cannot serve: refused before any work
    if not cfg.eval.eval_data:  # generation is measured on the world's held-out prompts: no training record may name one
        held = [f"{data.where(r)}: caption {r.caption!r}" for r in data.records if WORLD.holds_out(r.caption)]
        if held:
            raise DataError([f"{data.path}: {len(held)} records name prompts the world holds out of post-training to measure "
                             "generation on (world.holdout); write training data with `hermesflow world --prompts seen`, or "
                             "evaluate on your own held-out data (--eval-data)", *held[:20]])
    return data


class Timings:
    """Wall-clock seconds of each stage that did work (a reused stage keeps its earlier time; a resumed
    one records its last attempt), in `timings.json` for the report."""

    def __init__(self, path: Path, main: bool):
        self.path, self.main = path, main
        self.values = json.loads(path.read_text()) if path.exists() else {}

    @contextmanager
    def stage(self, key: str, done: Path):
        existed, start = done.exists(), time.perf_counter()
        yield
        if self.main and not existed:
            self.values[key] = round(time.perf_counter() - start, 1)
            atomic_write_json(self.path, self.values)


def provenance(cfg: RunConfig, out: Path) -> dict:
    """What made a run, for the report: versions, the source commit, and every input as an absolute path."""
    import platform

    import torch

    from hermesflow import __version__

    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10).stdout.strip()) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    resolved = lambda p: str(Path(p).resolve()) if p else None  # noqa: E731
    return {"hermesflow": __version__, "commit": commit, "uncommitted_changes": dirty, "python": platform.python_version(),
            "torch": torch.__version__, "model": resolved(cfg.model or BASE_MODEL),
            "data": resolved(cfg.data or out / "data"), "eval_data": resolved(cfg.eval.eval_data),
            "encoder": resolved(cfg.curation.encoder),
            "out": resolved(out)}


GUIDANCE_SETTINGS = ("guidance", "eval_guidance")


def settle(cfg, backbone: Backbone):
    """`cfg` with what its verb leaves to the backbone settled before anything records the settings:
    each guidance setting left unset takes the backbone's own (`default_guidance`); and the backbone
    is told how to treat prompts longer than its text slot (`long_text`)."""
    values = config.flat(cfg)
    if "long_text" in values:
        backbone.long_text = values["long_text"]
    unset = {name: backbone.default_guidance for name in GUIDANCE_SETTINGS if name in values and values[name] is None}
    return config.replace(cfg, **unset) if unset else cfg


BASE_EVAL_FILES = ("metrics.json", "generated.png", settings_file(".", "eval").name)  # the settings file last: it marks the copy whole


def check_base_eval(backbone: Backbone, cfg: RunConfig) -> None:
    """--base-eval DIR must hold a finished evaluation of this very model with the settings of the
    run's own base evaluation (items, draw, seed, judge, sampling); else one refusal naming each difference."""
    folder = Path(cfg.base_eval)
    if not all((folder / name).is_file() for name in BASE_EVAL_FILES):
        raise UsageError(f"--base-eval {folder}: not a finished `hermesflow eval` folder (needs {', '.join(BASE_EVAL_FILES)})")
    saved = json.loads(settings_file(folder, "eval").read_text(encoding="utf-8"))["settings"]
    wanted = eval_stage(backbone, eval_settings(cfg, cfg.seed))
    changed = differences(saved, wanted)
    if changed:
        raise UsageError(f"--base-eval {folder}: evaluated otherwise than this run's base evaluation would be (its value -> the run's):\n  "
                         + "\n  ".join(changed) + "\nrerun `hermesflow eval` with the run's settings, or leave --base-eval out")


def adopt_base_eval(source: Path, folder: Path) -> None:
    """Copy a checked --base-eval folder's evaluation into the run's base/eval (unless one is there), so
    the run folder stands alone and its evaluation stage reuses it."""
    if settings_file(folder, "eval").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    for name in BASE_EVAL_FILES:
        atomic_write_bytes(folder / name, (Path(source) / name).read_bytes())
    say(f"base model: its evaluation taken from --base-eval {source} (same model, items, draw, seed, judge and sampling)")


def claim_run(cfg: RunConfig) -> None:
    """`run_config.yaml` records the settings that made a run folder's results. A rerun whose settings
    differ (other than those that do not change results, such as more --rounds) is refused, naming the keys, unless
    --overwrite deletes the folder's contents; the file is rewritten only over results it produced."""
    claim_folder(cfg, "run_config.yaml", "a run")


def claim_folder(cfg, name: str, what: str) -> None:
    """`claim_run` for any verb whose config (with `out` and `overwrite`) is saved as `out/name`."""
    out, path = Path(cfg.out), Path(cfg.out) / name
    current = config.results_settings(config.complete(type(cfg), config.flat(cfg)))
    if path.exists():  # flat (written before the options were grouped) or grouped; completed as a --config file
        saved = config.flat(config.load(type(cfg), path))
        changed = differences({k: saved[k] for k in current}, current)
        if changed and not cfg.overwrite:
            raise refusal(what, out, changed)
        if changed:
            clear(out, tuple(p.name for p in out.iterdir()))
        else:
            say(f"resuming the {what.split()[-1]} in {out}: same settings as its {name}; finished stages are reused")
    config.save(cfg, path)


def run(cfg: RunConfig) -> list[dict]:
    """Evaluate the base model, then `cfg.rounds` rounds of curate -> reference -> train -> evaluate."""
    from hermesflow.accel import partial_state
    from hermesflow.scorers.similarity import SentenceSimilarity

    check_training_options(cfg.training, cfg.grpo)
    state = partial_state()
    out = Path(cfg.out)
    backbone = load_backbone(cfg.model or BASE_MODEL, cfg.dtype).to(state.device).eval()  # a bad --model writes nothing
    cfg = settle(cfg, backbone)
    data = train_data(backbone, cfg, out, state) if cfg.data else None  # the user's data: refused before anything is written
    if cfg.eval.eval_data:
        eval_items(backbone, cfg, cfg.seed)  # likewise the held-out data (read again when evaluating)
    if cfg.base_eval:
        check_base_eval(backbone, cfg)
    if state.is_main_process:
        claim_run(cfg)
    state.wait_for_everyone()
    data = data or train_data(backbone, cfg, out, state)  # the world's, written into the run folder
    similarity = SentenceSimilarity(cfg.curation.encoder, cfg.curation.pooling)

    timings = Timings(out / "timings.json", state.is_main_process)
    if state.is_main_process:
        atomic_write_json(out / "provenance.json", provenance(cfg, out))
    rows = []
    backbone = placed(backbone, cfg, state, trained=False)
    with backbone.inference():  # sharded, the other processes take part in the main process's forward passes
        if state.is_main_process:
            say("base model: evaluate")
            if cfg.base_eval:
                adopt_base_eval(cfg.base_eval, out / "base" / "eval")
            with timings.stage("base/eval", out / "base" / "eval" / "metrics.json"):
                base = evaluate_into(backbone, out / "base" / "eval", cfg, similarity)
            rows.append(summary_row("base", base, None))
            print(format_summary(rows), flush=True)
    done = []  # the folders of the rounds run so far
    for r in range(1, cfg.rounds + 1):
        round_dir = out / f"round-{r}"
        if state.is_main_process:
            say(f"round {r} of {cfg.rounds}: curate, train, evaluate")
        with timings.stage(f"round-{r}/curate", round_dir / MANIFEST):
            manifest = curate_round(backbone, similarity, data, round_dir, cfg, r - 1, done[-1] if done else None, state)
        with timings.stage(f"round-{r}/train", round_dir / "model" / "config.json"):
            backbone = placed(train_round(backbone, data, round_dir, cfg, state, earlier=done), cfg, state)
        with backbone.inference():
            if state.is_main_process:
                with timings.stage(f"round-{r}/eval", round_dir / "eval" / "metrics.json"):
                    result = evaluate_into(backbone, round_dir / "eval", cfg, similarity)
                trained = round_dir / "train" / "summary.json"
                rows.append(summary_row(str(r), result, manifest, json.loads(trained.read_text()).get("examples") if trained.exists() else None))
                print(format_summary(rows).splitlines()[-1], flush=True)  # each round's scores as soon as they exist
        state.wait_for_everyone()
        done.append(round_dir)
    if state.is_main_process:
        from hermesflow.report import build_report, verdict

        line = verdict(base, result, f"round {cfg.rounds}") if cfg.rounds else "no round was run"
        atomic_write_json(out / "summary.json", rows)
        atomic_write_text(out / "summary.txt", line + "\n\n" + format_summary(rows) + "\n")
        print(line)
        print(f"summary: {out / 'summary.txt'}")
        page = build_report(out, world=WORLD)
        print(f"report: {page}  (to view it from a server: python -m http.server -d {page.parent}, then open port 8000)")
    return rows
