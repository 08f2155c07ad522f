"""How fast the shapes world makes and judges images, on one CPU core.

Prints (a) scenes drawn and rendered per second, (b) images parsed per second by the oracle
(`parse_batch` on batches), (c) images fully judged per second (parse, the prompt's verdict and the
answer to every question of the record), and whether judging meets the goal of 2000 images/s.

One core: OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and MKL_NUM_THREADS are set to 1 at the top of this
script, before numpy is imported (afterwards they would have no effect). No torch is imported.

    python benchmarks/bench_world.py [--n 5000] [--batch 500] [--repeats 3]
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402

from hermesflow.world import (  # noqa: E402
    CATEGORIES,
    answer_on_scene,
    parse_batch,
    questions_for,
    render,
    sample_scene,
    satisfied_by,
)

GOAL = 2000  # images judged per second on one core


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` runs, in seconds: the least disturbed by anything else on the machine."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def draw_and_render(n: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        scene, spec = sample_scene(CATEGORIES[i % len(CATEGORIES)], rng)
        out.append((scene, spec, render(scene)))
    return out


def parse_all(images: np.ndarray, batch: int) -> list:
    return [scene for i in range(0, len(images), batch) for scene in parse_batch(images[i : i + batch])]


def judge_all(images: np.ndarray, batch: int, records: list) -> int:
    """Parse every image, then give the prompt's verdict and answer every question; the number of
    images whose verdict and answers are all right (all of them, on rendered scenes)."""
    correct = 0
    for scene, (spec, qas) in zip(parse_all(images, batch), records):
        ok = satisfied_by(scene, spec) and all(answer_on_scene(q.question, scene) == q.answer for q in qas)
        correct += ok
    return correct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="number of scenes (default: 5000)")
    parser.add_argument("--batch", type=int, default=500, help="images per parse_batch call (default: 500)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each step; the best counts (default: 3)")
    args = parser.parse_args()
    n = args.n

    rendered = draw_and_render(n)  # also warms up imports and caches before timing
    t_render = best_time(lambda: draw_and_render(n), args.repeats)

    rng = random.Random(1)
    records = [(spec, questions_for(spec, scene, rng)) for scene, spec, _ in rendered]
    images = np.stack([image for _, _, image in rendered])  # (n, 32, 32, 3) uint8
    n_questions = sum(len(qas) for _, qas in records)

    t_parse = best_time(lambda: parse_all(images, args.batch), args.repeats)
    t_judge = best_time(lambda: judge_all(images, args.batch, records), args.repeats)
    correct = judge_all(images, args.batch, records)

    judged = n / t_judge
    print(f"scenes: {n}, batch: {args.batch}, questions: {n_questions}, one core, best of {args.repeats}")
    print(f"(a) rendered (sample_scene + render)       {n / t_render:10.0f} scenes/s")
    print(f"(b) parsed (parse_batch)                   {n / t_parse:10.0f} images/s")
    print(f"(c) judged (parse + verdict + all answers) {judged:10.0f} images/s")
    print(f"oracle right on {correct}/{n} rendered images")
    print(f"goal: >= {GOAL} images/s judged on one core: {'PASS' if judged >= GOAL else 'MISS'} ({judged:.0f}/s)")


if __name__ == "__main__":
    main()
