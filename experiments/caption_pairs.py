"""What the caption pairs of curated rounds teach, judged by the shapes world's exact parser.

For each round folder's prefs.jsonl (the world data it was curated from given first), the caption
pairs whose chosen and rejected captions are true or false of their own image, and, of the pairs
whose rejected caption is true, those that differ from the chosen one only in the template's words
("a photo of" against "an image of") or the order of their words, and those whose rejected caption
says more (a colour or a relation the chosen one drops: "a square" chosen over "a blue square").

Run: `python experiments/caption_pairs.py RUN/data/data.jsonl RUN/round-0 RUN/default_r2/seed-0 ...`
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from hermesflow.world.judge import read_scene
from hermesflow.world.prompts import parse_prompt, satisfied_by


def truth(caption: str, scene) -> str:
    spec = parse_prompt(caption)
    return "unparsed" if spec is None else "true" if satisfied_by(scene, spec) else "false"


def words(caption: str) -> set[str]:
    return set(caption.lower().split()) - {"a", "an", "photo", "image", "of"}


def tally(data: Path, folder: Path) -> Counter:
    records = {r["id"]: r for r in map(json.loads, data.read_text(encoding="utf-8").splitlines())}
    counts: Counter = Counter()
    for line in (folder / "prefs.jsonl").read_text(encoding="utf-8").splitlines():
        pref = json.loads(line)
        und = pref.get("und") or {}
        if "chosen" not in und or "question" in und:  # no pair, or an answer pair (--und-pairs answers)
            continue
        scene = read_scene(records[pref["id"]]["scene"])
        chosen, rejected = truth(und["chosen"], scene), truth(und["rejected"], scene)
        counts["pairs"] += 1
        counts[f"chosen {chosen}"] += 1
        counts[f"rejected {rejected}"] += 1
        if rejected == "true" and words(und["chosen"]) == words(und["rejected"]):
            counts["rejected true, the same words"] += 1
        elif rejected == "true" and words(und["chosen"]) < words(und["rejected"]):
            counts["rejected true, saying more"] += 1
    return counts


def main() -> None:
    """Each argument after the data is a round folder, or several joined by commas (pooled: seeds)."""
    data = Path(sys.argv[1])
    for group in sys.argv[2:]:
        c = sum((tally(data, Path(f)) for f in group.split(",")), Counter())
        n = c["pairs"]
        print(f"{group}: {n} caption pairs; chosen false {c['chosen false']} ({c['chosen false'] / n:.0%}), "
              f"rejected true {c['rejected true']} ({c['rejected true'] / n:.0%}): the same words "
              f"{c['rejected true, the same words']}, saying more {c['rejected true, saying more']}; unparsed: "
              f"chosen {c['chosen unparsed']}, rejected {c['rejected unparsed']}")


if __name__ == "__main__":
    main()
