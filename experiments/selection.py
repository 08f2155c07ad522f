"""How well does the model pick its own best image? Hard vs graded self-score, measured without training.

For world train records, the shipped base draws `n_images` images per caption with curation's
defaults (guidance, steps, temperature from `CurationOptions`), judges each itself (hard self-VQA
accuracy and the graded self-score, `judges.self_vqa`) and by the exact oracle. It then
compares the selectors curation can use:
- the oracle accuracy of the top-1 image under each ranking (first among equals, as curation);
- how many prompts yield a pair under each (round-0 rules with the 0.6 threshold on the hard
  accuracy, `selfplay.initial_pair`), and how often the oracle agrees with the kept pairs;
- for `rejected_from="perturbed"`: one image per record drawn for its perturbed caption, paired
  against the graded best (`selfplay.contrast_pair`), with the oracle's agreement.

    python experiments/selection.py --n 300 --out runs/selection

Writes `scores.jsonl` (every image's scores) and `selection.json` (the tables) to --out; the
reading is in experiments/selection.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from hermesflow.backbones import BASE_MODEL, GenerationConfig, load_backbone
from hermesflow.data import read_homologous
from hermesflow.io import atomic_write_json
from hermesflow.judges import self_vqa
from hermesflow.selfplay import Sample, contrast_pair, initial_pair
from hermesflow.settings import CurationOptions
from hermesflow.world.build import write_world
from hermesflow.world.judge import WORLD


def score_images(model: Path, data_path: Path, out: Path, batch: int, seed: int) -> list[dict]:
    """Every record's images judged by the model (hard, graded) and the oracle; one row per record."""
    backbone = load_backbone(model).eval()
    s = CurationOptions(guidance=backbone.default_guidance)
    records = read_homologous(data_path).records
    rows = []
    with torch.no_grad():
        for b in range(0, len(records), batch):
            part = records[b : b + batch]
            gen = GenerationConfig(guidance=s.guidance, temperature=s.image_temperature, steps=s.steps, seed=seed + b)
            tokens = backbone.generate([r.caption for r in part], s.n_images, gen).cpu()
            perturbed = [WORLD.perturbed(r.caption, f"{seed}/0/{r.id}") for r in part]
            other = backbone.generate(perturbed, 1, GenerationConfig(
                guidance=s.guidance, temperature=s.image_temperature, steps=s.steps, seed=seed + b + 7_919)).cpu()
            # each record's n samples, then its perturbed-caption image, all judged on the true questions
            all_tokens = torch.cat([torch.cat([tokens[i * s.n_images : (i + 1) * s.n_images], other[i : i + 1]])
                                    for i in range(len(part))])
            owners = [i for i in range(len(part)) for _ in range(s.n_images + 1)]
            qa = tuple(r.qa for r in part)
            judge = self_vqa(backbone, backbone.prepare_generated(all_tokens), qa, owners)
            truth = WORLD.accuracy(backbone.decode(all_tokens), qa, owners)
            k = s.n_images + 1
            for i, r in enumerate(part):
                rows.append({"id": r.id, "category": r.category, "caption": r.caption, "perturbed": perturbed[i],
                             "hard": judge.accuracy[i * k : (i + 1) * k].tolist(),
                             "graded": judge.graded[i * k : (i + 1) * k].tolist(),
                             "oracle": truth[i * k : (i + 1) * k].tolist()})
            print(f"{len(rows)}/{len(records)} records", flush=True)
    with open(out / "scores.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return rows


def first_argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda j: values[j])


def mean_ci(x: list[float]) -> list[float]:
    """Mean and 95% normal half-width."""
    a = np.asarray(x, dtype=np.float64)
    return [float(a.mean()), float(1.96 * a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else float("nan")]


def pair_stats(pairs: list[tuple[int, int]], oracle: list[list[float]]) -> dict:
    """How the oracle sees kept pairs (chosen index, rejected index per kept record)."""
    if not pairs:
        return {"pairs": 0}
    w = [oracle[r][c] for r, (c, _) in pairs]
    l = [oracle[r][j] for r, (_, j) in pairs]
    return {"pairs": len(pairs), "oracle_prefers_chosen": float(np.mean([a > b for a, b in zip(w, l)])),
            "oracle_ties": float(np.mean([a == b for a, b in zip(w, l)])),
            "oracle_prefers_rejected": float(np.mean([a < b for a, b in zip(w, l)])),
            "chosen_oracle": float(np.mean(w)), "rejected_oracle": float(np.mean(l))}


def analyse(rows: list[dict], n: int, threshold: float) -> dict:
    hard = [r["hard"][:n] for r in rows]
    graded = [r["graded"][:n] for r in rows]
    oracle = [r["oracle"] for r in rows]  # index n: the perturbed-caption image
    pick = {
        "hard": [first_argmax(h) for h in hard],
        "graded": [first_argmax(g) for g in graded],
        "hard_then_graded": [max(range(n), key=lambda j, h=h, g=g: (h[j], g[j])) for h, g in zip(hard, graded)],
    }
    top1 = {"random (mean of the samples)": mean_ci([float(np.mean(o[:n])) for o in oracle]),
            **{name: mean_ci([oracle[i][j] for i, j in enumerate(p)]) for name, p in pick.items()},
            "oracle best": mean_ci([max(o[:n]) for o in oracle])}
    diff = mean_ci([oracle[i][pick["graded"][i]] - oracle[i][pick["hard"][i]] for i in range(len(rows))])
    tied_top = float(np.mean([sum(x == max(h) for x in h) > 1 for h in hard]))

    kept: dict[str, list[tuple[int, tuple[int, int]]]] = {"hard": [], "graded": [], "perturbed (graded best)": []}
    reasons: dict[str, dict[str, int]] = {name: {} for name in kept}
    for i in range(len(rows)):
        h, g = hard[i], graded[i]
        choices = {
            "hard": initial_pair([Sample(j, h[j]) for j in range(n)], threshold),
            "graded": initial_pair([Sample(j, g[j], accuracy=h[j]) for j in range(n)], threshold),
            "perturbed (graded best)": contrast_pair([Sample(j, g[j], accuracy=h[j]) for j in range(n)],
                                                     Sample(n, rows[i]["graded"][n], accuracy=rows[i]["hard"][n]), threshold),
        }
        for name, (pair, reason) in choices.items():
            reasons[name][reason] = reasons[name].get(reason, 0) + 1
            if pair is not None:
                kept[name].append((i, (pair.chosen.key, pair.rejected.key)))
    pairs = {name: {**pair_stats(k, oracle), "reasons": reasons[name]} for name, k in kept.items()}

    by_category = {}
    for c in sorted({r["category"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["category"] == c]
        by_category[c] = {"prompts": len(idx), "random": float(np.mean([np.mean(oracle[i][:n]) for i in idx])),
                          **{name: float(np.mean([oracle[i][p[i]] for i in idx])) for name, p in pick.items()}}
    return {"records": len(rows), "images_per_record": n, "top1_oracle_accuracy": top1,
            "graded_minus_hard_top1": diff, "hard_ties_at_top": tied_top, "pairs": pairs, "by_category": by_category}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=BASE_MODEL)
    ap.add_argument("--n", type=int, default=300, help="world train records")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16, help="records per generation batch")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "data" / "data.jsonl"
    if not data.exists():
        write_world(args.out / "data", args.n, args.seed, "train")
    start = time.time()
    rows = score_images(args.model, data, args.out, args.batch, args.seed)
    s = CurationOptions(guidance=load_backbone(args.model).default_guidance)
    result = {"command": f"python experiments/selection.py --n {args.n} --seed {args.seed} --out {args.out}",
              "model": str(args.model), "guidance": s.guidance, "steps": s.steps, "temperature": s.image_temperature,
              "threshold": s.min_chosen_accuracy, "seconds": round(time.time() - start, 1),
              **analyse(rows, s.n_images, s.min_chosen_accuracy)}
    atomic_write_json(args.out / "selection.json", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
