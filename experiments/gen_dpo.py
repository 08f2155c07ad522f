"""Why does naive generation DPO lower the generation score, and what fixes it? (issue 4, DESIGN §3)

From one base model and ONE curated round, train each recipe variant for the same number of steps
and evaluate it the same way; print a table of understanding and generation scores with 95%
intervals. Variants are `name:key=value,key=value` over TrainingOptions fields.

    python experiments/gen_dpo.py --out runs/gen-dpo --variants naive: rpo:sft_gen=1.0

Results and their reading are in experiments/gen_dpo.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hermesflow import config
from hermesflow.accel import partial_state
from hermesflow.backbones import BASE_MODEL, load_backbone
from hermesflow.data import read_homologous
from hermesflow.io import atomic_write_json
from hermesflow.recipes.run import curate_round, evaluate_into, summary_row, train_round
from hermesflow.scorers.similarity import SentenceSimilarity
from hermesflow.settings import RunConfig
from hermesflow.world.build import write_world


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, assignments = text.partition(":")
    fields = {k: f for k, (_, f, _) in config.leaves(RunConfig).items()}
    values = {}
    for item in filter(None, assignments.split(",")):
        key, _, raw = item.partition("=")
        kind = type(fields[key].default)
        values[key] = raw.lower() in ("1", "true", "yes") if kind is bool else kind(raw)
    return name, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=BASE_MODEL)
    parser.add_argument("--n-train", type=int, default=400)
    parser.add_argument("--eval-n", type=int, default=500)
    parser.add_argument("--variants", nargs="+", default=["naive:"])
    parser.add_argument("--common", default="", help="key=value,... applied to every variant")
    args = parser.parse_args()

    state = partial_state()
    _, common = parse_variant("common:" + args.common)
    base_cfg = config.build(RunConfig, out=args.out, model=args.model, n_train=args.n_train, eval_n=args.eval_n, **common)
    data_dir = args.out / "data"
    if not (data_dir / "data.jsonl").exists():
        write_world(data_dir, base_cfg.n_train, seed=base_cfg.seed + 1, split="train")
    data = read_homologous(data_dir)
    similarity = SentenceSimilarity()
    base = load_backbone(args.model).eval()
    rows = [summary_row("base", evaluate_into(base, args.out / "base-eval", base_cfg, similarity), None)]
    manifest = curate_round(base, similarity, data, args.out / "round", base_cfg, 0, None, state)
    print(json.dumps(manifest["counts"]), json.dumps(manifest["self_judge"]))
    for text in args.variants:
        name, values = parse_variant(text)
        cfg = config.replace(base_cfg, **values)
        tic = time.perf_counter()
        model = train_round(load_backbone(args.model), data, args.out / "round", cfg, state,
                            out=args.out / name).eval()
        row = summary_row(name, evaluate_into(model, args.out / name / "eval", cfg, similarity), manifest)
        row["settings"] = values
        row["seconds"] = round(time.perf_counter() - tic, 1)
        rows.append(row)
        atomic_write_json(args.out / "results.json", rows)
        print(f"{name:<16} und {row['understanding']:.3f} [{row['understanding_ci95'][0]:.3f},{row['understanding_ci95'][1]:.3f}]"
              f"  gen {row['generation']:.3f} [{row['generation_ci95'][0]:.3f},{row['generation_ci95'][1]:.3f}]"
              f"  geneval {row['geneval_overall']:.3f}  {values}", flush=True)


if __name__ == "__main__":
    main()
