"""A researcher's data end to end: JPEG and PNG images of mixed sizes and modes with captions and no
questions get questions from an LLM endpoint (a stub on 127.0.0.1), are curated by a tiny Janus,
and evaluation with a VLM judge says which judge produced the generation score."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from openai_stub import StubEndpoint
from test_sources import mixed_images
from tiny_models import make_tiny_janus

from hermesflow.cli import main

# world words only: the tiny Janus's tokenizer knows nothing else
CAPTIONS = ["a red circle", "two blue squares", "a green triangle above a yellow circle", "a purple square",
            "three orange triangles", "a blue circle"]


@pytest.fixture
def stub():
    endpoint = StubEndpoint()
    yield endpoint
    endpoint.close()


def write_dataset(folder: Path) -> Path:
    folder.mkdir(parents=True)
    lines = []
    for i, ((name, img), caption) in enumerate(zip(mixed_images(), CAPTIONS)):
        img.save(folder / name)
        lines.append(json.dumps({"file_name": name, "text": caption}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")  # an imagefolder, as `datasets` writes one
    return folder


def test_mixed_images_without_questions_get_questions_and_are_curated_by_tiny_janus(stub, tmp_path, capsys):
    data = write_dataset(tmp_path / "photos")
    questions = tmp_path / "questions.json"
    model = make_tiny_janus(tmp_path / "janus")
    common = ["--data", str(data), "--caption-column", "text"]
    assert main(["questions", *common, "--out", str(questions), "--endpoint", stub.url, "--api-model", "stub"]) == 0
    assert len(stub.requests) == 6
    out = tmp_path / "round"
    assert main(["curate", "--model", str(model), *common, "--questions", str(questions), "--out", str(out),
                 "--n-captions", "2", "--n-images", "2", "--steps", "2", "--min-chosen-accuracy", "0",
                 "--curate-batch-size", "3"]) == 0
    prefs = [json.loads(line) for line in (out / "prefs.jsonl").read_text().splitlines()]
    assert [p["id"] for p in prefs] == [name for name, _ in mixed_images()]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["records"] == 6 and manifest["self_judge"] == {"pairs": 0}  # no oracle for photos


def test_curation_refuses_data_without_questions_and_says_how_to_get_them(tmp_path, capsys):
    data = write_dataset(tmp_path / "photos")
    model = make_tiny_janus(tmp_path / "janus")
    assert main(["curate", "--model", str(model), "--data", str(data), "--caption-column", "text",
                 "--out", str(tmp_path / "round")]) == 2
    assert "6 records have no qa" in capsys.readouterr().err


def _model_and_sceneless_world(tmp_path, name: str):
    """A tiny built-in model in tmp_path/model, and 3 eval-split world records without their scenes
    (so no oracle can judge them) in tmp_path/name; returns the data folder."""
    from hermesflow.testbed.model import UnifiedConfig, UnifiedModel
    from hermesflow.world.build import write_world

    UnifiedModel(UnifiedConfig(d_model=32, n_layers=1, n_heads=2)).save_pretrained(tmp_path / "model")
    world = write_world(tmp_path / name, 3, seed=0, split="eval")
    data = world.parent if world.name == "data.jsonl" else world
    lines = [json.loads(line) for line in (data / "data.jsonl").read_text().splitlines()]
    (data / "data.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "scene"}) + "\n" for r in lines))
    return data


def test_eval_with_a_vlm_judge_names_it(stub, tmp_path, capsys):

    data = _model_and_sceneless_world(tmp_path, "world")
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tmp_path / "model"), "--data", str(data), "--n", "3", "--steps", "1",
                 "--out", str(out), "--judge", "vlm", "--endpoint", stub.url, "--api-model", "judge-model"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["judges"]["generation"] == "vlm:judge-model"
    assert len(stub.requests) == metrics["n_questions"]
    assert metrics["judge_api"]["completion_tokens"] == 5 * len(stub.requests)
    captured = capsys.readouterr()
    assert "generation judge      vlm:judge-model" in captured.out
    assert f"api: {len(stub.requests)} calls (0 retries" in captured.err


def test_a_world_split_saved_as_a_datasets_folder_is_curated(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    from hermesflow.testbed.model import UnifiedConfig, UnifiedModel
    from hermesflow.world.build import write_world

    UnifiedModel(UnifiedConfig(d_model=32, n_layers=1, n_heads=2)).save_pretrained(tmp_path / "model")
    world = write_world(tmp_path / "world", 4, seed=0, split="train")
    folder = world.parent if world.name == "data.jsonl" else world
    rows = [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines()]
    ds = datasets.Dataset.from_dict({"key": [r["id"] for r in rows], "image": [Image.open(folder / r["image"]) for r in rows],
                                     "text": [r["caption"] for r in rows], "qa": [json.dumps(r["qa"]) for r in rows]})
    ds.save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "round"
    args = ["curate", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "ds"), "--id-column", "key",
            "--caption-column", "text", "--out", str(out), "--n-captions", "2", "--n-images", "2", "--steps", "1"]
    assert main(args) == 0
    assert [json.loads(line)["id"] for line in (out / "prefs.jsonl").read_text().splitlines()] == [r["id"] for r in rows]
    assert main(args) == 0  # the rerun recognises the same data folder and reuses the round


def test_questions_from_the_scene_graph(tmp_path, capsys):
    from hermesflow.world.build import write_world

    world = write_world(tmp_path / "world", 4, seed=0, split="train")
    folder = world.parent if world.name == "data.jsonl" else world
    rows = [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines()]
    (folder / "data.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "qa"}) + "\n" for r in rows))
    out = tmp_path / "questions.json"
    assert main(["questions", "--data", str(folder), "--source", "scene", "--out", str(out)]) == 0
    entries = json.loads(out.read_text())
    for r in rows:  # the world's own questions, answered exactly on each scene (the absent shape may differ)
        mine = [e for e in entries if e["id"] == r["id"]]
        assert [(e["question"], e["answer"]) for e in mine][:-1] == [(q["question"], q["answer"]) for q in r["qa"]][:-1]
    assert main(["validate", str(folder), "--questions", str(out)]) == 0
    assert "without_qa        0" in capsys.readouterr().out
    (folder / "data.jsonl").write_text(json.dumps({"id": "x", "image": rows[0]["image"], "caption": "a dog"}) + "\n")
    assert main(["questions", "--data", str(folder), "--source", "scene", "--out", str(out)]) == 2
    assert 'data.jsonl line 1 (id "x"): no scene graph and world caption' in capsys.readouterr().err


def test_run_evaluates_with_the_vlm_judge_and_records_it(stub, tmp_path):

    data = _model_and_sceneless_world(tmp_path, "heldout")
    out = tmp_path / "run"
    args = ["run", "--model", str(tmp_path / "model"), "--out", str(out), "--rounds", "0", "--n-train", "4",
            "--eval-data", str(data), "--eval-n", "3", "--steps", "1", "--judge", "vlm", "--endpoint", stub.url,
            "--api-model", "judge-model"]
    assert main(args) == 0
    metrics = json.loads((out / "base" / "eval" / "metrics.json").read_text())
    assert metrics["judges"]["generation"] == "vlm:judge-model" and metrics["judge_api"]["calls"] == len(stub.requests)
    assert (out / "base" / "eval" / "judge_cache.jsonl").exists()


def test_a_self_judged_run_on_foreign_data_says_so_and_leaves_out_what_needs_the_oracle(tmp_path):
    from hermesflow.world.build import write_world

    heldout = _model_and_sceneless_world(tmp_path, "heldout")  # records without scenes: no oracle can read them
    world = write_world(tmp_path / "photos", 4, seed=0, split="train", prompts="seen")
    data = world.parent if world.name == "data.jsonl" else world
    rows = [json.loads(line) for line in (data / "data.jsonl").read_text().splitlines()]
    (data / "data.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "scene"}) + "\n" for r in rows))
    out = tmp_path / "run"  # the shipped base model: a random one ties its samples and keeps no pair to train on
    assert main(["run", "--data", str(data), "--eval-data", str(heldout), "--out", str(out), "--eval-n", "3", "--n-captions", "2", "--n-images", "2", "--steps", "1", "--min-chosen-accuracy", "0",
                 "--train-steps", "1", "--batch-size", "2"]) == 0
    page = (out / "report" / "index.html").read_text()
    top = page.split("<h2")[0]
    assert "judged by self" in top and "generation on unseen prompts: n/a" in top and "the model itself" in top
    assert "exact oracle" not in top and "nan" not in page
    assert "<b>Left out:</b> GenEval's categories" in page and "<b>Left out:</b> the agreement needs an outside judge" in page
    assert not (out / "report" / "geneval.png").exists() and "only the shapes world knows which eval prompts" in top
    assert (out / "summary.txt").read_text().startswith("Verdict, round 1 vs base") and "judged by self" in (out / "summary.txt").read_text()


def test_a_round_on_a_datasets_folder_reports_its_pairs(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    from hermesflow.world.build import write_world

    world = write_world(tmp_path / "world", 4, seed=0, split="train", prompts="seen")  # the world measures generation on the rest
    folder = world.parent if world.name == "data.jsonl" else world
    rows = [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines()]
    datasets.Dataset.from_dict({"key": [r["id"] for r in rows], "image": [Image.open(folder / r["image"]) for r in rows],
                                "text": [r["caption"] for r in rows], "qa": [json.dumps(r["qa"]) for r in rows]}
                               ).save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "run"
    # the shipped base model: a random one ties its samples and keeps no pair to train on
    assert main(["run", "--data", str(tmp_path / "ds"), "--id-column", "key",
                 "--caption-column", "text", "--out", str(out), "--rounds", "1", "--eval-n", "3", "--n-captions", "2",
                 "--n-images", "2", "--steps", "1", "--min-chosen-accuracy", "0", "--train-steps", "1",
                 "--batch-size", "2"]) == 0
    page = (out / "report" / "index.html").read_text()
    assert "<div class=card>" in page  # the gallery found the true images in the datasets folder, by its id column
    assert (out / "report" / "gallery" / "round-1-0-true.png").exists()
