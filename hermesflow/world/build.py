"""Writing a split of the shapes world to disk as homologous data (`data.jsonl` + PNG images)."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path

from PIL import Image

from hermesflow.errors import UsageError
from hermesflow.records import QA, EvalItem
from hermesflow.world.holdout import is_held_out
from hermesflow.world.prompts import CATEGORIES, phrase, sample_scene
from hermesflow.world.questions import questions_for
from hermesflow.world.render import at_size, render
from hermesflow.world.scenes import DRAWS, Scene, draw_of, split_of

SPLITS = ("train", "eval")
PROMPTS = ("all", "seen")


def world_records(n: int, seed: int, split: str, eval_fraction: float = 0.2, image_size: int = 32, prompts: str = "all",
                  draw: str | None = None):
    """Yield (record, image) for `n` scenes of a split, drawn at `image_size` pixels (a multiple of
    32); categories cycle so each gets n/6.

    Deterministic from (seed, split, prompts, draw); a scene belongs to the split its content hashes
    to, so train and eval never share a scene whatever seeds they were made with. `prompts="seen"`
    leaves out the prompts held out for generation (`world.holdout`): post-training data is drawn that
    way. `draw` ("selection" or "test", eval only) keeps the scenes of that half of the eval split
    (`scenes.draw_of`), from a random stream of its own: the two draws share no scene.
    """
    if split not in SPLITS:
        raise UsageError(f"--split must be one of {SPLITS}, got {split!r}")
    if prompts not in PROMPTS:
        raise UsageError(f"prompts must be one of {PROMPTS}, got {prompts!r}")
    if draw is not None and (split != "eval" or draw not in DRAWS):
        raise UsageError(f"a draw ({' or '.join(DRAWS)}) is a half of the eval split, got {draw!r} of {split!r}")
    rng = random.Random(f"hermesflow-world/{seed}/{split}" + (f"/{draw}" if draw else ""))
    for i in range(n):
        category = CATEGORIES[i % len(CATEGORIES)]
        scene, spec = sample_scene(category, rng)
        while (split_of(scene, eval_fraction) != split or (prompts == "seen" and is_held_out(spec))
               or (draw is not None and draw_of(scene) != draw)):
            scene, spec = sample_scene(category, rng)
        record_id = f"{draw or split}-{seed}-{i:06d}"
        record = {
            "id": record_id,
            "image": f"images/{record_id}.png",
            "caption": phrase(spec, rng.randrange(3)),
            "category": category,
            "qa": [qa.to_json() for qa in questions_for(spec, scene, rng)],
            "scene": scene.to_json(),
        }
        yield record, at_size(render(scene), image_size)


def write_world(out: Path, n: int, seed: int, split: str, eval_fraction: float = 0.2, image_size: int = 32,
                prompts: str = "all") -> Path:
    """Write the split to `out` (which must not exist or be empty), atomically: everything is
    built in a temporary sibling folder and renamed into place at the end. `prompts` as in `world_records`."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"output folder {out} is not empty; choose a new --out")
    if n < 1:
        raise UsageError(f"--n must be at least 1, got {n}")
    if image_size < 32 or image_size % 32:
        raise UsageError(f"--image-size must be a multiple of 32, got {image_size}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "images").mkdir()
        with open(tmp / "data.jsonl", "w", encoding="utf-8") as f:
            for record, image in world_records(n, seed, split, eval_fraction, image_size, prompts):
                Image.fromarray(image).save(tmp / record["image"])
                f.write(json.dumps(record) + "\n")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "data.jsonl"


def world_eval_items(n: int, seed: int, image_size: int = 32, draw: str = "test") -> list[EvalItem]:
    """`n` scenes of one draw of the world's eval split ("selection" to compare and choose, "test" to
    report), at `image_size` (rounded down to a multiple of 32, at least 32)."""
    size = max(32, image_size // 32 * 32)
    return [
        EvalItem(r["id"], image, r["caption"], tuple(QA(q["question"], tuple(q["choices"]), q["answer"], q["type"]) for q in r["qa"]),
                 Scene.from_json(r["scene"]))
        for r, image in world_records(n, seed, "eval", image_size=size, draw=draw)
    ]


def draw_seed(seed: int, draw: str) -> int:
    """The sampling seed of an evaluation on `draw`: the test draw samples with `seed`, the selection
    draw with seeds of its own, so the two share no sampling seed either."""
    return seed if draw == "test" else seed + 1_000_003
