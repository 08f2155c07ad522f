"""`hermesflow status DIR`: where a run, an ablation or an evaluation stands, read from its files alone.

Each stage of a folder is done (its output exists), part done (curation's shards, training's saved
state: a rerun resumes there), started (an evaluation saves nothing part-way, so a rerun begins it
again) or not started. Nothing is loaded but small JSON and YAML files, so it answers at once, also
while the run is going.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from hermesflow.errors import UsageError


def _json(path: Path) -> dict | list | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _lines(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    except OSError:
        return 0


def evaluation(folder: Path) -> tuple[str, bool]:
    """(what the evaluation in `folder` has done, whether it is finished)."""
    metrics = _json(folder / "metrics.json")
    if isinstance(metrics, dict):
        und, gen = metrics.get("understanding_score") or {}, metrics.get("generation_score") or {}
        return (f"done: understanding {und.get('mean', float('nan')):.3f}, generation {gen.get('mean', float('nan')):.3f} "
                f"({metrics.get('n_examples')} items)"), True
    if (folder / "eval-settings.json").exists():
        return "started (an evaluation saves nothing part-way: a rerun begins it again)", False
    return "not started", False


def curation(folder: Path, records: int | None) -> tuple[str, bool, bool]:
    """(what the curation in `folder` has done, finished, part done)."""
    manifest = _json(folder / "manifest.json")
    if isinstance(manifest, dict):
        counts = manifest.get("counts", {})
        return f"done: {counts.get('both_kept')} pairs kept of {counts.get('records')} records", True, False
    curated = sum(_lines(shard) for shard in folder.glob("shards/shard-*.jsonl"))
    if curated:
        return f"{curated} of {records if records is not None else '?'} records curated (a rerun resumes there)", False, True
    return ("started" if (folder / "curate-settings.json").exists() else "not started"), False, False


def training(folder: Path, model: Path, total: int | None) -> tuple[str, bool, bool]:
    """(what the training whose state is in `folder` and result in `model` has done, finished, part done)."""
    if (model / "config.json").exists():
        return "done", True, False
    step = _json(folder / "state" / "step.json")
    if isinstance(step, dict):
        return f"step {step['step']} of {total if total is not None else '?'} saved (a rerun resumes there)", False, True
    return ("started" if (folder / "train-settings.json").exists() else "not started"), False, False


def run_status(out: Path) -> list[str]:
    settings = yaml.safe_load((out / "run_config.yaml").read_text(encoding="utf-8")) or {}
    rounds = int(settings.get("rounds", 1))
    steps = (settings.get("training") or {}).get("train_steps", settings.get("train_steps"))
    data = Path(settings["data"]) if settings.get("data") else out / "data"
    records = _lines(data / "data.jsonl" if data.is_dir() else data) or None
    lines = [f"{out}: a run of {rounds} round{'s' * (rounds != 1)} (settings in run_config.yaml)"]
    reused, resumed = [], []
    said, done = evaluation(out / "base" / "eval")
    lines.append(f"  {'base evaluation':<20} {said}")
    reused += ["the base evaluation"] if done else []
    for r in range(1, max(rounds, len(list(out.glob("round-*")))) + 1):
        folder = out / f"round-{r}"
        said, done, part = curation(folder, records)
        lines.append(f"  {f'round {r} curation':<20} {said}")
        reused += [f"round {r}'s curation"] if done else []
        resumed += [f"round {r}'s curation"] if part else []
        said, done, part = training(folder / "train", folder / "model", steps)
        lines.append(f"  {f'round {r} training':<20} {said}")
        reused += [f"round {r}'s model"] if done else []
        resumed += [f"round {r}'s training"] if part else []
        said, done = evaluation(folder / "eval")
        lines.append(f"  {f'round {r} evaluation':<20} {said}")
        reused += [f"round {r}'s evaluation"] if done else []
    summary = out / "summary.txt"
    verdict = summary.read_text(encoding="utf-8").splitlines()[:1] if summary.exists() else []
    lines += [v for v in verdict if v.startswith("Verdict")]
    lines.append(rerun_line(reused, resumed))
    return lines


def ablation_status(out: Path) -> list[str]:
    settings = yaml.safe_load((out / "ablate_config.yaml").read_text(encoding="utf-8")) or {}
    seeds = int(settings.get("seeds") or 0) or None
    arms = yaml.safe_load((out / "arms.yaml").read_text(encoding="utf-8")) if (out / "arms.yaml").exists() else None
    rows = [f"{name}_r{r}" if r > 1 else name for name, arm in arms.items() for r in range(1, int((arm or {}).get("rounds", 1)) + 1)] \
        if isinstance(arms, dict) else sorted({folder.parent.name for folder in out.glob("*/seed-*")})
    lines = [f"{out}: an ablation of {len(rows)} rows, {seeds or '?'} seeds each (settings in ablate_config.yaml)"]
    said, done = evaluation(out / "base" / "eval")
    lines.append(f"  {'base evaluation':<24} {said}")
    finished = done
    for name in rows:
        folders = [out / name / f"seed-{s}" for s in range(seeds)] if seeds else sorted((out / name).glob("seed-*"))
        trained = sum((f / "model" / "config.json").exists() for f in folders)
        evaluated = sum((f / "eval" / "metrics.json").exists() for f in folders)
        finished = finished and evaluated == len(folders)
        lines.append(f"  {name:<24} {trained} of {len(folders)} seeds trained, {evaluated} evaluated")
    if (out / "ablation.md").exists():
        lines.append("done: the tables are in ablation.md" if finished else "ablation.md holds the rows finished when it was written")
    lines.append("A rerun of the same command reuses every finished model and evaluation, and resumes the rest.")
    return lines


def rerun_line(reused: list[str], resumed: list[str]) -> str:
    if not reused and not resumed:
        return "A rerun of the same command starts from the beginning."
    parts = ([f"reuses {', '.join(reused)}"] if reused else []) + ([f"resumes {', '.join(resumed)}"] if resumed else [])
    return f"A rerun of the same command {' and '.join(parts)}."


def status(out: Path) -> list[str]:
    """What the folder `out` holds and what a rerun of its command would reuse, one line each."""
    out = Path(out)
    if not out.is_dir():
        raise UsageError(f"{out}: no such folder")
    if (out / "run_config.yaml").exists():
        return run_status(out)
    if (out / "ablate_config.yaml").exists():
        return ablation_status(out)
    if (out / "metrics.json").exists() or (out / "eval-settings.json").exists():
        return [f"{out}: an evaluation", f"  {evaluation(out)[0]}"]
    raise UsageError(f"{out}: not a folder made by hermesflow run, ablate or eval (no run_config.yaml, ablate_config.yaml or metrics.json)")
