"""A static HTML report of a run folder (`hermesflow report RUN_DIR`), for a person to read.

One page, no server and no network: tables of the scores per round (the paper's Table 4 analog
and GenEval categories), plots (scores and gap per round, GenEval bars, loss and reward margins
over training steps), the self-judge agreement of each round, a gallery of preference pairs with
their scores, and the resolved config. Images are PNG files beside the page.
"""

from __future__ import annotations

import html
import json
import math
import random
import shutil
from dataclasses import fields
from pathlib import Path

import jinja2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from hermesflow.backbones import BASE_MODEL, load_backbone  # noqa: E402
from hermesflow.data import read_data  # noqa: E402
from hermesflow.errors import UsageError  # noqa: E402
from hermesflow.io import atomic_write_text  # noqa: E402
from hermesflow.judges import World, self_judge_agreement  # noqa: E402
from hermesflow.options import DataOptions  # noqa: E402
from hermesflow.prefs import read_prefs  # noqa: E402
from hermesflow.records import GENEVAL_CATEGORIES as CATEGORIES  # noqa: E402
from hermesflow.results import Evaluation, Interval  # noqa: E402
from hermesflow.stats import paired_difference, wilson  # noqa: E402

SECTIONS = ("Scores per round", "Change from the base model", "GenEval categories", "Training", "Self-judge agreement",
            "Kept and dropped pairs", "Preference pairs", "Evaluation samples", "Run details")
# The pages are jinja2 templates packaged beside this module; numbers reach them as HTML cells (with
# their intervals), text through the templates' escaping.
TEMPLATES = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
                               autoescape=True, keep_trailing_newline=True)
CAPTION_NOTE = ("The caption preference is sentence similarity to the record's one reference caption, so it rewards "
                "phrasing: a rejected caption is often a correct description of the image worded differently.")
ANSWER_NOTE = ("The understanding pairs are answers (--und-pairs answers): of the record's questions about the true image, "
               "the one the model is least sure of, with the model's probability of each answer.")


def _rounds(run: Path) -> list[tuple[str, Path]]:
    """(label, folder) of the base and of each finished round, in order: "base", "round 1", ..."""
    found = [("base", run / "base")] if (run / "base" / "eval" / "metrics.json").exists() else []
    numbered = sorted((int(p.name.split("-")[1]), p) for p in run.glob("round-*") if p.name.split("-")[1].isdigit())
    found += [(f"round {i}", p) for i, p in numbered if (p / "eval" / "metrics.json").exists()]
    if not found:
        raise UsageError(f"{run}: no evaluated round found (expected base/eval/metrics.json or round-N/eval/metrics.json)")
    return found


def _read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _ci(m: Interval | None) -> str:
    if m is None:
        return "–"
    if any(math.isnan(x) for x in m.ci95):  # one item: no spread to measure
        return f"{m.mean:.3f}<br><span class=ci>(one item: no interval)</span>"
    return f"{m.mean:.3f}<br><span class=ci>[{m.ci95[0]:.3f},&nbsp;{m.ci95[1]:.3f}]</span>"  # two lines: narrow on a phone


def paired_change(base: Evaluation, other: Evaluation, key: str) -> dict | None:
    """Mean change of a score from the base on the same eval items, with its 95% paired interval
    (per question, clustered by item: `stats.paired_difference`); for metrics that predate
    per-question counts, the change of per-image means. None when the items differ, or when there is
    nothing to compare (no per-example scores, or no unseen prompts for `generation_unseen`)."""
    a, b = base.per_example, other.per_example
    if sorted(a.ids) != sorted(b.ids):
        return None
    if a.questions is not None and b.questions is not None:
        try:
            c = paired_difference(a, b, key)
        except UsageError:
            return None
        return {"mean": c["mean"], "ci95": c["ci95"], "n": c["n_items"]}
    if key not in ("understanding", "generation", "gap") or a.ids != b.ids:
        return None
    if key == "gap":
        before = np.subtract(a.understanding, a.generation)
        after = np.subtract(b.understanding, b.generation)
    else:
        before, after = np.asarray(getattr(a, key)), np.asarray(getattr(b, key))
    d = after - before
    half = 1.96 * float(d.std(ddof=1)) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return {"mean": float(d.mean()), "ci95": [float(d.mean()) - half, float(d.mean()) + half], "n": len(d)}


def verdict(base: Evaluation, last: Evaluation, name: str) -> str:
    """One line that answers "did it work?": generation's paired change from the base on the prompts
    held out of post-training (all prompts where the data has no hold-out) and understanding's, each
    with its 95% interval and marked significant or not, and the judge named."""
    def said(key: str, label: str) -> str:
        try:
            c = paired_difference(base.per_example, last.per_example, key)
        except UsageError:
            return f"{label}: n/a"
        lo, hi = c["ci95"]
        if math.isnan(lo) or math.isnan(hi):
            return f"{label} {c['mean']:+.3f} (one item: no interval)"
        mark = "significant" if lo > 0 or hi < 0 else "not significant"
        return f"{label} {c['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}] ({mark})"

    world = base.prompt_holdout is not None
    parts = [said("generation_unseen", "generation on unseen prompts") if world else "generation on unseen prompts: n/a",
             *([] if world else [said("generation", "generation")]), said("understanding", "understanding")]
    draw = base.settings.get("draw", "")  # None: --eval-data; absent: evaluated before the split had draws
    items = f"{draw} draw" if draw else "your held-out data" if draw is None or not world else "the world's eval split"
    return (f"Verdict, {name} vs base ({base.n_examples} items, {items}; generation judged by {last.judges['generation']}; "
            f"one evaluation per model, so the interval covers the items, not training seeds): " + "; ".join(parts))


def _change_cell(c: dict | None, fallback: float) -> str:
    if c is None:
        return f"{fallback:+.3f}<br><span class=ci>(no paired interval)</span>"
    lo, hi = c["ci95"]
    if math.isnan(lo) or math.isnan(hi):
        return f"{c['mean']:+.3f}<br><span class=ci>(one item: no interval)</span>"
    mark = " <b class=sig title='the 95% interval excludes zero'>●</b>" if lo > 0 or hi < 0 else ""
    return f"{c['mean']:+.3f}{mark}<br><span class=ci>[{lo:+.3f},&nbsp;{hi:+.3f}]</span>"


def _plot_scores(names: list[str], results: list[Evaluation], path: Path) -> None:
    """Scores and gap per round, the axis zoomed to the intervals (a 0-1 axis flattens every change)."""
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.2), dpi=110, gridspec_kw={"width_ratios": [2, 1]})
    x = np.arange(len(names))
    for ax, keys in zip(axes, ((("understanding_score", "understanding"), ("generation_score", "generation")), (("gap", "gap"),))):
        lows, highs = [], []
        for key, label in keys:
            means = np.array([getattr(e, key).mean for e in results])
            lo, hi = np.array([getattr(e, key).ci95[0] for e in results]), np.array([getattr(e, key).ci95[1] for e in results])
            ax.errorbar(x, means, yerr=[means - lo, hi - means], marker="o", capsize=4, label=label,
                        color="C2" if key == "gap" else None)
            lows.append(np.nanmin(lo))
            highs.append(np.nanmax(hi))
        pad = 0.15 * max(1e-3, max(highs) - min(lows))
        ax.set_ylim(min(lows) - pad, max(highs) + pad)
        ax.set_xticks(x, names)
        ax.set_xlim(-0.4, len(names) - 0.6)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    axes[0].set_ylabel("score (95% interval)")
    axes[1].set_title("gap = understanding − generation", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_geneval(names: list[str], scores: list[dict], counted: list[dict], path: Path) -> None:
    """GenEval categories per round (or arm); Wilson 95% intervals where the counts are known."""
    fig, ax = plt.subplots(figsize=(7.6, 3.4), dpi=110)
    cats = [c for c in CATEGORIES + ("overall",) if any(c in geneval for geneval in scores)]
    width = 0.8 / len(names)
    for i, (name, geneval, counts) in enumerate(zip(names, scores, counted)):
        values = np.array([geneval.get(c, np.nan) for c in cats])
        # reshape: data without GenEval categories (not the world's) has none, and an empty plot
        bounds = np.array([wilson(*counts[c]) if c in counts else (v, v) for c, v in zip(cats, values)]).reshape(len(cats), 2)
        err = np.abs(np.stack([values - bounds[:, 0], bounds[:, 1] - values]))
        ax.bar(np.arange(len(cats)) + i * width, values, width, yerr=err, capsize=2, label=name,
               error_kw={"ecolor": "#555", "elinewidth": 0.8, "alpha": 0.7})
    ax.set_xticks(np.arange(len(cats)) + 0.4 - width / 2, [c.replace("_", " ") for c in cats], rotation=20)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of prompts satisfied (oracle)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def smooth(values: list[float], window: int) -> np.ndarray:
    """Centred moving average (shorter at the ends), so the curve's level is readable over step noise."""
    v = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(v) < 3:
        return v
    kernel = np.ones(window)
    return np.convolve(v, kernel, "same") / np.convolve(np.ones_like(v), kernel, "same")


TRAINING_PANELS = (
    ("total loss", lambda r: {"loss": r.get("loss")}),
    ("DPO terms −log σ(Δ) per branch", lambda r: {k: v for k, v in r.items() if k.startswith("loss/")}),
    ("NLL terms on chosen samples (unweighted)", lambda r: {k: v for k, v in r.items() if k.startswith("nll/")}),
    ("rewards/accuracies", lambda r: {k: v for k, v in r.items() if k.endswith("/rewards/accuracies")}),
    ("rewards/margins", lambda r: {k: v for k, v in r.items() if k.endswith("/rewards/margins")}),
    ("learning rate", lambda r: {"lr": r.get("lr")}),
)


def _plot_training(curves: dict[str, list[dict]], path: Path) -> None:
    """Each logged series, raw (faint) and smoothed, one colour per series and one line style per run."""
    fig, axes = plt.subplots(3, 2, figsize=(9, 7.8), dpi=110)
    styles = ("-", "--", ":", "-.")
    for ax, (title, pick) in zip(axes.flat, TRAINING_PANELS):
        colours: dict[str, str] = {}
        for (name, rows), style in zip(curves.items(), styles * 10):
            rows = [r for r in rows if "step" in r]
            steps = [r["step"] for r in rows]
            series = sorted({k for r in rows for k, v in pick(r).items() if v is not None})
            for key in series:
                values = [pick(r).get(key, np.nan) for r in rows]
                colour = colours.setdefault(key, f"C{len(colours)}")
                if title != "learning rate":
                    ax.plot(steps, values, color=colour, alpha=0.2, linewidth=0.8)
                ax.plot(steps, smooth(values, max(1, len(values) // 15)), color=colour, linestyle=style,
                        label=f"{key}, {name}" if len(curves) > 1 or len(series) > 1 else name)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # steps are whole
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6, ncol=2)
        else:
            ax.text(0.5, 0.5, "not logged (off in this run)", ha="center", va="center", transform=ax.transAxes, color="#777")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _save_image(image: np.ndarray, path: Path) -> None:
    factor = max(1, 128 // image.shape[0])  # small images enlarged, pixel for pixel, for a person to see
    Image.fromarray(image.repeat(factor, axis=0).repeat(factor, axis=1)).save(path)


def _base_model(config_path: Path) -> Path:
    """The folder of the model a run or ablation started from (its image decoder draws the pairs:
    preference training never changes a backbone's decoder)."""
    model = yaml.safe_load(config_path.read_text()).get("model") if config_path.exists() else None
    return Path(model) if model else BASE_MODEL


def _prefs(round_dir: Path) -> list[dict]:
    """A round's preference records (read by `prefs.read_prefs`, which checks them) as their JSON rows."""
    return [p.to_json() for p in read_prefs(round_dir).values()]


def _flags(row: dict, rejected_true: bool | None) -> list[str]:
    g, u, flags = row["gen"], row["und"], []
    if g.get("chosen_oracle") is not None:
        if g["chosen_oracle"] == g["rejected_oracle"]:
            flags.append("oracle tie")
        elif g["chosen_oracle"] < g["rejected_oracle"]:
            flags.append("oracle disagrees")
    for branch, pair in (("image", g), ("caption", u)):
        if pair.get("reason") in ("improved", "not_improved"):
            flags.append(f"self-play {branch} pair: {pair['reason'].replace('_', ' ')}")
    if rejected_true:
        flags.append("rejected caption is true of the image")
    return flags


def _run_options(run: Path) -> DataOptions:
    """How the run read its data (its run_config.yaml's reading options, written flat before the
    options were grouped, under `reading` since), for reading it the same way."""
    path = run / "run_config.yaml"
    saved = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.exists() else {}
    values = {**saved, **(saved.get("reading") or {})}
    return DataOptions(**{f.name: values[f.name] for f in fields(DataOptions) if f.name in values})


def _gallery(run: Path, round_dir: Path, out: Path, n: int, model: Path, seed: int = 0, world: World | None = None) -> dict:
    """The cards of `n` kept homologous tuples drawn across the round (seeded), in file order, each
    with its scores and flags (oracle ties and disagreements, the self-play case, rejected captions
    that `world` finds true of the image), their images written beside the page."""
    rows = _prefs(round_dir)
    kept = [r for r in rows if "chosen" in r["und"] and "chosen" in r["gen"]]
    picked = sorted(random.Random(f"gallery/{seed}").sample(range(len(kept)), min(n, len(kept))))
    data = run / "data" if (run / "data" / "data.jsonl").exists() else Path(_read_json(round_dir / "manifest.json")["data"])
    # the user's data is read as the run read it (its column map, --questions, --follow-symlinks)
    options = DataOptions() if data == run / "data" else _run_options(run)
    records = {r.id: r for r in read_data(data, options).records}
    def true_of(und: dict, record) -> bool | None:  # whether a rejected caption is true of the image (answer pairs: no caption)
        return None if world is None or "question" in und else world.true_of(und["rejected"], record)

    true_rejected = [true_of(r["und"], records[r["id"]]) for r in kept if r["id"] in records]
    judged = [t for t in true_rejected if t is not None]
    backbone = load_backbone(model)
    cards = []
    for i in picked:
        row = kept[i]
        images = {}
        for side, image in (("true", records[row["id"]].load_image()),
                            ("chosen", backbone.decode(torch.tensor([row["gen"]["chosen"]]))[0]),
                            ("rejected", backbone.decode(torch.tensor([row["gen"]["rejected"]]))[0])):
            images[side] = f"gallery/{round_dir.name}-{i}-{side}.png"
            _save_image(image, out / images[side])
        cards.append({"number": i + 1, "id": row["id"], "caption": row["caption"], "images": images, "und": row["und"],
                      "gen": {"chosen_oracle": None, "rejected_oracle": None, **row["gen"]},
                      "flags": _flags(row, true_of(row["und"], records[row["id"]]))})
    return {"shown": len(picked), "kept": len(kept), "seed": seed, "caption_note": ANSWER_NOTE if any("question" in r["und"] for r in kept) else CAPTION_NOTE,
            "cards": cards,
            "judged": len(judged), "judged_true": sum(judged)}


def _timings_rows(run: Path) -> list[list[str]]:
    path = run / "timings.json"
    if not path.exists():
        return []
    return [[html.escape(k), f"{v // 60:.0f} min {v % 60:.0f} s" if v >= 60 else f"{v:.1f} s"] for k, v in _read_json(path).items()]


def _drop_rows(label: str, counts: dict) -> list[list[str]]:
    rows = []
    for branch, name in (("und", "caption"), ("gen", "image")):
        for outcome in ("kept_by", "dropped"):
            for reason, k in sorted(counts.get(f"{branch}_{outcome}", {}).items()):
                rows.append([label, name, outcome.replace("_by", ""), html.escape(reason.replace("_", " ")), str(k),
                             f"{k / counts['records']:.0%}"])
    if counts.get("held_out_captions"):  # sampled captions, not records: no share of records
        rows.append([label, "caption", "left out", "sampled captions naming a held-out prompt", str(counts["held_out_captions"]), "–"])
    return rows


def build_report(run: str | Path, gallery_size: int = 8, world: World | None = None) -> Path:
    """Write RUN/report/index.html and its images; returns the page's path. `world`, where the run's
    data has one, says which rejected captions are true of their image."""
    run = Path(run)
    rounds = _rounds(run)
    out = run / "report"
    (out / "gallery").mkdir(parents=True, exist_ok=True)
    names = [name for name, _ in rounds]
    results = [Evaluation.read(folder / "eval" / "metrics.json") for _, folder in rounds]
    manifests = {name: _read_json(folder / "manifest.json") for name, folder in rounds if (folder / "manifest.json").exists()}
    config_path = run / "run_config.yaml"
    run_config = yaml.safe_load(config_path.read_text()) if config_path.exists() else {}

    score_rows = []
    for name, e in zip(names, results):
        kept = manifests.get(name, {}).get("counts", {}).get("both_kept")
        unseen_geneval = (e.unseen.geneval or {}).get("overall") if e.unseen else None
        score_rows.append([name, _ci(e.understanding_score), _ci(e.unseen.understanding_score if e.unseen else None),
                           _ci(e.generation_score), _ci(e.generation_unseen), _ci(e.gap),
                           f"{e.understanding_prior:.3f}", "–" if "overall" not in e.geneval else f"{e.geneval['overall']:.3f}",
                           "–" if unseen_geneval is None else f"{unseen_geneval:.3f}",
                           _ci(e.caption_similarity), "–" if kept is None else str(kept)])
    _plot_scores(names, results, out / "scores.png")
    change_rows = []
    if names[0] == "base":
        base = results[0]
        scores = {"understanding": lambda e: e.understanding_score,
                  "understanding_unseen": lambda e: e.unseen.understanding_score if e.unseen else None,
                  "generation": lambda e: e.generation_score, "generation_unseen": lambda e: e.generation_unseen,
                  "gap": lambda e: e.gap}
        for name, e in zip(names[1:], results[1:]):
            cells = [_change_cell(paired_change(base, e, key), score(e).mean - score(base).mean)
                     if score(e) and score(base) else "–" for key, score in scores.items()]
            # the gap's change is understanding's minus generation's: say which moved
            parts = [e.understanding_score.mean - base.understanding_score.mean, e.generation_score.mean - base.generation_score.mean]
            cells[-1] += f"<br><span class=ci>= {parts[0]:+.3f} understanding<br>− ({parts[1]:+.3f}) generation</span>"
            c = paired_change(base, e, "understanding")
            change_rows.append([name, *cells, str(c["n"]) if c else "–"])

    cats = [c for c in CATEGORIES + ("overall",) if c in results[0].geneval]
    if cats:  # only the world's records carry the scenes GenEval's categories are read from
        _plot_geneval(names, [e.geneval for e in results], [e.geneval_counts for e in results], out / "geneval.png")

    def geneval_cell(e: Evaluation, c: str) -> str:
        if c not in e.geneval:
            return "–"
        if c not in e.geneval_counts:
            return f"{e.geneval[c]:.3f}"
        hits, n = e.geneval_counts[c]
        lo, hi = wilson(hits, n)
        return f"{e.geneval[c]:.3f}<br><span class=ci>{hits}/{n} [{lo:.2f},&nbsp;{hi:.2f}]</span>"

    geneval_rows = [[name] + [geneval_cell(e, c) for c in cats] for name, e in zip(names, results)]

    curves = {}
    for name, folder in rounds:
        path = folder / "train" / "metrics.jsonl"
        if path.exists():
            curves[name] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if curves:
        _plot_training(curves, out / "training.png")

    judge_rows, drop_rows = [], []
    for name, folder in rounds:
        if name not in manifests:
            continue
        drop_rows += _drop_rows(name, manifests[name]["counts"])
        j = self_judge_agreement(p.gen for p in read_prefs(folder).values() if p.has("gen"))
        if not j["pairs"]:  # no pair the oracle could judge (data without scenes)
            continue
        agreement = "–" if not j["oracle_differs"] else \
            f"{j['agreement']:.2f} <span class=ci>[{j['interval'][0]:.2f},&nbsp;{j['interval'][1]:.2f}]</span>"
        label = name if j["self_curated"] else f"{name} (oracle-ranked control: NOT self-curated)"
        judge_rows.append([label, str(j["pairs"]), str(j["oracle_differs"]), f"{j['agree']} of {j['oracle_differs']}", agreement, str(j["ties"])])
    last = next((folder for name, folder in reversed(rounds) if name in manifests), None)
    pairs = (_gallery(run, last, out, gallery_size, _base_model(config_path), int(run_config.get("seed") or 0), world)
             if last is not None else None)
    samples = []
    for name, folder in rounds:
        if (folder / "eval" / "generated.png").exists() and (name == "base" or folder == rounds[-1][1]):
            shutil.copyfile(folder / "eval" / "generated.png", out / f"samples-{folder.name}.png")
            samples.append({"name": name, "file": f"samples-{folder.name}.png"})
    side_by_side = _side_by_side(rounds, results, out)
    provenance = _read_json(run / "provenance.json") if (run / "provenance.json").exists() else {}
    judge = " and ".join(sorted({e.judges["generation"] for e in results}))  # what judged the generated images
    line = verdict(results[0], results[-1], names[-1]) if len(results) > 1 and names[0] == "base" else None
    page = TEMPLATES.get_template("run_report.html").render(
        name=run.name, judge=judge, verdict=line, holdout=any(e.generation_unseen for e in results), warnings=[f"{n}: {w}" for n, e in zip(names, results) for w in e.warnings], sections=SECTIONS, score_rows=score_rows, change_rows=change_rows,
        geneval_head=[c.replace("_", " ") for c in cats], geneval_rows=geneval_rows, curves=bool(curves),
        judge_rows=judge_rows, drop_rows=drop_rows, last_round=last.name.replace("-", " ") if last else "-", pairs=pairs,
        samples=samples, prompts=results[-1].sample_prompts, side_by_side=side_by_side,
        provenance=[[html.escape(k), html.escape(str(v))] for k, v in provenance.items()], timings=_timings_rows(run),
        config_text=config_path.read_text() if config_path.exists() else "(no run_config.yaml)")
    atomic_write_text(out / "index.html", page)
    return out / "index.html"


def _sheet_image(sheet: Image.Image, index: int, columns: int = 8) -> Image.Image:
    """Image `index` of an evaluation's sample sheet (`generated.png`: square cells, `columns` to a row)."""
    side = sheet.width // columns
    row, column = divmod(index, columns)
    return sheet.crop((column * side, row * side, (column + 1) * side, (row + 1) * side))


def _side_by_side(rounds: list[tuple[str, Path]], results: list[Evaluation], out: Path, n: int = 8) -> dict | None:
    """The first `n` eval prompts as drawn by each evaluated model, cut from their sample sheets, with the
    judge's score of each image (the share of the item's questions it found satisfied)."""
    drawn = [(name, folder, e) for (name, folder), e in zip(rounds, results) if (folder / "eval" / "generated.png").exists()]
    prompts = results[-1].sample_prompts[:n]
    if not drawn or not prompts or any(e.sample_prompts[: len(prompts)] != prompts for _, _, e in drawn):
        return None  # the same prompts for every model, or no comparison
    (out / "side").mkdir(exist_ok=True)
    rows = [{"prompt": p, "cells": []} for p in prompts]
    for name, folder, e in drawn:
        with Image.open(folder / "eval" / "generated.png") as sheet:
            for i, row in enumerate(rows):
                file = f"side/{folder.name}-{i}.png"
                _sheet_image(sheet, i).save(out / file)
                score = e.per_example.generation[i] if e.per_example else None
                row["cells"].append({"file": file, "score": score})
    return {"models": [name for name, _, _ in drawn], "rows": rows, "judge": results[-1].judges["generation"]}


def ablation_tables(summary: dict) -> tuple:
    """The ablation's Table 5 analog (scores per arm, mean ± std over seeds), Table 4 analog (each
    score with its paired change from the base) and, where there is a control arm, each arm against
    it (None otherwise), as (header, rows) of plain text, from ablation.json."""
    def cell(s: dict) -> str:
        return "–" if s["mean"] is None else f"{s['mean']:.3f} ± {s['std']:.3f}"

    def change(s: dict, key: str, against: str = "change") -> str:
        c = (s.get(against) or {}).get(key)
        if not c or "error" in c:
            return "–"
        lo, hi = c["ci95"]
        mark = " *" if lo > 0 or hi < 0 else ""
        return f"{c['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]{mark}"

    def judge(s: dict) -> str:
        j = s.get("self_judge")
        if not j:
            return "–"
        if "agreement" not in j:  # written before ties were left out: the share of all kept pairs
            return f"{j['oracle_prefers_chosen']:.2f} of {j['pairs']:.0f}, ties counted" + (" (not self-curated)" if "note" in j else "")
        shown = "–" if j["agreement"] is None else f"{j['agreement']:.2f}"
        return f"{shown} of {j['oracle_differs']}" + (" (not self-curated)" if "note" in j else "")

    def cost(s: dict) -> str:
        return "–" if s.get("train_seconds_per_step") is None else f"{s['train_seconds_per_step']:.2f}"

    head5 = (["arm", "curation", "understanding", "caption sim.", "generation", "generation unseen"]
             + [c.replace("_", " ") for c in CATEGORIES] + ["GenEval overall", "GenEval unseen", "gap", "self-judge agreement",
                                                             "train s/step"])
    rows5 = [[arm, s["curation"], cell(s["understanding"]), cell(s["caption_similarity"]), cell(s["generation"]),
              cell(s["generation_unseen"]), *(cell(s[f"geneval/{c}"]) for c in CATEGORIES), cell(s["geneval/overall"]),
              cell(s.get("geneval_unseen/overall", {"mean": None})), cell(s["gap"]), judge(s), cost(s)] for arm, s in summary.items()]
    def gap_parts(s: dict) -> str:  # the gap's change is understanding's minus generation's: say which moved
        und, gen = (s.get("change", {}).get(k) or {} for k in ("understanding", "generation"))
        return "–" if "mean" not in und or "mean" not in gen else f"{und['mean']:+.3f} − ({gen['mean']:+.3f})"

    head4 = ["arm", "understanding", "Δ understanding", "Δ understanding unseen", "Δ understanding seen", "generation",
             "Δ generation", "generation unseen", "Δ generation unseen", "gap", "Δ gap", "Δ gap = Δ und − Δ gen"]
    rows4 = [[arm, cell(s["understanding"]), change(s, "understanding"), change(s, "understanding_unseen"),
              change(s, "understanding_seen"), cell(s["generation"]), change(s, "generation"), cell(s["generation_unseen"]),
              change(s, "generation_unseen"), cell(s["gap"]), change(s, "gap"), gap_parts(s)]
             for arm, s in summary.items()]
    compared = {arm: s for arm, s in summary.items() if s.get("vs_control")}
    if not compared:
        return (head5, rows5), (head4, rows4), None
    control = next(iter(compared.values()))["vs_control"]["control"]
    keys = ("understanding", "understanding_unseen", "generation", "generation_unseen", "gap")
    head = ["arm", *(f"Δ {k.replace('_', ' ')} vs {control}" for k in keys)]
    return (head5, rows5), (head4, rows4), (head, [[arm, *(change(s, k, "vs_control") for k in keys)] for arm, s in compared.items()])


ABLATION_SECTIONS = ("Table 5 analog", "Table 4 analog", "Scores per arm", "Training", "Self-judge agreement", "Preference pairs", "Config")


def _plot_arms(summary: dict, path: Path) -> None:
    """Understanding, generation and gap of each arm, mean ± std over seeds."""
    arms = list(summary)
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(arms)), 3.8), dpi=110)  # room for each arm's name
    x = np.arange(len(arms))
    for offset, key in zip((-0.25, 0, 0.25), ("understanding", "generation", "gap")):
        ax.bar(x + offset, [summary[a][key]["mean"] for a in arms], 0.25, yerr=[summary[a][key]["std"] for a in arms],
               capsize=3, label=key)
    ax.set_xticks(x, arms, rotation=35, ha="right", rotation_mode="anchor")
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (mean ± std over seeds)")
    ax.legend(fontsize=8, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)  # above the bars, never on them
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def build_ablation_report(folder: str | Path, gallery_size: int = 8, world: World | None = None) -> Path:
    """Write FOLDER/report/index.html for a `hermesflow ablate` folder (`world` as in `build_report`)."""
    folder = Path(folder)
    summary = _read_json(folder / "ablation.json")
    table5, table4, versus = ablation_tables(summary)
    seeds = sorted({s["seeds"] for arm, s in summary.items() if arm != "base"})
    out = folder / "report"
    (out / "gallery").mkdir(parents=True, exist_ok=True)
    _plot_arms(summary, out / "arms.png")
    geneval_means = [{c: summary[arm][f"geneval/{c}"]["mean"] for c in CATEGORIES + ("overall",)} for arm in summary]
    _plot_geneval(list(summary), geneval_means, [{}] * len(summary), out / "geneval.png")
    curves = {}
    for arm in summary:
        path = folder / arm / "seed-0" / "train" / "metrics.jsonl"
        if path.exists():
            curves[arm] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if curves:
        _plot_training(curves, out / "training.png")
    judge_rows = []
    # the shared round 0, the rounds 0 of arms that curate their own, and each seed's self-play rounds
    manifest_paths = [folder / "round-0" / "manifest.json", *sorted(folder.glob("*/round-0/manifest.json")),
                      *sorted(folder.glob("*_r*/seed-*/manifest.json"))]
    for manifest_path in manifest_paths:
        j = self_judge_agreement(p.gen for p in read_prefs(manifest_path.parent).values() if p.has("gen"))
        number = lambda key: "–" if j.get(key) is None else f"{j[key]:.3f}"  # noqa: E731
        judge_rows.append([html.escape(str(manifest_path.parent.relative_to(folder))), str(j["pairs"]),
                           f"{j.get('agree', 0)} of {j.get('oracle_differs', 0)}", number("agreement"), str(j.get("ties", 0)),
                           number("chosen_oracle_accuracy"), number("rejected_oracle_accuracy")])
    escaped = lambda table: (table[0], [[html.escape(c) for c in row] for row in table[1]])  # noqa: E731
    page = TEMPLATES.get_template("ablation_report.html").render(
        name=folder.name, folder=str(folder), seeds=" or ".join(map(str, seeds)), sections=ABLATION_SECTIONS,
        table5=escaped(table5), table4=escaped(table4), versus=escaped(versus) if versus else None, curves=bool(curves), judge_rows=judge_rows,
        pairs=_gallery(folder, folder / "round-0", out, gallery_size, _base_model(folder / "ablate_config.yaml"), world=world),
        config_text=(folder / "ablate_config.yaml").read_text())
    atomic_write_text(out / "index.html", page)
    return out / "index.html"
