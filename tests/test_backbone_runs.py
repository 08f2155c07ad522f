"""The whole method on real architectures besides the built-in model: `hermesflow run` on a tiny
random Janus folder (the world drawn at its 64 px) with LoRA, and on a tiny random Show-o; and
`hermesflow train` on two processes matching one for Janus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from tiny_models import make_tiny_janus
from tiny_showo import make_tiny_showo
from transformers import JanusForConditionalGeneration

from hermesflow.backbones import load_backbone

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
MICRO = ["--n-train", "8", "--eval-n", "6", "--n-captions", "2", "--n-images", "3", "--steps", "2",
         "--min-chosen-accuracy", "0", "--curate-batch-size", "4"]


def hermesflow(*args: str, procs: int = 1) -> str:
    if procs == 1:
        cmd = [sys.executable, "-m", "hermesflow", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port", "29541", "-m", "hermesflow", *args]
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def janus(tmp_path_factory) -> Path:
    return make_tiny_janus(tmp_path_factory.mktemp("janus") / "tiny")


@pytest.fixture(scope="module")
def lora_run(janus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    hermesflow("run", "--model", str(janus), "--out", str(out), *MICRO, "--train-steps", "1", "--batch-size", "2", "--lora-r", "4")
    return out


def test_run_on_janus_curates_the_world_at_its_resolution_and_evaluates(lora_run):
    from PIL import Image

    data = [json.loads(line) for line in (lora_run / "data" / "data.jsonl").read_text().splitlines()]
    assert Image.open(lora_run / "data" / data[0]["image"]).size == (64, 64)
    manifest = json.loads((lora_run / "round-1" / "manifest.json").read_text())
    assert manifest["model_type"] == "janus" and manifest["counts"]["records"] == 8
    pref = json.loads((lora_run / "round-1" / "prefs.jsonl").read_text().splitlines()[0])
    assert "oracle_scores" in pref["gen"]  # world data: the oracle judges Janus's 64 px images too
    for folder in ("base", "round-1"):
        metrics = json.loads((lora_run / folder / "eval" / "metrics.json").read_text())
        assert metrics["judges"]["generation"] == "oracle" and metrics["settings"]["model_type"] == "janus"
    assert (lora_run / "report" / "index.html").exists()


def test_one_lora_step_changes_only_the_adapted_weights_and_the_merged_model_is_plain_janus(janus, lora_run):
    adapter = lora_run / "round-1" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    assert all("lora_" in k for k in load_file(adapter / "adapter_model.safetensors"))
    before, after = load_file(janus / "model.safetensors"), load_file(lora_run / "round-1" / "model" / "model.safetensors")
    assert before.keys() == after.keys()
    changed = {k for k in before if not (before[k] == after[k]).all()}
    assert changed and all(k.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "o_proj") for k in changed), sorted(changed)
    JanusForConditionalGeneration.from_pretrained(lora_run / "round-1" / "model")  # loads as plain Janus
    assert load_backbone(lora_run / "round-1" / "model").model_type == "janus"


ONE_PROCESS: dict[tuple, Path] = {}  # the one-process trainings, each run once for every sharding compared with it


def two_processes_match_one(model: Path, run: Path, tmp_path: Path, sharding: str, *extra: str) -> None:
    """`hermesflow train` (with `extra` flags) on two processes with `sharding` ends where one process does."""
    args = ["train", "--model", str(model), "--data", str(run / "data"), "--prefs", str(run / "round-1"),
            "--train-steps", "3", "--batch-size", "2", "--lr", "1e-3", "--warmup", "1", *extra]
    if tuple(args) not in ONE_PROCESS:
        hermesflow(*args, "--out", str(tmp_path / "one"))
        ONE_PROCESS[tuple(args)] = tmp_path / "one"
    hermesflow(*args, "--out", str(tmp_path / "two"), "--sharding", sharding, procs=2)
    assert json.loads((tmp_path / "two" / "train" / "summary.json").read_text())["processes"] == 2
    start = load_file(model / "model.safetensors")
    a, b = (load_file(folder / "model" / "model.safetensors") for folder in (ONE_PROCESS[tuple(args)], tmp_path / "two"))
    assert a.keys() == b.keys()
    # the same tolerance as the built-in model's two-process test: all-reduce sums in another order
    moved = sum(((a[k].float() - start[k].float()) ** 2).sum() for k in a) ** 0.5
    apart = sum(((a[k].float() - b[k].float()) ** 2).sum() for k in a) ** 0.5
    assert moved > 0 and apart / moved < 1e-3, float(apart / moved)


@pytest.mark.parametrize("sharding, extra", [("ddp", ()), ("fsdp", ()), ("fsdp", ("--lora-r", "4"))])
def test_training_janus_on_two_processes_matches_one(janus, lora_run, tmp_path, sharding, extra):
    two_processes_match_one(janus, lora_run, tmp_path, sharding, *extra)


def test_run_on_show_o_at_256_px_curates_trains_and_evaluates(tmp_path):
    from PIL import Image

    showo = make_tiny_showo(tmp_path / "showo", image_size=256)  # Show-o's resolution: 256 image tokens
    out = tmp_path / "run"
    hermesflow("run", "--model", str(showo), "--out", str(out), "--n-train", "8", "--eval-n", "4", "--n-captions", "4",
               "--n-images", "4", "--steps", "2", "--min-chosen-accuracy", "0", "--train-steps", "2", "--batch-size", "2")
    first = json.loads((out / "data" / "data.jsonl").read_text().splitlines()[0])
    assert Image.open(out / "data" / first["image"]).size == (256, 256)
    manifest = json.loads((out / "round-1" / "manifest.json").read_text())
    assert manifest["model_type"] == "show-o" and manifest["counts"]["both_kept"] > 0
    summary = json.loads((out / "round-1" / "train" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["branches"] == ["und", "gen"]
    assert json.loads((out / "round-1" / "eval" / "metrics.json").read_text())["settings"]["model_type"] == "show-o"
    assert load_backbone(out / "round-1" / "model").fingerprint() != load_backbone(showo).fingerprint()
    # its decoder layers sharded over two processes (FSDP2) end where one process does
    two_processes_match_one(showo, out, tmp_path / "fsdp", "fsdp")
