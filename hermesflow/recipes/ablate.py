"""A fair comparison of post-training recipes on the shapes world (`hermesflow ablate`).

The arms come from a YAML file (`--arms`): a mapping of arm name to the settings it changes from
the ablation's own (any field of the training, curation or GRPO options) and, optionally, `rounds: N`
to continue it by N − 1 self-play rounds (Eq. 10). Without `--arms`, the paper's Table 5 arms:

    dpo_und       DPO on the caption pairs only        (Table 5 "DPO (Understanding)")
    dpo_gen       DPO on the image pairs only          (Table 5 "DPO (Generation)")
    pair_sum      Pair-DPO, sum of the two DPO losses  (Eq. 12; the official code), with rounds 2 and 3
    pair_product  Pair-DPO, −log σ(Δ_und · Δ_gen)      (Eq. 6; starts at a zero-gradient saddle)

What every arm shares, so that only its settings differ: the base model; ONE curated round-0 data
set (an arm that changes a curation setting curates its own round 0 from the same records with the
same seed, and the tables say so); the step budget; the eval items and the sampling seed (arms are
evaluated with the ablation's own sampling settings). Each arm is trained from the base for several
seeds (batch order and mask draws; for later rounds also curation sampling). Settings that would
make arms unequal (`train_steps`, `dtype`, the caption encoder) are refused in an arm.

Results: `ablation.json` and `ablation.md`, per arm (each later round a row of its own, `<arm>_rN`):
mean ± std over seeds of understanding, generation (all prompts and prompts unseen in
post-training), gap, caption similarity and GenEval categories; the paired 95% interval of the
difference to the base, pooled over seeds (`stats.pooled_paired_difference`); the self-judge
agreement of the round's curation; and training seconds per step (from `timings.json`). Every stage
is skipped when its output exists, so a killed ablation resumes where it was.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from hermesflow import config
from hermesflow.backbones import BASE_MODEL, load_backbone
from hermesflow.curate import MANIFEST
from hermesflow.errors import UsageError
from hermesflow.io import atomic_write_json, atomic_write_text
from hermesflow.judges import self_judge_agreement
from hermesflow.options import CurationOptions, GRPOOptions, TrainingOptions
from hermesflow.prefs import read_prefs
from hermesflow.recipes.run import (
    Timings,
    check_training_options,
    claim_folder,
    curate_round,
    evaluate_into,
    placed,
    settle,
    train_data,
    train_round,
)
from hermesflow.report import ablation_tables
from hermesflow.results import Evaluation, Interval
from hermesflow.settings import AblateConfig, RunConfig
from hermesflow.stats import pooled_paired_difference
from hermesflow.world.holdout import ALWAYS_SEEN
from hermesflow.world.judge import WORLD
from hermesflow.world.prompts import CATEGORIES

# Settings an arm may not change, with the reason: they are what every arm must share.
SHARED = {
    "train_steps": "the step budget is shared by every arm",
    "dtype": "precision also changes sampling and evaluation; set it for the whole ablation",
    "encoder": "the caption encoder also scores evaluation; set it for the whole ablation",
    "pooling": "the caption encoder also scores evaluation; set it for the whole ablation",
}
# An arm may set any setting of the training, curation and GRPO options, but not where the data, the
# model or the evaluation come from.
ARM_SETTINGS = tuple(f.name for c in (CurationOptions, TrainingOptions, GRPOOptions) for f in dataclasses.fields(c))
CURATION_SETTINGS = tuple(f.name for f in dataclasses.fields(CurationOptions))
DIFFERENCES = ("understanding", "understanding_unseen", "understanding_seen", "generation", "generation_unseen", "gap")


@dataclass(frozen=True)
class Arm:
    """One arm: the settings it changes from the ablation's, and its number of self-play rounds."""

    name: str
    settings: dict = field(default_factory=dict)
    rounds: int = 1

    @property
    def curates(self) -> bool:
        """Whether the arm changes how round 0 is curated (then it curates its own round 0)."""
        return any(k in CURATION_SETTINGS for k in self.settings)

    def row(self, r: int) -> str:
        return self.name if r == 1 else f"{self.name}_r{r}"


BUILTIN_ARMS = (
    Arm("dpo_und", {"loss_type": "und"}),
    Arm("dpo_gen", {"loss_type": "gen"}),
    Arm("pair_sum", {"loss_type": "sum"}, rounds=3),
    Arm("pair_product", {"loss_type": "product"}),
)


def load_arms(path: Path) -> list[Arm]:
    """The arms of a YAML file, each setting checked as `--config` files are (type, range, choices);
    errors name the file, the arm and the key."""
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"arms file {path}: cannot be read ({e})") from None
    if not isinstance(loaded, dict) or not loaded:
        raise UsageError(f"arms file {path}: expected a mapping of arm name: {{setting: value}}, e.g. 'paper_sum: {{loss_type: sum}}'")
    arms = []
    for name, settings in loaded.items():
        where = f"arms file {path}, arm {name!r}"
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise UsageError(f"{where}: an arm name is a folder name (letters, digits, _ . -)")
        if name == "base":
            raise UsageError(f"{where}: 'base' is the starting model's row; name the arm otherwise")
        settings = {} if settings is None else settings
        if not isinstance(settings, dict):
            raise UsageError(f"{where}: expected a mapping of setting: value, got {settings!r}")
        settings = dict(settings)
        rounds = settings.pop("rounds", 1)
        if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
            raise UsageError(f"{where}: rounds must be a whole number of at least 1, got {rounds!r}")
        for key in settings:
            if key in SHARED:
                raise UsageError(f"{where}: {key} cannot differ between arms ({SHARED[key]})")
            if key not in ARM_SETTINGS:
                close = difflib.get_close_matches(str(key), ARM_SETTINGS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; an arm may set rounds or any of {sorted(ARM_SETTINGS)}"
                raise UsageError(f"{where}: unknown setting {key!r}{hint}")
        values = {k: config._coerce(RunConfig, k, v, where) for k, v in settings.items()}
        try:  # ranges, choices and combinations, checked exactly as for a run's flags and config files
            run = config.complete(RunConfig, {"out": Path("."), **values})
            check_training_options(run.training, run.grpo)
        except UsageError as e:
            raise UsageError(f"{where}: {e}") from None
        arms.append(Arm(name, values, rounds))
    rows = [arm.row(r) for arm in arms for r in range(1, arm.rounds + 1)]
    clash = sorted({r for r in rows if rows.count(r) > 1})
    if clash:
        raise UsageError(f"arms file {path}: the rows {clash} would be written twice (a later round of one arm is named <arm>_rN)")
    return arms


def _run_config(cfg: AblateConfig, preset: dict, **changes) -> RunConfig:
    """The run settings of an arm: the ablation's, with the arm's changes."""
    names = config.leaves(RunConfig)
    shared = {k: v for k, v in config.flat(cfg).items() if k in names and k != "preset"}
    return config.build(RunConfig, **{**shared, "n_train": preset["n_train"], "eval_n": preset["eval_n"], **changes})


def ablate(cfg: AblateConfig) -> dict:
    from hermesflow.accel import partial_state
    from hermesflow.scorers.similarity import SentenceSimilarity

    arms = load_arms(cfg.arms) if cfg.arms else list(BUILTIN_ARMS)  # a bad file is refused before any work
    control = control_of(cfg.control, arms)
    cfg = config.complete(AblateConfig, config.flat(cfg))  # the preset's values in place of zeros
    preset = {"seeds": cfg.seeds, "n_train": cfg.n_train, "eval_n": cfg.eval_n}
    state = partial_state()
    out = Path(cfg.out)
    base_dir = Path(cfg.model) if cfg.model else BASE_MODEL
    base = load_backbone(base_dir, cfg.dtype).eval()  # a bad --model writes nothing
    cfg = settle(cfg, base)
    if state.is_main_process:
        claim_folder(cfg, "ablate_config.yaml", "an ablation")  # never rewritten over results it did not make
        if cfg.arms:
            atomic_write_text(out / "arms.yaml", Path(cfg.arms).read_text(encoding="utf-8"))  # what was compared, beside the results
    state.wait_for_everyone()
    base_cfg = _run_config(cfg, preset)
    data = train_data(base, base_cfg, out, state)
    similarity = SentenceSimilarity(cfg.curation.encoder, cfg.curation.pooling)
    timings = Timings(out / "timings.json", state.is_main_process)

    def evaluated(model, folder: Path) -> Evaluation:  # the same items, sampling settings, seed and precision for every arm
        with model.inference():
            return evaluate_into(model, folder / "eval", base_cfg, similarity, cfg.seed)

    base = placed(base, base_cfg, state)  # in bf16 runs the base too is sampled and scored in bf16, as every arm
    runs: dict[str, list[Evaluation]] = {"base": [evaluated(base, out / "base")]}
    curated: dict[str, list[Path]] = {}  # the round folders each row trained on
    round0 = out / "round-0"
    curate_round(base, similarity, data, round0, base_cfg, 0, None, state)
    for arm in arms:
        arm_round0 = round0
        if arm.curates:  # the same records and seed, curated with the arm's settings
            arm_round0 = out / arm.name / "round-0"
            with timings.stage(f"{arm.name}/round-0/curate", arm_round0 / MANIFEST):
                curate_round(base, similarity, data, arm_round0, _run_config(cfg, preset, **arm.settings), 0, None, state)
        for seed in range(preset["seeds"]):
            arm_cfg = _run_config(cfg, preset, **arm.settings, seed=seed)
            folder = out / arm.name / f"seed-{seed}"
            with timings.stage(f"{arm.name}/seed-{seed}/train", folder / "model" / "config.json"):
                model = placed(train_round(load_backbone(base_dir, cfg.dtype), data, arm_round0, arm_cfg, state, out=folder), arm_cfg, state)
            runs.setdefault(arm.name, []).append(evaluated(model, folder))
            curated.setdefault(arm.name, []).append(arm_round0)
            done = [arm_round0]  # the arm's round folders so far, for Eq. 10 and --replay
            for r in range(2, arm.rounds + 1):  # self-play: the arm's model curates against its previous pairs (Eq. 10)
                folder = out / arm.row(r) / f"seed-{seed}"
                with timings.stage(f"{arm.row(r)}/seed-{seed}/curate", folder / MANIFEST):
                    curate_round(model, similarity, data, folder, arm_cfg, r - 1, done[-1], state)
                with timings.stage(f"{arm.row(r)}/seed-{seed}/train", folder / "model" / "config.json"):
                    model = placed(train_round(model, data, folder, arm_cfg, state, earlier=done), arm_cfg, state)
                runs.setdefault(arm.row(r), []).append(evaluated(model, folder))
                curated.setdefault(arm.row(r), []).append(folder)
                done.append(folder)
    train_steps = cfg.training.train_steps
    summary = {}
    for name, evaluations in runs.items():
        arm = next((a for a in arms if name in (a.row(r) for r in range(1, a.rounds + 1))), None)
        seconds = [timings.values.get(f"{name}/seed-{s}/train") for s in range(len(evaluations))]
        seconds = [t for t in seconds if t is not None]
        summary[name] = {
            **summarise(evaluations, runs["base"][0] if name != "base" else None),
            "settings": {} if arm is None else {**arm.settings, **({"rounds": arm.rounds} if arm.rounds > 1 else {})},
            "curation": curation_of(name, arm),
            "self_judge": self_judge(sorted(set(curated.get(name, [])))) if name != "base" else None,
            "train_seconds_per_step": float(np.mean(seconds)) / train_steps if seconds else None,
        }
        if control is not None and name not in ("base", control):
            summary[name]["vs_control"] = against(runs[control], evaluations, control)
    if state.is_main_process:
        atomic_write_json(out / "ablation.json", summary)
        atomic_write_text(out / "ablation.md", format_tables(summary, cfg, preset))
        print(format_tables(summary, cfg, preset))
        from hermesflow.report import build_ablation_report

        print(f"report: {build_ablation_report(out, world=WORLD)}")
    state.wait_for_everyone()
    return summary


def curation_of(name: str, arm: Arm | None) -> str:
    """Which curated data a row trained on, for the tables."""
    if arm is None:
        return "-"
    if name != arm.name:
        return f"self-play round {name.rsplit('_r', 1)[1]} (own, per seed)"
    if arm.curates:
        changed = ", ".join(k for k in arm.settings if k in CURATION_SETTINGS)
        return f"own round 0 ({changed})"
    return "shared round 0"


def self_judge(rounds: list[Path]) -> dict | None:
    """The self-judge agreement (`judges.self_judge_agreement`) of the curation(s) a row trained on,
    their kept image pairs pooled over seeds."""
    judged = self_judge_agreement(p.gen for folder in rounds for p in read_prefs(folder).values() if p.has("gen"))
    return judged if judged["pairs"] else None


def control_of(name: str | None, arms: list[Arm]) -> str | None:
    """The arm the others are compared with: `name` (refused unless it is an arm), else the one arm that
    changes no setting (the default recipe), else none."""
    names = [arm.name for arm in arms]
    if name is not None:
        if name not in names:
            raise UsageError(f"--control {name!r} is not one of the arms {names}")
        return name
    plain = [arm.name for arm in arms if not arm.settings and arm.rounds == 1]
    return plain[0] if len(plain) == 1 else None


def against(control: list[Evaluation], arm: list[Evaluation], name: str) -> dict:
    """The arm minus the control, seed by seed on the same items, for each of DIFFERENCES."""
    result = {"control": name}
    for key in DIFFERENCES:
        try:
            result[key] = pooled_paired_difference([e.per_example for e in control], [e.per_example for e in arm], key)
        except UsageError as e:  # e.g. other seed counts, or no unseen items: said in the table
            result[key] = {"error": str(e)}
    return result


def summarise(runs: list[Evaluation], base: Evaluation | None = None) -> dict:
    """Mean and standard deviation over seeds of every reported score, and (given the base's
    evaluation) the paired difference to it pooled over seeds."""
    def stats(values: list) -> dict:
        if any(v is None for v in values):  # not measured (no unseen prompts, no oracle): null, not a number
            return {"mean": None, "std": None}
        return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}

    def mean(score: Interval | None) -> float | None:
        return None if score is None else score.mean

    keys = {
        "understanding": lambda e: e.understanding_score.mean,
        "generation": lambda e: e.generation_score.mean,
        "generation_unseen": lambda e: mean(e.generation_unseen),
        "gap": lambda e: e.gap.mean,
        "caption_similarity": lambda e: mean(e.caption_similarity),
        **{f"geneval/{c}": (lambda e, c=c: e.geneval.get(c)) for c in CATEGORIES + ("overall",)},
        **{f"geneval_unseen/{c}": (lambda e, c=c: ((e.unseen and e.unseen.geneval) or {}).get(c))
           for c in CATEGORIES + ("overall",) if c not in ALWAYS_SEEN},
    }
    result = {"seeds": len(runs), **{k: stats([f(e) for e in runs]) for k, f in keys.items()}}
    if base is not None:
        result["change"] = {}
        for key in DIFFERENCES:
            try:
                result["change"][key] = pooled_paired_difference(base.per_example, [e.per_example for e in runs], key)
            except UsageError as e:  # e.g. not world prompts: no unseen items; said in the table
                result["change"][key] = {"error": str(e)}
    return result


def format_tables(summary: dict, cfg: AblateConfig, preset: dict) -> str:
    """ablation.md: the report's two tables (`report.ablation_tables`) in Markdown, with their title and notes."""
    def markdown(head: list[str], rows: list[list[str]]) -> list[str]:
        return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(row) + " |" for row in rows)]

    table5, table4, versus = ablation_tables(summary)
    title = (f"Table 5 analog ({cfg.preset}: {preset['seeds']} seeds, {preset['n_train']} curated records, "
             f"{cfg.training.train_steps} steps per round, {preset['eval_n']} eval scenes on the {cfg.eval_draw} draw; "
             "mean ± std over seeds)")
    lines = [title, "", *markdown(*table5), "", "Table 4 analog", "", *markdown(*table4)]
    if versus is not None:
        lines += ["", "Each arm against the control (the same items and seeds, paired)", "", *markdown(*versus)]
    notes = (
        ("Scores are per question (shares of answers right). Δ: the arm minus the base on the same eval items and sampling "
         "seed, with a 95% interval over both the eval items (clustered by item) and the training seeds (their spread, "
         "t quantile; stats.two_level_interval); * marks an interval that excludes zero."),
        ("Generation unseen: eval prompts held out of post-training data (world.holdout); "
         f"{' and '.join(ALWAYS_SEEN)} prompts are always seen, so claims about generation use the unseen columns."),
        ("Self-judge agreement: of the kept image pairs the exact oracle scores differently (count), the share where it "
         "prefers the chosen image; ties are left out (pairs pooled over seeds for self-play rounds). Train s/step: wall "
         "time of the training stage (with its model load and reference pass) per optimizer step, mean over seeds (timings.json)."),
    )
    lines += ["", *notes]
    return "\n".join(lines) + "\n"
