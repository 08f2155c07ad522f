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
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from hermesflow.backbones import BASE_MODEL, load_backbone  # noqa: E402
from hermesflow.data import read_data  # noqa: E402
from hermesflow.errors import UsageError  # noqa: E402
from hermesflow.evaluate import paired_difference  # noqa: E402
from hermesflow.io import atomic_write_text  # noqa: E402
from hermesflow.world.prompts import CATEGORIES, parse_prompt, satisfied_by  # noqa: E402
from hermesflow.world.render import upscale  # noqa: E402

SECTIONS = ("Scores per round", "Change from the base model", "GenEval categories", "Training", "Self-judge agreement",
            "Kept and dropped pairs", "Preference pairs", "Evaluation samples", "Run details")
CAPTION_NOTE = ("The caption preference is sentence similarity to the record's one reference caption, so it rewards "
                "phrasing: a rejected caption is often a correct description of the image worded differently.")


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


def _table(head: list[str], rows: list[list[str]]) -> str:
    """An HTML table (cells are HTML; callers escape text), in a box that scrolls sideways on a phone."""
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td{' class=t' if c[:1].isalpha() else ''}>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<div class=scroll><table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table></div>"


def _ci(m: dict) -> str:
    return f"{m['mean']:.3f} <span class=ci>[{m['ci95'][0]:.3f},&nbsp;{m['ci95'][1]:.3f}]</span>"


def wilson(hits: int, n: int) -> tuple[float, float]:
    """95% Wilson interval of a proportion (sound for the small counts of GenEval categories)."""
    if n == 0:
        return float("nan"), float("nan")
    z, p = 1.96, hits / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_change(base: dict, other: dict, key: str) -> dict | None:
    """Mean change of a score from the base on the same eval items, with its 95% paired interval
    (per question, clustered by item: `evaluate.paired_difference`); for metrics that predate
    per-question counts, the change of per-image means. None when the items differ, or when there is
    nothing to compare (no per-example scores, or no unseen prompts for `generation_unseen`)."""
    a, b = base.get("per_example"), other.get("per_example")
    if not a or not b or sorted(a["ids"]) != sorted(b["ids"]):
        return None
    if "questions" in a and "questions" in b:
        try:
            c = paired_difference(base, other, key)
        except UsageError:
            return None
        return {"mean": c["mean"], "ci95": c["ci95"], "n": c["n_items"]}
    if key not in ("understanding", "generation", "gap") or a["ids"] != b["ids"]:
        return None
    if key == "gap":
        before = np.subtract(a["understanding"], a["generation"])
        after = np.subtract(b["understanding"], b["generation"])
    else:
        before, after = np.asarray(a[key]), np.asarray(b[key])
    d = after - before
    half = 1.96 * float(d.std(ddof=1)) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return {"mean": float(d.mean()), "ci95": [float(d.mean()) - half, float(d.mean()) + half], "n": len(d)}


def _change_cell(c: dict | None, fallback: float) -> str:
    if c is None:
        return f"{fallback:+.3f} <span class=ci>(no paired interval)</span>"
    lo, hi = c["ci95"]
    mark = " <b class=sig title='the 95% interval excludes zero'>●</b>" if lo > 0 or hi < 0 else ""
    return f"{c['mean']:+.3f} <span class=ci>[{lo:+.3f},&nbsp;{hi:+.3f}]</span>{mark}"


def _plot_scores(names: list[str], metrics: list[dict], path: Path) -> None:
    """Scores and gap per round, the axis zoomed to the intervals (a 0-1 axis flattens every change)."""
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.2), dpi=110, gridspec_kw={"width_ratios": [2, 1]})
    x = np.arange(len(names))
    for ax, keys in zip(axes, ((("understanding_score", "understanding"), ("generation_score", "generation")), (("gap", "gap"),))):
        lows, highs = [], []
        for key, label in keys:
            means = np.array([m[key]["mean"] for m in metrics])
            lo, hi = np.array([m[key]["ci95"][0] for m in metrics]), np.array([m[key]["ci95"][1] for m in metrics])
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


def _plot_geneval(names: list[str], metrics: list[dict], path: Path) -> None:
    """GenEval categories per round; Wilson 95% intervals where the counts are known."""
    fig, ax = plt.subplots(figsize=(7.6, 3.4), dpi=110)
    cats = [c for c in CATEGORIES + ("overall",) if any(c in m["geneval"] for m in metrics)]
    width = 0.8 / len(names)
    for i, (name, m) in enumerate(zip(names, metrics)):
        values = np.array([m["geneval"].get(c, np.nan) for c in cats])
        counts = m.get("geneval_counts", {})
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
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6, ncol=2)
        else:
            ax.text(0.5, 0.5, "not logged (off in this run)", ha="center", va="center", transform=ax.transAxes, color="#777")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _save_image(image: np.ndarray, path: Path) -> None:
    Image.fromarray(upscale(image, max(1, 128 // image.shape[0]))).save(path)


def _base_model(config_path: Path) -> Path:
    """The folder of the model a run or ablation started from (its image decoder draws the pairs:
    preference training never changes a backbone's decoder)."""
    model = yaml.safe_load(config_path.read_text()).get("model") if config_path.exists() else None
    return Path(model) if model else BASE_MODEL


def _prefs(round_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (round_dir / "prefs.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]


def self_judge(rows: list[dict]) -> dict:
    """Agreement of the model's ranking of its kept image pairs with the oracle's, counted among the
    pairs where the oracle sees a difference (a tie says nothing either way)."""
    kept = [r["gen"] for r in rows if "chosen" in r["gen"] and r["gen"].get("chosen_oracle") is not None]
    differ = [g for g in kept if g["chosen_oracle"] != g["rejected_oracle"]]
    agree = sum(g["chosen_oracle"] > g["rejected_oracle"] for g in differ)
    return {"pairs": len(kept), "oracle_differs": len(differ), "agree": agree, "ties": len(kept) - len(differ),
            "agreement": agree / len(differ) if differ else float("nan"), "interval": wilson(agree, len(differ)),
            # oracle-ranked pairs (--pair-source oracle) agree with the oracle by construction
            "self_curated": all(g.get("ranked_by") != "oracle" for g in kept)}


def _true_of(caption: str, scene) -> bool | None:
    """Whether a caption in the world's phrasing holds for the scene (None: not a world phrasing, or no scene)."""
    spec = parse_prompt(caption) if scene is not None else None
    return None if spec is None else bool(satisfied_by(scene, spec))


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


def _run_options(run: Path):
    """The run's saved settings, for reading its data the same way (None without run_config.yaml)."""
    path = run / "run_config.yaml"
    return SimpleNamespace(**(yaml.safe_load(path.read_text(encoding="utf-8")) or {})) if path.exists() else None


def _gallery(run: Path, round_dir: Path, out: Path, n: int, model: Path, seed: int = 0) -> str:
    """Cards of `n` kept homologous tuples drawn across the round (seeded), in file order, each with
    its scores and flags: oracle ties and disagreements, the self-play case, true rejected captions."""
    rows = _prefs(round_dir)
    kept = [r for r in rows if "chosen" in r["und"] and "chosen" in r["gen"]]
    picked = sorted(random.Random(f"gallery/{seed}").sample(range(len(kept)), min(n, len(kept))))
    data = run / "data" if (run / "data" / "data.jsonl").exists() else Path(_read_json(round_dir / "manifest.json")["data"])
    # the user's data is read as the run read it (its column map, --questions, --follow-symlinks)
    options = None if data == run / "data" else _run_options(run)
    records = {r.id: r for r in read_data(data, options).records}
    true_rejected = [_true_of(r["und"]["rejected"], records[r["id"]].scene) for r in kept if r["id"] in records]
    judged = [t for t in true_rejected if t is not None]
    backbone = load_backbone(model)
    cards = []
    for i in picked:
        row = kept[i]
        names = {}
        for side, image in (("true", records[row["id"]].load_image()),
                            ("chosen", backbone.decode(torch.tensor([row["gen"]["chosen"]]))[0]),
                            ("rejected", backbone.decode(torch.tensor([row["gen"]["rejected"]]))[0])):
            names[side] = f"gallery/{round_dir.name}-{i}-{side}.png"
            _save_image(image, out / names[side])
        u, g = row["und"], row["gen"]
        oracle = lambda v: "" if v is None else f" · oracle {v:.2f}"  # noqa: E731
        flags = "".join(f"<span class=flag>{html.escape(f)}</span>" for f in _flags(row, _true_of(u["rejected"], records[row["id"]].scene)))
        cards.append(f"""<div class=card>
<div class=id>#{i + 1} of {len(kept)} kept · id {html.escape(row['id'])} {flags}</div>
<figure><img src="{names['true']}" alt="true image"><figcaption>true image<br><b>{html.escape(row['caption'])}</b></figcaption></figure>
<figure><img src="{names['chosen']}" alt="chosen image"><figcaption>chosen image<br>self-VQA {g['chosen_score']:.2f}{oracle(g.get('chosen_oracle'))}</figcaption></figure>
<figure><img src="{names['rejected']}" alt="rejected image"><figcaption>rejected image<br>self-VQA {g['rejected_score']:.2f}{oracle(g.get('rejected_oracle'))}</figcaption></figure>
<div class=caps><div class=win>chosen caption ({u['chosen_score']:.2f}): {html.escape(u['chosen'])}</div>
<div class=lose>rejected caption ({u['rejected_score']:.2f}): {html.escape(u['rejected'])}</div></div>
</div>""")
    summary = (f"<p>{len(picked)} of the {len(kept)} kept tuples, drawn across the round with seed {seed}. {CAPTION_NOTE}"
               + (f" Here the oracle finds the rejected caption true of the image in {sum(judged)} of the {len(judged)} kept "
                  f"caption pairs it can read.</p>" if judged else "</p>"))
    return summary + ("\n".join(cards) or "<p>No kept pairs in this round.</p>")


STYLE = """body{font-family:system-ui,sans-serif;max-width:1360px;margin:2em auto;color:#222;padding:0 1em;line-height:1.4}
.scroll{overflow-x:auto;max-width:100%}table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:4px 10px;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left;position:sticky;left:0;background:#fff}
th:first-child{background:#f3f3f3}td.t{text-align:left}.ci{color:#777;font-size:.85em}.sig{color:#b35900}
.card{border:1px solid #ddd;border-radius:6px;padding:10px;margin:10px 0;display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.card .id{width:100%;color:#888;font-size:.8em}.flag{background:#fff3cd;color:#6b4e00;border-radius:3px;padding:1px 6px;margin-left:6px}
figure{margin:0;text-align:center;font-size:.85em;width:150px}
figure img{width:128px;height:128px;image-rendering:pixelated;border:1px solid #999}.caps{flex:1;min-width:240px;font-size:.9em}
.win{color:#15691f;margin-bottom:6px}.lose{color:#9b1c1c}pre{background:#f6f6f6;padding:10px;overflow:auto}
img.plot,img.sheet{max-width:100%;height:auto}img.sheet{image-rendering:pixelated}ol.prompts{columns:2;font-size:.85em}
@media (max-width:700px){body{margin:1em auto}ol.prompts{columns:1}.card{gap:8px}figure{width:100px}figure img{width:92px;height:92px}}"""


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
    return rows


def build_report(run: str | Path, gallery_size: int = 8) -> Path:
    """Write RUN/report/index.html and its images; returns the page's path."""
    run = Path(run)
    rounds = _rounds(run)
    out = run / "report"
    (out / "gallery").mkdir(parents=True, exist_ok=True)
    names = [name for name, _ in rounds]
    metrics = [_read_json(folder / "eval" / "metrics.json") for _, folder in rounds]
    manifests = {name: _read_json(folder / "manifest.json") for name, folder in rounds if (folder / "manifest.json").exists()}
    config_path = run / "run_config.yaml"
    run_config = yaml.safe_load(config_path.read_text()) if config_path.exists() else {}

    score_rows = []
    for name, m in zip(names, metrics):
        kept = manifests.get(name, {}).get("counts", {}).get("both_kept")
        unseen = m.get("generation_score_unseen")
        score_rows.append([name, _ci(m["understanding_score"]), _ci(m["generation_score"]), _ci(unseen) if unseen else "–", _ci(m["gap"]),
                           f"{m['understanding_prior']:.3f}", f"{m['geneval'].get('overall', float('nan')):.3f}",
                           _ci(m["caption_similarity"]) if "caption_similarity" in m else "–", "–" if kept is None else str(kept)])
    _plot_scores(names, metrics, out / "scores.png")
    change_rows = []
    if names[0] == "base":
        for name, m in zip(names[1:], metrics[1:]):
            cells = [_change_cell(paired_change(metrics[0], m, key), m[score]["mean"] - metrics[0][score]["mean"])
                     if m.get(score) and metrics[0].get(score) else "–"
                     for key, score in (("understanding", "understanding_score"), ("generation", "generation_score"),
                                        ("generation_unseen", "generation_score_unseen"), ("gap", "gap"))]
            c = paired_change(metrics[0], m, "understanding")
            change_rows.append([name, *cells, str(c["n"]) if c else "–"])

    _plot_geneval(names, metrics, out / "geneval.png")
    cats = [c for c in CATEGORIES + ("overall",) if c in metrics[0]["geneval"]]

    def geneval_cell(m: dict, c: str) -> str:
        if c not in m["geneval"]:
            return "–"
        if c not in m.get("geneval_counts", {}):
            return f"{m['geneval'][c]:.3f}"
        hits, n = m["geneval_counts"][c]
        lo, hi = wilson(hits, n)
        return f"{m['geneval'][c]:.3f} <span class=ci>{hits}/{n} [{lo:.2f},&nbsp;{hi:.2f}]</span>"

    geneval_rows = [[name] + [geneval_cell(m, c) for c in cats] for name, m in zip(names, metrics)]

    curves = {}
    for name, folder in rounds:
        path = folder / "train" / "metrics.jsonl"
        if path.exists():
            curves[name] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    training = "<p>No training metrics found.</p>"
    if curves:
        _plot_training(curves, out / "training.png")
        training = ('<p>Faint: each step; solid: a moving average over about a fifteenth of the steps. The DPO terms are '
                    '−log σ(Δ) of each branch; the NLL terms, when on, are the unweighted −log π of the chosen sample.</p>'
                    '<img class=plot src="training.png" alt="total loss, DPO and NLL terms, reward accuracies and learning rate over steps">')

    judge_rows, drop_rows = [], []
    for name, folder in rounds:
        if name not in manifests:
            continue
        j = self_judge(_prefs(folder))
        lo, hi = j["interval"]
        agreement = "–" if not j["oracle_differs"] else f"{j['agreement']:.2f} <span class=ci>[{lo:.2f},&nbsp;{hi:.2f}]</span>"
        label = name if j["self_curated"] else f"{name} (oracle-ranked control: NOT self-curated)"
        judge_rows.append([label, str(j["pairs"]), str(j["oracle_differs"]), f"{j['agree']} of {j['oracle_differs']}", agreement, str(j["ties"])])
        drop_rows += _drop_rows(name, manifests[name]["counts"])
    last = next((folder for name, folder in reversed(rounds) if name in manifests), None)
    gallery = (_gallery(run, last, out, gallery_size, _base_model(config_path), int(run_config.get("seed") or 0))
               if last is not None else "<p>No curated round yet.</p>")

    samples = []
    for (name, folder), m in zip(rounds, metrics):
        if (folder / "eval" / "generated.png").exists() and (name == "base" or folder == rounds[-1][1]):
            shutil.copyfile(folder / "eval" / "generated.png", out / f"samples-{folder.name}.png")
            samples.append(f'<h3>{html.escape(name)}</h3><img class=sheet src="samples-{folder.name}.png" alt="images generated by {html.escape(name)}">')
    prompts = metrics[-1].get("sample_prompts")
    sample_html = ("".join(samples) or "<p>No sample sheet found.</p>") + (
        "<p>Prompts, row by row (8 to a row):</p><ol class=prompts>" + "".join(f"<li>{html.escape(p)}</li>" for p in prompts) + "</ol>"
        if prompts else "<p>(The prompts of the sheets were not recorded by the version that evaluated this run.)</p>")

    provenance = _read_json(run / "provenance.json") if (run / "provenance.json").exists() else {}
    details = _table(["what", "value"], [[html.escape(k), html.escape(str(v))] for k, v in provenance.items()]) if provenance else \
        "<p>(No provenance.json: made by a version that did not record it.)</p>"
    timings = _timings_rows(run)
    config_text = config_path.read_text() if config_path.exists() else "(no run_config.yaml)"

    page = f"""<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content="width=device-width, initial-scale=1">
<title>HermesFlow report: {html.escape(run.name)}</title><style>{STYLE}</style></head><body>
<h1>HermesFlow report: {html.escape(run.name)}</h1>
<p>Scores are judged by the shapes world's exact oracle (in place of the paper's GPT-4o and GenEval's detector);
scores are shares of questions answered right (per question, as the paper's Table 4 averages answers), with 95% intervals
clustered by image. Understanding: the model's accuracy on questions about real images; generation: the oracle's accuracy on
the same questions about the model's images for the same captions. <b>Generation (unseen prompts)</b> keeps the eval prompts
held out of post-training data (about half the prompt specs of counting, colors, position and color attribution; single- and
two-object prompts are always seen): read claims about generation there, since generation depends only on the prompt.</p>
<h2 id=scores>{SECTIONS[0]}</h2>
{_table(["", "understanding", "generation", "generation (unseen prompts)", "gap", "prior (blank image)", "GenEval overall", "caption similarity", "tuples kept"], score_rows)}
<img class=plot src="scores.png" alt="scores and gap per round">
<h2 id=change>{SECTIONS[1]}</h2>
<p>Each round minus the base model on the same eval items, with a 95% paired interval (the same items are scored twice,
so the change is measured more precisely than the two intervals above suggest). <b class=sig>●</b> marks an interval
that excludes zero.</p>
{_table(["", "Δ understanding", "Δ generation", "Δ generation (unseen prompts)", "Δ gap", "paired items"], change_rows) if change_rows else "<p>No base evaluation or no round yet.</p>"}
<h2 id=geneval>{SECTIONS[2]}</h2>
<p>Share of prompts whose scene the oracle finds satisfied, with the count and a 95% Wilson interval: categories hold
few prompts each, so their intervals are wide.</p>
{_table([""] + [c.replace("_", " ") for c in cats], geneval_rows)}
<img class=plot src="geneval.png" alt="GenEval categories per round">
<h2 id=training>{SECTIONS[3]}</h2>
{training}
<h2 id=judge>{SECTIONS[4]}</h2>
<p>Among the image pairs the model kept, the pairs where the exact oracle scores chosen and rejected differently, and how
often the oracle agrees that the chosen image is the better one (95% Wilson interval). This measures the paper's central
assumption, that understanding can judge generation; oracle ties say nothing either way and are counted apart.</p>
{_table(["", "image pairs kept", "oracle sees a difference", "oracle agrees", "agreement", "oracle ties"], judge_rows)}
<h2 id=drops>{SECTIONS[5]}</h2>
<p>Why each record's caption and image pairs were kept or dropped. Kept: initial (best against worst sample), improved or
not improved (the paper's Eq. 10 against the previous round's pair). Dropped: tie (the best does not score above the worst),
below threshold (the chosen image's self-VQA accuracy is not above --min-chosen-accuracy), inverted, unscorable.</p>
{_table(["", "branch", "outcome", "reason", "records", "share"], drop_rows)}
<h2 id=pairs>{SECTIONS[6]}</h2>
<p>Homologous tuples of {html.escape(last.name.replace("-", " ") if last else "-")}: the true image and caption; the chosen and rejected
images the model drew for the caption, with the share of questions the model itself (self-VQA) and the oracle answer
correctly about them; the chosen and rejected captions the model wrote, with their sentence similarity to the truth.</p>
{gallery}
<h2 id=samples>{SECTIONS[7]}</h2>
<p>The first 32 images each model generated for the evaluation prompts (the same prompts and sampling seed for every model).</p>
{sample_html}
<h2 id=details>{SECTIONS[8]}</h2>
{details}
{_table(["stage", "wall time"], timings) if timings else "<p>(No timings.json.)</p>"}
<pre>{html.escape(config_text)}</pre>
</body></html>
"""
    atomic_write_text(out / "index.html", page)
    return out / "index.html"


ABLATION_SECTIONS = ("Table 5 analog", "Table 4 analog", "Scores per arm", "Training", "Self-judge agreement", "Preference pairs", "Config")


def _plot_arms(summary: dict, path: Path) -> None:
    """Understanding, generation and gap of each arm, mean ± std over seeds."""
    arms = list(summary)
    fig, ax = plt.subplots(figsize=(8, 3.4), dpi=110)
    x = np.arange(len(arms))
    for offset, key in zip((-0.25, 0, 0.25), ("understanding", "generation", "gap")):
        ax.bar(x + offset, [summary[a][key]["mean"] for a in arms], 0.25, yerr=[summary[a][key]["std"] for a in arms],
               capsize=3, label=key)
    ax.set_xticks(x, arms, rotation=15)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (mean ± std over seeds)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _markdown_table_to_html(lines: list[str]) -> str:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines if line.startswith("|")]
    rows = [r for r in rows if not all(set(c) <= {"-"} for c in r)]
    return _table(rows[0], [[html.escape(c) for c in r] for r in rows[1:]])


def build_ablation_report(folder: str | Path, gallery_size: int = 8) -> Path:
    """Write FOLDER/report/index.html for a `hermesflow ablate` folder."""
    folder = Path(folder)
    summary = _read_json(folder / "ablation.json")
    text = (folder / "ablation.md").read_text(encoding="utf-8").splitlines()
    split = text.index("Table 4 analog")
    out = folder / "report"
    (out / "gallery").mkdir(parents=True, exist_ok=True)
    _plot_arms(summary, out / "arms.png")
    geneval_means = [{"geneval": {c: summary[arm][f"geneval/{c}"]["mean"] for c in CATEGORIES + ("overall",)}} for arm in summary]
    _plot_geneval(list(summary), geneval_means, out / "geneval.png")
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
        j = _read_json(manifest_path)["self_judge"]
        judge_rows.append([html.escape(str(manifest_path.parent.relative_to(folder))), str(j.get("pairs", 0)),
                           f"{j.get('oracle_prefers_chosen', float('nan')):.3f}", f"{j.get('oracle_ties', float('nan')):.3f}",
                           f"{j.get('chosen_oracle_accuracy', float('nan')):.3f}", f"{j.get('rejected_oracle_accuracy', float('nan')):.3f}"])
    page = f"""<!doctype html><html lang=en><head><meta charset=utf-8><title>HermesFlow ablation: {html.escape(folder.name)}</title>
<style>{STYLE}</style></head><body>
<h1>HermesFlow ablation: {html.escape(str(folder))}</h1>
<p>{html.escape(text[0])}. Every arm starts from the same base model and the same curated round-0 data (unless its curation
column says it curates its own, from the same records and seed) and is evaluated on the same eval scenes with the same sampling
seed; the seed changes the training batch order and mask draws. Δ columns: the arm minus the base with a paired 95% interval
pooled over seeds. Claims about generation use the columns on prompts unseen in post-training.</p>
<h2>{ABLATION_SECTIONS[0]}</h2>
{_markdown_table_to_html(text[1:split])}
<h2>{ABLATION_SECTIONS[1]}</h2>
{_markdown_table_to_html(text[split:])}
<h2>{ABLATION_SECTIONS[2]}</h2>
<img class=plot src="arms.png" alt="understanding, generation and gap per arm">
<img class=plot src="geneval.png" alt="GenEval categories per arm (mean over seeds)">
<h2>{ABLATION_SECTIONS[3]}</h2>
<p>Seed 0 of each arm. The DPO terms are shown; the loss also holds the NLL terms on chosen samples when they are on.</p>
{'<img class=plot src="training.png" alt="DPO loss and reward margins over steps">' if curves else "<p>No training metrics found.</p>"}
<h2>{ABLATION_SECTIONS[4]}</h2>
{_table(["curation", "image pairs", "oracle prefers chosen", "oracle ties", "chosen oracle acc.", "rejected oracle acc."], judge_rows)}
<h2>{ABLATION_SECTIONS[5]}</h2>
{_gallery(folder, folder / "round-0", out, gallery_size, _base_model(folder / "ablate_config.yaml"))}
<h2>{ABLATION_SECTIONS[6]}</h2>
<pre>{html.escape((folder / "ablate_config.yaml").read_text())}</pre>
</body></html>
"""
    atomic_write_text(out / "index.html", page)
    return out / "index.html"
