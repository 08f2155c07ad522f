"""Self-play rounds (paper §3.3) and the default pipeline (`hermesflow run` / `iterate`).

A recipe: it loads a backbone by its folder's model_type and wires the components (curation,
training, evaluation) round by round, never touching the model's internals. Layout of a run
folder, each stage skipped when its output exists, so a killed run resumes in any round at the
stage it was in (curation and training also resume inside themselves):

    base/eval/metrics.json                  the starting model's scores
    round-1/prefs.jsonl, manifest.json      curated with the round's starting model
    round-1/train/                          reference-<key>.json (cached reference log-probs, keyed by
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
from dataclasses import fields
from pathlib import Path

from hermesflow import config
from hermesflow.backbones import BASE_MODEL, Backbone, GenerationConfig, load_backbone
from hermesflow.curate import MANIFEST, CurationSettings, curate, merge
from hermesflow.data import HomologousData, check_fit, read_data, read_homologous
from hermesflow.errors import DataError
from hermesflow.evaluate import EvalItem, data_eval_items, evaluate, save_sample_sheet, world_eval_items
from hermesflow.io import atomic_write_json, atomic_write_text
from hermesflow.prefs import read_prefs
from hermesflow.settings import CurationOptions, RunConfig
from hermesflow.train import examples_from, train
from hermesflow.world.build import write_world


def curation_settings(cfg, round_index: int) -> CurationSettings:
    """The curation options of a run or curate config, for one round."""
    options = {f.name: getattr(cfg, f.name) for f in fields(CurationOptions)}
    return CurationSettings(**options, round=round_index, seed=cfg.seed)


def curate_round(backbone: Backbone, similarity, data: HomologousData, round_dir: Path, cfg, round_index: int,
                 previous_dir: Path | None, state) -> dict:
    """Curate (sharded over processes) and merge one round; returns its manifest."""
    if (round_dir / MANIFEST).exists():
        return json.loads((round_dir / MANIFEST).read_text())
    previous = read_prefs(previous_dir) if previous_dir is not None else {}
    settings = curation_settings(cfg, round_index)
    curate(backbone, similarity, data, round_dir, settings, previous, state.process_index, state.num_processes)
    state.wait_for_everyone()
    if state.is_main_process:
        merge(round_dir, data, state.num_processes, {
            "round": round_index,
            "model_type": backbone.model_type,
            "model_sha1": backbone.fingerprint(),
            "data": str(data.path.resolve()),
            "previous": str(previous_dir) if previous_dir else None,
            "settings": config.to_dict(settings),
        })
    state.wait_for_everyone()
    return json.loads((round_dir / MANIFEST).read_text())


def train_round(backbone: Backbone, data: HomologousData, round_dir: Path, cfg, state, out: Path | None = None) -> Backbone:
    """Pair-DPO on the round's preferences (reference cached in `out/train`); writes the trained
    model to `out/model` (default: the round folder), with LoRA also its adapter to `out/adapter`,
    and returns it. A finished round is loaded instead of trained again."""
    out = Path(out) if out is not None else round_dir
    if (out / "model" / "config.json").exists():
        return load_backbone(out / "model", cfg.dtype)
    if cfg.lora_r:
        targets = [t.strip() for t in cfg.lora_target_modules.split(",") if t.strip()] or None
        backbone.add_lora(cfg.lora_r, cfg.lora_alpha, targets)
        if (out / "adapter" / "adapter_config.json").exists():  # trained, not merged: no need to train again
            backbone.load_adapter(out / "adapter")
            backbone.merge_lora()
            return backbone
    examples = examples_from(list(read_prefs(round_dir).values()), data, cfg.loss_type, cfg.seed)
    trained = train(backbone, examples, cfg, out / "train")
    if state.is_main_process:
        if cfg.lora_r:
            trained.save_adapter(out / "adapter")
        trained.merge_lora()
        if not cfg.lora_r or cfg.lora_merge:
            trained.save_pretrained(out / "model")
        shutil.rmtree(out / "train" / "state", ignore_errors=True)  # only now: a kill before this resumes
    else:
        trained.merge_lora()
    state.wait_for_everyone()
    return trained


def require_qa(data: HomologousData) -> HomologousData:
    """Curation judges images by the records' questions: every record needs some."""
    missing = [r.id for r in data.records if not r.qa]
    if missing:
        raise DataError([f"{data.path}: {len(missing)} records have no qa, which curation needs to judge images "
                         f"(first: {', '.join(missing[:5])}); add questions or leave them out"])
    return data


def eval_items(backbone: Backbone, cfg: RunConfig, seed: int) -> list[EvalItem]:
    """The user's held-out data (--eval-data), or the world's eval split at the backbone's resolution."""
    if cfg.eval_data:
        data = read_data(cfg.eval_data, cfg)
        check_fit(backbone, data)
        return data_eval_items(data, cfg.eval_n)
    return world_eval_items(cfg.eval_n, seed, backbone.image_size)


def evaluate_into(backbone: Backbone, folder: Path, cfg: RunConfig, similarity, seed: int | None = None) -> dict:
    """Evaluate into `folder` unless done; `seed` (default cfg.seed) picks the eval scenes and sampling."""
    seed = cfg.seed if seed is None else seed
    path = folder / "metrics.json"
    if path.exists():
        return json.loads(path.read_text())
    gen = GenerationConfig(guidance=cfg.eval_guidance, temperature=cfg.image_temperature, steps=cfg.steps, seed=seed)
    metrics, generated = evaluate(backbone, eval_items(backbone, cfg, seed), gen, similarity)
    folder.mkdir(parents=True, exist_ok=True)
    save_sample_sheet(folder / "generated.png", generated)
    atomic_write_json(path, metrics)
    return metrics


def summary_row(name: str, metrics: dict, manifest: dict | None) -> dict:
    return {
        "round": name,
        "understanding": metrics["understanding_score"]["mean"],
        "understanding_ci95": metrics["understanding_score"]["ci95"],
        "generation": metrics["generation_score"]["mean"],
        "generation_ci95": metrics["generation_score"]["ci95"],
        "gap": metrics["gap"]["mean"],
        "geneval_overall": metrics["geneval"].get("overall"),
        "caption_similarity": metrics.get("caption_similarity", {}).get("mean"),
        "pairs_kept": manifest["counts"]["both_kept"] if manifest else None,
    }


def format_summary(rows: list[dict]) -> str:
    head = f"{'round':<8}{'understanding':>22}{'generation':>22}{'gap':>8}{'geneval':>9}{'cap_sim':>9}{'pairs':>7}"
    lines = [head]
    for r in rows:
        und = f"{r['understanding']:.3f} [{r['understanding_ci95'][0]:.3f},{r['understanding_ci95'][1]:.3f}]"
        gen = f"{r['generation']:.3f} [{r['generation_ci95'][0]:.3f},{r['generation_ci95'][1]:.3f}]"
        pairs = "-" if r["pairs_kept"] is None else str(r["pairs_kept"])
        geneval = "-" if r["geneval_overall"] is None else f"{r['geneval_overall']:.3f}"
        lines.append(f"{r['round']:<8}{und:>22}{gen:>22}{r['gap']:>8.3f}{geneval:>9}{r['caption_similarity']:>9.3f}{pairs:>7}")
    return "\n".join(lines)


def train_data(backbone: Backbone, cfg: RunConfig, out: Path, state) -> HomologousData:
    """The user's data (--data), or a slice of the world's train split drawn at the backbone's
    resolution; checked to fit the backbone before any work."""
    if cfg.data:
        data = require_qa(read_data(cfg.data, cfg))
    else:
        data_dir = out / "data"
        if state.is_main_process and not (data_dir / "data.jsonl").exists():
            write_world(data_dir, cfg.n_train, seed=cfg.seed + 1, split="train", image_size=max(32, backbone.image_size // 32 * 32))
        state.wait_for_everyone()
        data = read_homologous(data_dir)
    check_fit(backbone, data)
    return data


def run(cfg: RunConfig) -> list[dict]:
    """Evaluate the base model, then `cfg.rounds` rounds of curate -> reference -> train -> evaluate."""
    from hermesflow.accel import partial_state

    from hermesflow.scorers.similarity import SentenceSimilarity

    state = partial_state()
    out = Path(cfg.out)
    backbone = load_backbone(cfg.model or BASE_MODEL, cfg.dtype).to(state.device).eval()
    data = train_data(backbone, cfg, out, state)
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        config.save(cfg, out / "run_config.yaml")
    similarity = SentenceSimilarity(cfg.encoder, cfg.pooling)

    rows = []
    if state.is_main_process:
        base = evaluate_into(backbone, out / "base" / "eval", cfg, similarity)
        rows.append(summary_row("base", base, None))
    previous = None
    for r in range(1, cfg.rounds + 1):
        round_dir = out / f"round-{r}"
        manifest = curate_round(backbone, similarity, data, round_dir, cfg, r - 1, previous, state)
        backbone = train_round(backbone, data, round_dir, cfg, state).to(state.device).eval()
        if cfg.dtype == "bf16":
            backbone = backbone.bfloat16()  # trained over fp32 weights; sampled and scored in bf16
        if state.is_main_process:
            rows.append(summary_row(str(r), evaluate_into(backbone, round_dir / "eval", cfg, similarity), manifest))
        state.wait_for_everyone()
        previous = round_dir
    if state.is_main_process:
        atomic_write_json(out / "summary.json", rows)
        atomic_write_text(out / "summary.txt", format_summary(rows) + "\n")
        print(format_summary(rows))
        from hermesflow.report import build_report

        print(f"report: {build_report(out)}")
    return rows
