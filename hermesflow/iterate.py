"""Self-play rounds (paper §3.3) and the default pipeline (`hermesflow run` / `iterate`).

Layout of a run folder, each stage skipped when its output exists, so a killed run resumes in any
round at the stage it was in (curation and training also resume inside themselves):

    base/eval/metrics.json                  the starting model's scores
    round-1/prefs.jsonl, manifest.json      curated with the round's starting model
    round-1/reference-<weights>-<estimator>.json   reference log-probs (+ mask seeds), keyed by model and estimator
    round-1/train/                          metrics.jsonl and accelerate state while training
    round-1/model/                          the trained model, the next round's start
    round-1/eval/metrics.json
    summary.json, summary.txt
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import fields
from pathlib import Path

from hermesflow import config
from hermesflow.curate import MANIFEST, CurationSettings, curate, merge, read_prefs
from hermesflow.data import HomologousData, read_homologous
from hermesflow.errors import DataError
from hermesflow.evaluate import evaluate, save_sample_sheet, world_eval_items
from hermesflow.io import atomic_write_json, atomic_write_text
from hermesflow.model import UnifiedModel
from hermesflow.settings import CurationOptions, EvalConfig, RunConfig
from hermesflow.train import examples_from_rows, precompute_reference, train
from hermesflow.world.build import write_world

BASE_MODEL = Path(__file__).parent / "assets" / "base"


def curation_settings(cfg, round_index: int) -> CurationSettings:
    """The curation options of a run or curate config, for one round."""
    options = {f.name: getattr(cfg, f.name) for f in fields(CurationOptions)}
    return CurationSettings(**options, round=round_index, seed=cfg.seed)


def curate_round(model, similarity, data: HomologousData, round_dir: Path, cfg, round_index: int,
                 previous_dir: Path | None, state) -> dict:
    """Curate (sharded over processes) and merge one round; returns its manifest."""
    if (round_dir / MANIFEST).exists():
        return json.loads((round_dir / MANIFEST).read_text())
    previous = read_prefs(previous_dir) if previous_dir is not None else {}
    settings = curation_settings(cfg, round_index)
    curate(model, similarity, data, round_dir, settings, previous, state.process_index, state.num_processes)
    state.wait_for_everyone()
    if state.is_main_process:
        merge(round_dir, data, state.num_processes, {
            "round": round_index,
            "model_sha1": weights_digest(model),
            "data": str(data.path.resolve()),
            "previous": str(previous_dir) if previous_dir else None,
            "settings": config.to_dict(settings),
        })
    state.wait_for_everyone()
    return json.loads((round_dir / MANIFEST).read_text())


def train_round(model: UnifiedModel, data: HomologousData, round_dir: Path, cfg, state, out: Path | None = None) -> UnifiedModel:
    """Reference log-probs (cached once, in the round folder), then Pair-DPO; writes the trained
    model to `out/model` (default: the round folder) and returns it."""
    out = Path(out) if out is not None else round_dir
    if (out / "model" / "config.json").exists():
        return UnifiedModel.from_pretrained(out / "model")
    rows = list(read_prefs(round_dir).values())
    images = {r.id: t for r, t in zip(data.records, model.encode_images(_load_all(data)).tolist())}
    examples = examples_from_rows(rows, images, cfg.loss_type, cfg.seed)
    refs = None
    if cfg.reference == "cached":
        # The cache holds what the estimator settings made, so variants never share a wrong one.
        key = f"{weights_digest(model)}-k{cfg.mask_samples}{'-ratio' if cfg.ratio_weighting else ''}{'-mean' if cfg.length_normalize else ''}{'-uncond' if cfg.cond_dropout else ''}"
        ref_path = round_dir / f"reference-{key}-{cfg.loss_type}-seed{cfg.seed}.json"
        if state.is_main_process and not ref_path.exists():
            atomic_write_json(ref_path, {"model_sha1": weights_digest(model), "mask_samples": cfg.mask_samples,
                                         "refs": precompute_reference(model, examples, cfg)})
        state.wait_for_everyone()
        refs = json.loads(ref_path.read_text())["refs"]
    trained = train(model, examples, refs, cfg, out / "train")
    if state.is_main_process:
        trained.save_pretrained(out / "model")
        shutil.rmtree(out / "train" / "state", ignore_errors=True)  # only now: a kill before this resumes
    state.wait_for_everyone()
    return trained


def weights_digest(model: UnifiedModel) -> str:
    """A short fingerprint of the weights, so a cached reference is never reused for another model."""
    h = hashlib.sha1()
    for name, tensor in sorted(model.net.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def require_qa(data: HomologousData) -> HomologousData:
    """Curation judges images by the records' questions: every record needs some."""
    missing = [r.id for r in data.records if not r.qa]
    if missing:
        raise DataError([f"{data.path}: {len(missing)} records have no qa, which curation needs to judge images "
                         f"(first: {', '.join(missing[:5])}); add questions or leave them out"])
    return data


def _load_all(data: HomologousData):
    import numpy as np

    return np.stack([r.load_image() for r in data.records])


def evaluate_into(model: UnifiedModel, folder: Path, cfg: RunConfig, similarity, seed: int | None = None) -> dict:
    """Evaluate into `folder` unless done; `seed` (default cfg.seed) picks the eval scenes and sampling."""
    seed = cfg.seed if seed is None else seed
    path = folder / "metrics.json"
    if path.exists():
        return json.loads(path.read_text())
    eval_cfg = EvalConfig(model=Path("."), out=folder, n=cfg.eval_n, seed=seed, steps=cfg.steps,
                          guidance=cfg.eval_guidance, temperature=cfg.image_temperature)
    metrics, generated = evaluate(model.eval(), world_eval_items(cfg.eval_n, seed), eval_cfg, similarity)
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
        lines.append(f"{r['round']:<8}{und:>22}{gen:>22}{r['gap']:>8.3f}{r['geneval_overall']:>9.3f}{r['caption_similarity']:>9.3f}{pairs:>7}")
    return "\n".join(lines)


def run(cfg: RunConfig) -> list[dict]:
    """Evaluate the base model, then `cfg.rounds` rounds of curate -> reference -> train -> evaluate."""
    from accelerate import PartialState

    from hermesflow.scorers.similarity import SentenceSimilarity

    state = PartialState(cpu=True)
    out = Path(cfg.out)
    model_dir = Path(cfg.model) if cfg.model else BASE_MODEL
    model = UnifiedModel.from_pretrained(model_dir).eval()
    if cfg.data:
        data = require_qa(read_homologous(cfg.data))
    else:
        data_dir = out / "data"
        if state.is_main_process and not (data_dir / "data.jsonl").exists():
            write_world(data_dir, cfg.n_train, seed=cfg.seed + 1, split="train")
        state.wait_for_everyone()
        data = read_homologous(data_dir)
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        config.save(cfg, out / "run_config.yaml")
    similarity = SentenceSimilarity(cfg.encoder, cfg.pooling)

    rows = []
    if state.is_main_process:
        base = evaluate_into(model, out / "base" / "eval", cfg, similarity)
        rows.append(summary_row("base", base, None))
    previous = None
    for r in range(1, cfg.rounds + 1):
        round_dir = out / f"round-{r}"
        manifest = curate_round(model, similarity, data, round_dir, cfg, r - 1, previous, state)
        model = train_round(model, data, round_dir, cfg, state).eval()
        if state.is_main_process:
            rows.append(summary_row(str(r), evaluate_into(model, round_dir / "eval", cfg, similarity), manifest))
        state.wait_for_everyone()
        previous = round_dir
    if state.is_main_process:
        atomic_write_json(out / "summary.json", rows)
        atomic_write_text(out / "summary.txt", format_summary(rows) + "\n")
        print(format_summary(rows))
        from hermesflow.report import build_report

        print(f"report: {build_report(out)}")
    return rows
