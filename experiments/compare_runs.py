"""Whether two run folders hold the same results: a check that a change to the code changed no number.

    python experiments/compare_runs.py runs/demo-before runs/demo-after

Compares, for the base and every round: `metrics.json` (every field but `settings` and the judge's
API cost), `manifest.json`'s counts and self-judge block, `prefs.jsonl` line for line and the training
`metrics.jsonl`. Paths, timings and provenance are not results and are not compared. Prints each
difference (at most a few per file) and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SKIPPED_METRICS = ("settings", "judge_api")


def differences(a, b, where: str = "") -> list[str]:
    """`where: a != b` for each leaf that differs (dict keys in any order; lists item by item)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}.{k}: only in {'the first' if k in a else 'the second'}" for k in sorted(set(a) ^ set(b), key=str)]
        for k in sorted(set(a) & set(b), key=str):
            out += differences(a[k], b[k], f"{where}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {str(a)[:80]} != {str(b)[:80]}"]


def lines(path: Path) -> list:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def compare(first: Path, second: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    stages = sorted(p.relative_to(first) for p in first.glob("*/eval/metrics.json"))
    for metrics in stages:
        a, b = (json.loads((run / metrics).read_text()) for run in (first, second))
        found[str(metrics)] = differences({k: v for k, v in a.items() if k not in SKIPPED_METRICS},
                                          {k: v for k, v in b.items() if k not in SKIPPED_METRICS})
    for manifest in sorted(p.relative_to(first) for p in first.glob("round-*/manifest.json")):
        a, b = (json.loads((run / manifest).read_text()) for run in (first, second))
        found[str(manifest)] = differences({k: a.get(k) for k in ("counts", "self_curated")},
                                           {k: b.get(k) for k in ("counts", "self_curated")})
        found[f"{manifest} self_judge"] = differences(a.get("self_judge"), b.get("self_judge"))
    for name in ("prefs.jsonl", "train/metrics.jsonl"):
        for path in sorted(p.relative_to(first) for p in first.glob(f"round-*/{name}")):
            found[str(path)] = differences(lines(first / path), lines(second / path))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args()
    found = compare(args.first, args.second)
    for what, diffs in found.items():
        print(f"{what}: {'same' if not diffs else f'{len(diffs)} differences'}")
        for d in diffs[:5]:
            print(f"    {d}")
    sys.exit(1 if any(found.values()) else 0)


if __name__ == "__main__":
    main()
