"""Standard benchmark files: a model's images in GenEval's and DPG-Bench's layouts (ready for their
own evaluators), and POPE's answers with the metrics its script reports.

Formats, as read from the benchmarks' repositories:
- GenEval (djghosh13/geneval, README "Image generation" and evaluation/evaluate_images.py): the
  prompts are `evaluation_metadata.jsonl`, one JSON object per line with at least "prompt" (and
  "tag", "include", ...). Images go to `OUT/<index:05d>/samples/<k:04d>.png`, and the prompt's own
  line to `OUT/<index:05d>/metadata.jsonl` (written with json.dump, as their generator does; the
  evaluator json.load-s it, keeps only digit-named folders and `\\d+\\.png` files). `grid.png` is
  optional and not written.
- DPG-Bench (TencentQQGYLab/ELLA, dpg_bench/): prompts are `prompts/<item_id>.txt`; the evaluator
  reads `IMAGE_ROOT/<item_id>.png`, each a 2x2 grid of `--pic-num` images of `--resolution` pixels
  (crops (0,0), (R,0), (0,R), (R,R)), or a single image with --pic-num 1.
- POPE (RUCAIBox/POPE): questions are JSON Lines {"question_id", "image", "text", "label"}; answers
  are JSON Lines {"question_id", "question", "answer"} in the same order. Its evaluate.py reads an
  answer as "no" when its first sentence holds the word "No", "no" or "not", else "yes", and
  reports accuracy, precision, recall, F1 (positive = "yes") and the share of "yes" answers.

Every export is resumable: a prompt whose files exist is skipped, and each prompt's images are drawn
with a seed of its own (seed + index), so a resumed export writes what an uninterrupted one would.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from hermesflow.backbones import Backbone, GenerationConfig
from hermesflow.errors import DataError, UsageError
from hermesflow.io import atomic_write_bytes, atomic_write_text
from hermesflow.records import quote, to_rgb


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _jsonl(path: Path, what: str) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise UsageError(f"{what} {path} not found")
    rows, problems = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{path.name} line {number}: invalid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(row, dict):
            problems.append(f"{path.name} line {number}: expected a JSON object, got {quote(row)}")
            continue
        rows.append((number, row))
    if problems:
        raise DataError(problems)
    if not rows:
        raise DataError([f"{path}: no prompts"])
    return rows


def _check_prompts(backbone: Backbone, prompts: list[tuple[str, str]]) -> None:
    """Refuse, before drawing anything, prompts the model cannot read (`where`, prompt)."""
    problems = [f"{where}: {p}" for where, prompt in prompts for p in backbone.prompt_problems([prompt])]
    if problems:
        raise DataError([f"{len(problems)} prompts the {backbone.model_type} model cannot read (nothing was drawn)",
                         *problems[:20]])


def read_geneval_prompts(path: Path) -> list[dict]:
    rows = _jsonl(path, "GenEval metadata file")
    bad = [f"{path.name} line {n}: no \"prompt\" string" for n, row in rows
           if not isinstance(row.get("prompt"), str) or not row["prompt"].strip()]
    if bad:
        raise DataError(bad)
    return [row for _, row in rows]


def _draw(backbone: Backbone, prompt: str, n: int, gen: GenerationConfig, seed: int) -> np.ndarray:
    sampling = GenerationConfig(guidance=gen.guidance, temperature=gen.temperature, steps=gen.steps, top_k=gen.top_k, seed=seed)
    with backbone.sampling():
        return backbone.decode(backbone.generate([prompt], n, sampling))


def export_geneval(backbone: Backbone, metadata_file: Path, out: Path, n: int, gen: GenerationConfig) -> dict:
    """GenEval's folder layout (see the module docstring); returns counts."""
    metadatas = read_geneval_prompts(metadata_file)
    _check_prompts(backbone, [(f"{metadata_file.name} line {i + 1}", m["prompt"]) for i, m in enumerate(metadatas)])
    drawn = 0
    for index, metadata in enumerate(tqdm(metadatas, desc="geneval", unit="prompt", dynamic_ncols=True)):
        folder = out / f"{index:0>5}"
        samples = [folder / "samples" / f"{k:04d}.png" for k in range(n)]
        if all(s.exists() for s in samples) and (folder / "metadata.jsonl").exists():
            continue
        images = _draw(backbone, metadata["prompt"], n, gen, gen.seed + index)
        for path, image in zip(samples, images):
            atomic_write_bytes(path, _png(image))
        atomic_write_text(folder / "metadata.jsonl", json.dumps(metadata))  # their json.dump: one line
        drawn += 1
    return {"prompts": len(metadatas), "drawn": drawn, "images_per_prompt": n, "out": str(out),
            "truncated_prompts": sum(backbone.prompt_cut(m["prompt"]) > 0 for m in metadatas)}


def read_dpg_prompts(folder: Path) -> list[tuple[str, str]]:
    """(item_id, prompt) of each `<item_id>.txt` in DPG-Bench's prompts folder, sorted by id."""
    if not folder.is_dir():
        raise UsageError(f"DPG-Bench prompts folder {folder} not found (expected a folder of <item_id>.txt files)")
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise DataError([f"{folder}: no <item_id>.txt prompt files"])
    out, bad = [], []
    for f in files:
        text = " ".join(f.read_text(encoding="utf-8-sig").split())
        (out if text else bad).append((f.stem, text) if text else f"{f.name}: empty prompt")
    if bad:
        raise DataError(bad)
    return out


def dpg_grid(images: np.ndarray) -> np.ndarray:
    """One image, or four as DPG-Bench's 2x2 grid (row-major: the crops its evaluator takes in order)."""
    if len(images) == 1:
        return images[0]
    top = np.concatenate([images[0], images[1]], axis=1)
    bottom = np.concatenate([images[2], images[3]], axis=1)
    return np.concatenate([top, bottom], axis=0)


def export_dpg(backbone: Backbone, prompts_dir: Path, out: Path, n: int, gen: GenerationConfig) -> dict:
    """DPG-Bench's image layout (see the module docstring); returns counts and the evaluator's flags."""
    if n not in (1, 4):
        raise UsageError(f"DPG-Bench reads one image or a 2x2 grid of four per prompt; --n must be 1 or 4, got {n}")
    prompts = read_dpg_prompts(prompts_dir)
    _check_prompts(backbone, [(f"{item}.txt", prompt) for item, prompt in prompts])
    drawn = 0
    for index, (item, prompt) in enumerate(tqdm(prompts, desc="dpg-bench", unit="prompt", dynamic_ncols=True)):
        path = out / f"{item}.png"
        if path.exists():
            continue
        atomic_write_bytes(path, _png(dpg_grid(_draw(backbone, prompt, n, gen, gen.seed + index))))
        drawn += 1
    return {"prompts": len(prompts), "drawn": drawn, "out": str(out),
            "truncated_prompts": sum(backbone.prompt_cut(prompt) > 0 for _, prompt in prompts),
            "evaluate_with": f"--image-root-path {out} --resolution {backbone.image_size} --pic-num {n}"}


@dataclass(frozen=True)
class PopeQuestion:
    question_id: object
    image: str
    text: str
    label: str


def read_pope(path: Path) -> list[PopeQuestion]:
    rows = _jsonl(path, "POPE question file")
    out, bad = [], []
    for number, row in rows:
        missing = [k for k in ("image", "text", "label") if not isinstance(row.get(k), str) or not row[k].strip()]
        if missing:
            bad.append(f"{path.name} line {number}: missing {', '.join(missing)}")
            continue
        out.append(PopeQuestion(row.get("question_id", number), row["image"], row["text"], row["label"]))
    if bad:
        raise DataError(bad)
    return out


def pope_says_no(text: str) -> bool:
    """POPE's reading of an answer: "no" if its first sentence holds the word No, no or not."""
    first = text.split(".")[0].replace(",", "")
    return any(w in ("No", "no", "not") for w in first.split(" "))


def pope_metrics(answers: list[str], labels: list[str]) -> dict:
    """POPE's numbers (positive = "yes"). Precision with no "yes" answer, recall with no "yes" label, and
    F1 without both are undefined (None), not 0: a model that never says yes is not measured as imprecise."""
    pred = [0 if pope_says_no(a) else 1 for a in answers]
    truth = [0 if label == "no" else 1 for label in labels]
    tp = sum(p == 1 and t == 1 for p, t in zip(pred, truth))
    fp = sum(p == 1 and t == 0 for p, t in zip(pred, truth))
    tn = sum(p == 0 and t == 0 for p, t in zip(pred, truth))
    fn = sum(p == 0 and t == 1 for p, t in zip(pred, truth))
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = None if precision is None or recall is None else 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / len(pred), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": pred.count(1) / len(pred), "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": len(pred)}


def answer_pope(backbone: Backbone, questions_file: Path, images_dir: Path, out: Path, batch_size: int = 16,
                choice_score: str = "sum") -> dict:
    """The model's yes/no answers to POPE's questions (multiple choice over "yes" and "no", each option
    scored by `choice_score`), written in POPE's answer format to `out/answers.jsonl`, and its metrics
    (which say the choice score) to `out/metrics.json`."""
    questions = read_pope(questions_file)
    missing = sorted({q.image for q in questions if not (images_dir / q.image).is_file()})
    if missing:
        raise DataError([f"{questions_file.name}: {len(missing)} images not in {images_dir} (first: {missing[0]})"])
    _check_prompts(backbone, [(f"{questions_file.name} question {q.question_id}", q.text) for q in questions])
    answers: list[str] = []
    for start in tqdm(range(0, len(questions), batch_size), desc="pope", unit="batch", dynamic_ncols=True):
        batch = questions[start : start + batch_size]
        images = []
        for q in batch:
            with Image.open(images_dir / q.image) as img:
                images.append(to_rgb(img))
        with backbone.sampling():
            inputs = backbone.prepare_images(images)
            answers += backbone.answer(inputs, [q.text for q in batch], [["yes", "no"]] * len(batch), score=choice_score)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "answers.jsonl", "".join(
        # `text` beside `answer`: LLaVA-style evaluation scripts read the answer from `text`
        json.dumps({"question_id": q.question_id, "question": q.text, "answer": a, "text": a}) + "\n" for q, a in zip(questions, answers)))
    metrics = {**pope_metrics(answers, [q.label for q in questions]), "choice_score": choice_score}
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics

