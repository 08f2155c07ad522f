"""A static HTML report of a run folder (`hermesflow report RUN_DIR`), for a person to read.

One page, no server and no network: tables of the scores per round (the paper's Table 4 analog
and GenEval categories), plots (scores and gap per round, GenEval bars, loss and reward margins
over training steps), the self-judge agreement of each round, a gallery of preference pairs with
their scores, and the resolved config. Images are PNG files beside the page.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from hermesflow.backbones import BASE_MODEL, load_backbone  # noqa: E402
from hermesflow.data import read_homologous  # noqa: E402
from hermesflow.errors import UsageError  # noqa: E402
from hermesflow.io import atomic_write_text  # noqa: E402
from hermesflow.world.prompts import CATEGORIES  # noqa: E402
from hermesflow.world.render import upscale  # noqa: E402

SECTIONS = ("Scores per round", "GenEval categories", "Training", "Self-judge agreement", "Preference pairs", "Config")


def _rounds(run: Path) -> list[tuple[str, Path]]:
    """(name, folder) of the base and of each finished round, in order."""
    found = [("base", run / "base")] if (run / "base" / "eval" / "metrics.json").exists() else []
    numbered = sorted((int(p.name.split("-")[1]), p) for p in run.glob("round-*") if p.name.split("-")[1].isdigit())
    found += [(str(i), p) for i, p in numbered if (p / "eval" / "metrics.json").exists()]
    if not found:
        raise UsageError(f"{run}: no evaluated round found (expected base/eval/metrics.json or round-N/eval/metrics.json)")
    return found


def _read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _table(head: list[str], rows: list[list[str]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _ci(m: dict) -> str:
    return f"{m['mean']:.3f} <span class=ci>[{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]</span>"


def _plot_scores(names: list[str], metrics: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
    x = np.arange(len(names))
    for key, label in (("understanding_score", "understanding"), ("generation_score", "generation"), ("gap", "gap")):
        means = [m[key]["mean"] for m in metrics]
        low = [m[key]["mean"] - m[key]["ci95"][0] for m in metrics]
        high = [m[key]["ci95"][1] - m[key]["mean"] for m in metrics]
        ax.errorbar(x, means, yerr=[low, high], marker="o", capsize=4, label=label)
    ax.set_xticks(x, names)
    ax.set_xlabel("round")
    ax.set_ylabel("score (95% interval)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_geneval(names: list[str], metrics: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.4), dpi=110)
    cats = [c for c in CATEGORIES + ("overall",) if any(c in m["geneval"] for m in metrics)]
    width = 0.8 / len(names)
    for i, (name, m) in enumerate(zip(names, metrics)):
        ax.bar(np.arange(len(cats)) + i * width, [m["geneval"].get(c, 0) for c in cats], width, label=name)
    ax.set_xticks(np.arange(len(cats)) + 0.4 - width / 2, [c.replace("_", " ") for c in cats], rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (oracle)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_training(curves: dict[str, list[dict]], path: Path) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2), dpi=110)
    for name, rows in curves.items():
        steps = [r["step"] for r in rows]
        for branch, style in (("und", "-"), ("gen", "--")):  # a one-branch loss logs only its branch
            if rows and f"loss/{branch}" in rows[0]:
                a.plot(steps, [r[f"loss/{branch}"] for r in rows], linestyle=style, label=f"{branch}, {name}")
                b.plot(steps, [r[f"{branch}/rewards/margins"] for r in rows], linestyle=style, label=f"{branch}, {name}")
    a.set_title("DPO loss per branch, −log σ(Δ)")
    b.set_title("rewards/margins per branch")
    for ax in (a, b):
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
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


def _gallery(run: Path, round_dir: Path, out: Path, n: int, model: Path) -> str:
    """Cards of the first `n` kept homologous tuples of a round, with every score."""
    rows = [json.loads(line) for line in (round_dir / "prefs.jsonl").read_text(encoding="utf-8").splitlines()]
    kept = [r for r in rows if "chosen" in r["und"] and "chosen" in r["gen"]][:n]
    data = run / "data" if (run / "data" / "data.jsonl").exists() else Path(_read_json(round_dir / "manifest.json")["data"])
    records = {r.id: r for r in read_homologous(data).records}
    backbone = load_backbone(model)
    cards = []
    for i, row in enumerate(kept):
        names = {}
        for side, image in (("true", records[row["id"]].load_image()),
                            ("chosen", backbone.decode(torch.tensor([row["gen"]["chosen"]]))[0]),
                            ("rejected", backbone.decode(torch.tensor([row["gen"]["rejected"]]))[0])):
            names[side] = f"gallery/{round_dir.name}-{i}-{side}.png"
            _save_image(image, out / names[side])
        u, g = row["und"], row["gen"]
        cards.append(f"""<div class=card>
<div class=id>{html.escape(row['id'])}</div>
<figure><img src="{names['true']}" alt="true image"><figcaption>true image<br><b>{html.escape(row['caption'])}</b></figcaption></figure>
<figure><img src="{names['chosen']}" alt="chosen image"><figcaption>chosen image<br>self-VQA {g['chosen_score']:.2f} · oracle {g['chosen_oracle']:.2f}</figcaption></figure>
<figure><img src="{names['rejected']}" alt="rejected image"><figcaption>rejected image<br>self-VQA {g['rejected_score']:.2f} · oracle {g['rejected_oracle']:.2f}</figcaption></figure>
<div class=caps><div class=win>chosen caption ({u['chosen_score']:.2f}): {html.escape(u['chosen'])}</div>
<div class=lose>rejected caption ({u['rejected_score']:.2f}): {html.escape(u['rejected'])}</div></div>
</div>""")
    return "\n".join(cards) or "<p>No kept pairs in this round.</p>"


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.ci{color:#777;font-size:.85em}
.card{border:1px solid #ddd;border-radius:6px;padding:10px;margin:10px 0;display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.card .id{width:100%;color:#888;font-size:.8em}figure{margin:0;text-align:center;font-size:.85em;width:150px}
figure img{width:128px;height:128px;image-rendering:pixelated;border:1px solid #999}.caps{flex:1;min-width:260px;font-size:.9em}
.win{color:#15691f;margin-bottom:6px}.lose{color:#9b1c1c}pre{background:#f6f6f6;padding:10px;overflow:auto}
img.plot{max-width:100%}"""


def build_report(run: str | Path, gallery_size: int = 8) -> Path:
    """Write RUN/report/index.html and its images; returns the page's path."""
    run = Path(run)
    rounds = _rounds(run)
    out = run / "report"
    (out / "gallery").mkdir(parents=True, exist_ok=True)
    names = [name for name, _ in rounds]
    metrics = [_read_json(folder / "eval" / "metrics.json") for _, folder in rounds]
    manifests = {name: _read_json(folder / "manifest.json") for name, folder in rounds if (folder / "manifest.json").exists()}

    score_rows = []
    for name, m in zip(names, metrics):
        kept = manifests.get(name, {}).get("counts", {}).get("both_kept")
        score_rows.append([name, _ci(m["understanding_score"]), _ci(m["generation_score"]), _ci(m["gap"]),
                           f"{m['understanding_prior']:.3f}", f"{m['geneval'].get('overall', float('nan')):.3f}",
                           _ci(m["caption_similarity"]) if "caption_similarity" in m else "–", "–" if kept is None else str(kept)])
    _plot_scores(names, metrics, out / "scores.png")
    _plot_geneval(names, metrics, out / "geneval.png")
    cats = [c for c in CATEGORIES + ("overall",) if c in metrics[0]["geneval"]]
    geneval_rows = [[name] + [f"{m['geneval'].get(c, float('nan')):.3f}" for c in cats] for name, m in zip(names, metrics)]

    curves = {}
    for name, folder in rounds:
        path = folder / "train" / "metrics.jsonl"
        if path.exists():
            curves[f"round {name}"] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    training = "<p>No training metrics found.</p>"
    if curves:
        _plot_training(curves, out / "training.png")
        training = '<img class=plot src="training.png" alt="loss and reward margins over steps">'

    judge_rows = []
    for name, manifest in manifests.items():
        j, c = manifest["self_judge"], manifest["counts"]
        judge_rows.append([name, str(j.get("pairs", 0)), f"{j.get('oracle_prefers_chosen', float('nan')):.3f}",
                           f"{j.get('oracle_ties', float('nan')):.3f}", f"{j.get('chosen_oracle_accuracy', float('nan')):.3f}",
                           f"{j.get('rejected_oracle_accuracy', float('nan')):.3f}",
                           html.escape(json.dumps(c.get("gen_dropped", {}))), html.escape(json.dumps(c.get("und_dropped", {})))])
    last = next((folder for name, folder in reversed(rounds) if name in manifests), None)
    gallery = _gallery(run, last, out, gallery_size, _base_model(run / "run_config.yaml")) if last is not None else "<p>No curated round yet.</p>"
    config_path = run / "run_config.yaml"
    config_text = config_path.read_text() if config_path.exists() else "(no run_config.yaml)"

    page = f"""<!doctype html><html lang=en><head><meta charset=utf-8><title>HermesFlow report: {html.escape(run.name)}</title>
<style>{STYLE}</style></head><body>
<h1>HermesFlow report: {html.escape(str(run))}</h1>
<p>Scores are judged by the shapes world's exact oracle (in place of the paper's GPT-4o and GenEval's detector);
intervals are 95% over examples. Understanding: the model's accuracy on questions about real images; generation: the
oracle's accuracy on the same questions about the model's images for the same captions (paper Table 4).</p>
<h2 id=scores>{SECTIONS[0]}</h2>
{_table(["round", "understanding", "generation", "gap", "prior (blank image)", "GenEval overall", "caption similarity", "tuples kept"], score_rows)}
<img class=plot src="scores.png" alt="scores and gap per round">
<h2 id=geneval>{SECTIONS[1]}</h2>
{_table(["round"] + [c.replace("_", " ") for c in cats], geneval_rows)}
<img class=plot src="geneval.png" alt="GenEval categories per round">
<h2 id=training>{SECTIONS[2]}</h2>
{training}
<h2 id=judge>{SECTIONS[3]}</h2>
<p>For the image pairs the model kept, how often the exact oracle agrees with the model's own ranking. This measures the
paper's central assumption, that understanding can judge generation.</p>
{_table(["round", "image pairs", "oracle prefers chosen", "oracle ties", "chosen oracle acc.", "rejected oracle acc.", "image pairs dropped", "caption pairs dropped"], judge_rows)}
<h2 id=pairs>{SECTIONS[4]}</h2>
<p>Homologous tuples of round {html.escape(last.name if last else "-")}: the true image and caption; the chosen and rejected
images the model drew for the caption, with the share of questions the model itself (self-VQA) and the oracle answer
correctly about them; the chosen and rejected captions the model wrote, with their sentence similarity to the truth.</p>
{gallery}
<h2 id=config>{SECTIONS[5]}</h2>
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
    for manifest_path in [folder / "round-0" / "manifest.json"] + sorted(folder.glob("sum_r*/seed-*/manifest.json")):
        j = _read_json(manifest_path)["self_judge"]
        judge_rows.append([html.escape(str(manifest_path.parent.relative_to(folder))), str(j.get("pairs", 0)),
                           f"{j.get('oracle_prefers_chosen', float('nan')):.3f}", f"{j.get('oracle_ties', float('nan')):.3f}",
                           f"{j.get('chosen_oracle_accuracy', float('nan')):.3f}", f"{j.get('rejected_oracle_accuracy', float('nan')):.3f}"])
    page = f"""<!doctype html><html lang=en><head><meta charset=utf-8><title>HermesFlow ablation: {html.escape(folder.name)}</title>
<style>{STYLE}</style></head><body>
<h1>HermesFlow ablation: {html.escape(str(folder))}</h1>
<p>{html.escape(text[0])}. Every arm starts from the same base model and the same curated round-0 data and is evaluated on the
same eval scenes with the same sampling seed; the seed changes the training batch order and mask draws.</p>
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
