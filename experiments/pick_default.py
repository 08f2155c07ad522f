"""The rule of experiments/recipes.md, applied to an ablation's `ablation.json`: which arm, if any,
replaces the default recipe. Run on the selection draw's study:

    python experiments/pick_default.py runs/recipes/ablation.json

Prints every arm's eligibility (both understanding intervals' lower ends above -0.01) and its
generation-on-unseen-prompts difference from the control, then the verdict. The rule was written
before the study ran; this script only reads it out, so that anyone can check the choice.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

FLOOR = -0.01  # rule 2: the lowest an understanding interval's lower end may reach
TIE = 0.005  # rule 3: arms this close in generation on unseen prompts count as equal


def interval(change: dict) -> str:
    low, high = change["ci95"]
    return f"{change['mean']:+.3f} [{low:+.3f}, {high:+.3f}]"


def eligible(row: dict) -> bool:
    """Rule 2: it may not buy generation with understanding, overall or on unseen-prompt scenes."""
    return all(row["change"][key]["ci95"][0] > FLOOR for key in ("understanding", "understanding_unseen"))


def pick(rows: dict) -> tuple[str | None, list[str]]:
    """(the winning arm or None when the control stays, one line per arm). Rule 3: the eligible arm
    with the largest gain on unseen prompts wins if its interval against the control excludes zero in
    its favour; within TIE of each other, the arm that changes fewer settings wins."""
    lines, candidates = [], []
    for name, row in rows.items():
        if name == "base" or "change" not in row:
            continue
        against = row.get("vs_control", {}).get("generation_unseen")
        ok = eligible(row)
        lines.append(f"{name:<16} understanding {interval(row['change']['understanding'])}, unseen "
                     f"{interval(row['change']['understanding_unseen'])}: {'eligible' if ok else 'not eligible'}; "
                     f"generation unseen {interval(row['change']['generation_unseen'])}"
                     + (f", vs {row['vs_control']['control']} {interval(against)}" if against else " (the control)"))
        if ok and against:
            candidates.append((row["change"]["generation_unseen"]["mean"], -len(row.get("settings", {})), name, against))
    if not candidates:
        return None, lines
    best = max(candidates)
    near = [c for c in candidates if best[0] - c[0] <= TIE]
    gain, _, name, against = max(near, key=lambda c: c[1])  # fewer changed settings first
    return (name if against["ci95"][0] > 0 else None), lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ablation", type=Path, help="an ablation's ablation.json")
    rows = json.loads(parser.parse_args().ablation.read_text())
    winner, lines = pick(rows)
    print("\n".join(lines))
    control = next((row["vs_control"]["control"] for row in rows.values() if "vs_control" in row), None)
    if control in rows and not eligible(rows[control]):
        print(f"note: the control {control} is itself not eligible by rule 2; the rule keeps it all the same")
    print(f"verdict: {winner} replaces {control}" if winner else f"verdict: {control} stays (no eligible arm beats it on unseen prompts)")


if __name__ == "__main__":
    main()
