"""The paper's Table 5 ablation on the shapes world (`hermesflow ablate`).

From one base model and ONE curated round-0 data set, each arm trains with the same step budget
and is evaluated on the same eval scenes with the same sampling seed, for several training seeds
(the seed changes batch order, mask draws and, for rounds 2-3, curation sampling):

    dpo_und       DPO on the caption pairs only        (Table 5 "DPO (Understanding)")
    dpo_gen       DPO on the image pairs only          (Table 5 "DPO (Generation)")
    pair_sum      Pair-DPO, sum of the two DPO losses  (Eq. 12; the official code)
    pair_product  Pair-DPO, −log σ(Δ_und · Δ_gen)      (Eq. 6; starts at a zero-gradient saddle)
    sum_r2, sum_r3  pair_sum continued by self-play rounds 2 and 3 (Eq. 10), per seed

Every stage is skipped when its output exists, so a killed ablation resumes where it was.
Results: `ablation.json`, and `ablation.md` with the Table 5 and Table 4 analogs (mean ± std).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from hermesflow.io import atomic_write_json, atomic_write_text
from hermesflow.backbones import BASE_MODEL, load_backbone
from hermesflow.iterate import claim_folder, curate_round, evaluate_into, train_data, train_round
from hermesflow.settings import AblateConfig, RunConfig
from hermesflow.world.prompts import CATEGORIES

PRESETS = {
    "quick": dict(seeds=3, n_train=200, eval_n=300),
    "full": dict(seeds=5, n_train=400, eval_n=1000),
}
ONE_ROUND_ARMS = {"dpo_und": "und", "dpo_gen": "gen", "pair_sum": "sum", "pair_product": "product"}


def _run_config(cfg: AblateConfig, preset: dict, **changes) -> RunConfig:
    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(RunConfig) if hasattr(cfg, f.name)}
    return dataclasses.replace(RunConfig(**shared), n_train=preset["n_train"], eval_n=preset["eval_n"], **changes)


def ablate(cfg: AblateConfig) -> dict:
    from hermesflow.accel import partial_state

    from hermesflow.scorers.similarity import SentenceSimilarity

    preset = {k: getattr(cfg, k) or v for k, v in PRESETS[cfg.preset].items()}
    state = partial_state()
    out = Path(cfg.out)
    if state.is_main_process:
        claim_folder(cfg, "ablate_config.yaml", "an ablation")  # never rewritten over results it did not make
    state.wait_for_everyone()
    base_cfg = _run_config(cfg, preset)
    base_dir = Path(cfg.model) if cfg.model else BASE_MODEL
    base = load_backbone(base_dir, cfg.dtype).eval()
    data = train_data(base, base_cfg, out, state)
    similarity = SentenceSimilarity(cfg.encoder, cfg.pooling)

    results = {"base": [evaluate_into(base, out / "base" / "eval", base_cfg, similarity)]}
    round0 = out / "round-0"
    curate_round(base, similarity, data, round0, base_cfg, 0, None, state)
    for seed in range(preset["seeds"]):
        for arm, loss_type in ONE_ROUND_ARMS.items():
            arm_cfg = _run_config(cfg, preset, loss_type=loss_type, seed=seed)
            folder = out / arm / f"seed-{seed}"
            model = train_round(load_backbone(base_dir, cfg.dtype), data, round0, arm_cfg, state, out=folder)
            results.setdefault(arm, []).append(evaluate_into(model.eval(), folder / "eval", arm_cfg, similarity, cfg.seed))
        # self-play: pair_sum's model curates rounds 2 and 3 (Eq. 10 against the previous pairs)
        sum_cfg = _run_config(cfg, preset, loss_type="sum", seed=seed)
        model, previous = load_backbone(out / "pair_sum" / f"seed-{seed}" / "model", cfg.dtype).eval(), round0
        for r in (2, 3):
            folder = out / f"sum_r{r}" / f"seed-{seed}"
            curate_round(model, similarity, data, folder, sum_cfg, r - 1, previous, state)
            model = train_round(model, data, folder, sum_cfg, state).eval()
            results.setdefault(f"sum_r{r}", []).append(evaluate_into(model, folder / "eval", sum_cfg, similarity, cfg.seed))
            previous = folder
    summary = {arm: summarise(runs) for arm, runs in results.items()}
    atomic_write_json(out / "ablation.json", summary)
    atomic_write_text(out / "ablation.md", format_tables(summary, cfg, preset))
    print(format_tables(summary, cfg, preset))
    from hermesflow.report import build_ablation_report

    print(f"report: {build_ablation_report(out)}")
    return summary


def summarise(runs: list[dict]) -> dict:
    """Mean and standard deviation over seeds of every reported score."""
    def stats(values: list[float]) -> dict:
        return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}

    keys = {
        "understanding": lambda m: m["understanding_score"]["mean"],
        "generation": lambda m: m["generation_score"]["mean"],
        "gap": lambda m: m["gap"]["mean"],
        "caption_similarity": lambda m: m["caption_similarity"]["mean"],
        **{f"geneval/{c}": (lambda m, c=c: m["geneval"][c]) for c in CATEGORIES + ("overall",)},
    }
    return {"seeds": len(runs), **{k: stats([f(m) for m in runs]) for k, f in keys.items()}}


def format_tables(summary: dict, cfg: AblateConfig, preset: dict) -> str:
    def cell(s: dict) -> str:
        return f"{s['mean']:.3f} ± {s['std']:.3f}"

    head5 = ["arm", "understanding", "caption sim.", "generation"] + [c.replace("_", " ") for c in CATEGORIES] + ["GenEval overall", "gap"]
    lines = [f"Table 5 analog ({cfg.preset}: {preset['seeds']} seeds, {preset['n_train']} curated records, "
             f"{cfg.train_steps} steps per round, {preset['eval_n']} eval scenes; mean ± std over seeds)", "",
             "| " + " | ".join(head5) + " |", "|" + "---|" * len(head5)]
    for arm, s in summary.items():
        row = [arm, cell(s["understanding"]), cell(s["caption_similarity"]), cell(s["generation"])]
        row += [cell(s[f"geneval/{c}"]) for c in CATEGORIES] + [cell(s["geneval/overall"]), cell(s["gap"])]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Table 4 analog", "", "| arm | understanding | generation | gap |", "|---|---|---|---|"]
    for arm, s in summary.items():
        lines.append(f"| {arm} | {cell(s['understanding'])} | {cell(s['generation'])} | {cell(s['gap'])} |")
    return "\n".join(lines) + "\n"
