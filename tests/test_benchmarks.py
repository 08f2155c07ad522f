"""Standard benchmark files: GenEval's folder layout, DPG-Bench's grids, POPE's answers and metrics."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hermesflow.benchmarks import dpg_grid, pope_metrics, pope_says_no
from hermesflow.cli import main

# GenEval's evaluation_metadata.jsonl lines (its own fields), with prompts the tiny model can read
GENEVAL = [
    {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a red circle"},
    {"tag": "two_object", "include": [{"class": "circle", "count": 1}, {"class": "square", "count": 1}],
     "prompt": "a circle and a square"},
    {"tag": "counting", "include": [{"class": "triangle", "count": 2}], "exclude": [{"class": "triangle", "count": 3}],
     "prompt": "two triangles"},
    {"tag": "colors", "include": [{"class": "square", "count": 1, "color": "blue"}], "prompt": "a blue square"},
    {"tag": "position", "include": [{"class": "circle", "count": 1}, {"class": "square", "count": 1, "position": ["above", 0]}],
     "prompt": "a square above a circle"},
    {"tag": "color_attr", "include": [{"class": "circle", "count": 1, "color": "green"}, {"class": "triangle", "count": 1, "color": "yellow"}],
     "prompt": "a green circle and a yellow triangle"},
]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from hermesflow.testbed.model import UnifiedConfig, UnifiedModel

    folder = tmp_path_factory.mktemp("model") / "tiny"
    UnifiedModel(UnifiedConfig(d_model=32, n_layers=1, n_heads=2)).save_pretrained(folder)
    return folder


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_geneval_export_has_exactly_genevals_layout_and_resumes(model, tmp_path, capsys):
    metadata = tmp_path / "evaluation_metadata.jsonl"
    metadata.write_text("".join(json.dumps(m) + "\n" for m in GENEVAL))
    out = tmp_path / "images"
    args = ["export", "geneval", "--model", str(model), "--prompts", str(metadata), "--out", str(out), "--steps", "2"]
    assert main(args) == 0
    # README: <IMAGE_FOLDER>/00000/metadata.jsonl, 00000/samples/0000.png ... 0003.png, 00001/...
    assert files_under(out) == {f"{i:05d}/metadata.jsonl" for i in range(6)} | {
        f"{i:05d}/samples/{k:04d}.png" for i in range(6) for k in range(4)}
    # read as evaluation/evaluate_images.py reads it: digit folders, json.load of metadata.jsonl, \d+\.png
    for sub in sorted(os.listdir(out)):
        assert sub.isdigit()
        with open(out / sub / "metadata.jsonl") as fp:
            assert json.load(fp) == GENEVAL[int(sub)]
        names = os.listdir(out / sub / "samples")
        assert all(re.match(r"\d+\.png", n) for n in names) and len(names) == 4
        for n in names:
            with Image.open(out / sub / "samples" / n) as img:
                assert img.mode == "RGB" and img.size == (32, 32)
    before = (out / "00003" / "samples" / "0002.png").read_bytes()
    (out / "00003" / "samples" / "0002.png").unlink()
    kept = (out / "00001" / "samples" / "0000.png").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    assert "drawn             1" in capsys.readouterr().out
    assert (out / "00003" / "samples" / "0002.png").read_bytes() == before  # the same seed for the same prompt
    assert (out / "00001" / "samples" / "0000.png").stat().st_mtime_ns == kept


def test_geneval_prompts_the_model_cannot_read_are_refused_before_drawing(model, tmp_path, capsys):
    metadata = tmp_path / "evaluation_metadata.jsonl"
    metadata.write_text(json.dumps(GENEVAL[0]) + "\n" + json.dumps({"tag": "single_object", "prompt": "a photo of a bench"}) + "\n")
    assert main(["export", "geneval", "--model", str(model), "--prompts", str(metadata), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "evaluation_metadata.jsonl line 2: text 'a photo of a bench' has words the built-in model does not know" in err
    assert not (tmp_path / "o").exists()


def test_dpg_export_writes_one_grid_per_prompt_file(model, tmp_path, capsys):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "partiprompts12.txt").write_text("a red circle above a blue square\n")
    (prompts / "coco7.txt").write_text("three triangles")
    out = tmp_path / "dpg"
    assert main(["export", "dpg", "--model", str(model), "--prompts", str(prompts), "--out", str(out), "--steps", "2"]) == 0
    assert files_under(out) == {"partiprompts12.png", "coco7.png"}
    with Image.open(out / "coco7.png") as img:
        assert img.size == (64, 64)  # 2x2 grid of 32 px images: --resolution 32 --pic-num 4
    assert f"--image-root-path {out} --resolution 32 --pic-num 4" in capsys.readouterr().out


def test_dpg_grid_puts_images_where_the_evaluator_crops_them():
    images = np.stack([np.full((8, 8, 3), k, np.uint8) for k in range(4)])
    grid, r = dpg_grid(images), 8
    crops = [(0, 0, r, r), (r, 0, 2 * r, r), (0, r, r, 2 * r), (r, r, 2 * r, 2 * r)]  # compute_dpg_bench.py's order
    for k, (left, top, right, bottom) in enumerate(crops):
        assert np.all(grid[top:bottom, left:right] == k)


def test_pope_metrics_match_a_hand_computation():
    answers = ["yes", "No, there is not.", "Yes, there is a dog.", "no", "There is not a cat.", "yes", "no. Yes", "Yes"]
    labels = ["yes", "yes", "no", "no", "no", "yes", "yes", "no"]
    # read as POPE does: no, no(no), yes, no, no(not), yes, no (first sentence "no"), yes
    assert [pope_says_no(a) for a in answers] == [False, True, False, True, True, False, True, False]
    # TP: 1, 6 -> 2; FP: 3, 8 -> 2; TN: 4, 5 -> 2; FN: 2, 7 -> 2
    m = pope_metrics(answers, labels)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 2, 2, 2)
    assert m["accuracy"] == 4 / 8 and m["precision"] == 2 / 4 and m["recall"] == 2 / 4
    assert m["f1"] == pytest.approx(0.5) and m["yes_ratio"] == 4 / 8
    skewed = pope_metrics(["yes", "yes", "yes", "no"], ["yes", "no", "yes", "yes"])
    assert skewed["precision"] == 2 / 3 and skewed["recall"] == 2 / 3 and skewed["accuracy"] == 0.5
    never_yes = pope_metrics(["no", "no"], ["yes", "no"])  # no "yes" answer: precision and F1 undefined, not 0
    assert never_yes["precision"] is None and never_yes["f1"] is None and never_yes["recall"] == 0.0 and never_yes["accuracy"] == 0.5
    assert skewed["f1"] == pytest.approx(2 / 3) and skewed["yes_ratio"] == 0.75


def test_answer_pope_writes_popes_answer_format(model, tmp_path, capsys):
    images = tmp_path / "val2014"
    images.mkdir()
    Image.new("RGB", (48, 40), (200, 30, 30)).save(images / "COCO_val2014_000000000001.jpg")
    Image.new("L", (32, 32), 80).save(images / "COCO_val2014_000000000002.png")
    rows = [{"question_id": 1, "image": "COCO_val2014_000000000001.jpg", "text": "is there a circle?", "label": "yes"},
            {"question_id": 2, "image": "COCO_val2014_000000000001.jpg", "text": "is there a square?", "label": "no"},
            {"question_id": 3, "image": "COCO_val2014_000000000002.png", "text": "is there a triangle?", "label": "no"}]
    questions = tmp_path / "coco_pope_random.json"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "pope"
    assert main(["answer", "pope", "--model", str(model), "--questions", str(questions), "--images", str(images),
                 "--out", str(out)]) == 0
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [1, 2, 3] and [a["question"] for a in answers] == [r["text"] for r in rows]
    assert all(a["text"] == a["answer"] for a in answers)  # LLaVA-style scripts read `text`
    assert all(a["answer"] in ("yes", "no") for a in answers)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == {**pope_metrics([a["answer"] for a in answers], [r["label"] for r in rows]), "choice_score": "sum"}
    assert "yes_ratio" in capsys.readouterr().out
    assert main(["answer", "pope", "--model", str(model), "--questions", str(questions), "--images", str(images),
                 "--out", str(out), "--choice-score", "mean"]) == 0  # each option's mean per token; the metrics say so
    assert json.loads((out / "metrics.json").read_text())["choice_score"] == "mean"
