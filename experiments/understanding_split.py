"""Where an arm's understanding changes: the share of questions answered right, base against arm, by
scene category and by whether the scene's prompt is held out of post-training (unseen), seeds
pooled; and by question type (the evaluation's own `understanding_by_type`, averaged over seeds).

Run: `python experiments/understanding_split.py runs/recipes-test default default_r3 dpop_gen`
(an `ablate` output folder, then its rows; each row's `seed-*/eval/metrics.json` against
`base/eval/metrics.json`, whose items they share).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def per_example(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))["per_example"]


def main() -> None:
    out, rows = Path(sys.argv[1]), sys.argv[2:]
    base_metrics = json.loads((out / "base" / "eval" / "metrics.json").read_text(encoding="utf-8"))
    base = base_metrics["per_example"]
    for row in rows:
        paths = sorted((out / row).glob("seed-*/eval/metrics.json"))
        cells: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])  # base right, row right, questions
        for path in paths:
            mine = per_example(path)
            if mine["ids"] != base["ids"]:
                raise SystemExit(f"{path}: not the base evaluation's items")
            for i, category in enumerate(base["category"]):
                cell = cells["unseen" if base["unseen"][i] else "seen", category]
                cell[0] += base["understanding_correct"][i]
                cell[1] += mine["understanding_correct"][i]
                cell[2] += base["questions"][i]
        print(f"{row} ({len(paths)} seeds): share of questions right, base -> {row}")
        for (split, category), (b, a, q) in sorted(cells.items()):
            print(f"  {split:<6} {category:<14} {q:>5} questions  {b / q:.3f} -> {a / q:.3f}  ({(a - b) / q:+.3f})")
        types = base_metrics["understanding_by_type"]
        mean = {t: sum(json.loads(p.read_text(encoding="utf-8"))["understanding_by_type"][t] for p in paths) / len(paths)
                for t in types}
        print("  by question type: " + ", ".join(f"{t} {types[t]:.3f} -> {mean[t]:.3f} ({mean[t] - types[t]:+.3f})"
                                                for t in types))


if __name__ == "__main__":
    main()
