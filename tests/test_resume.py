"""Safe, visible resume: every stage records the settings that made its outputs. The same settings
resume and say what they reuse; other settings are refused, naming the keys and the two ways out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hermesflow import config
from hermesflow.cli import main
from hermesflow.errors import UsageError
from hermesflow.stages import claim, settings_file

TINY = ["--n-train", "8", "--eval-n", "8", "--batch-size", "4", "--n-captions", "4", "--n-images", "4", "--steps", "2",
        "--curate-batch-size", "4", "--min-chosen-accuracy", "0", "--loss-type", "und",
        "--pair-rows", "branch"]  # the tiny random model's images all tie: its caption pairs train alone


def test_claim_resumes_the_same_settings_refuses_others_and_overwrite_clears(tmp_path: Path):
    (tmp_path / "model").mkdir()
    assert claim(tmp_path, "train", "a training", {"lr": 1e-4, "steps": 3}, ("model",)) is False
    assert claim(tmp_path, "train", "a training", {"steps": 3, "lr": 1e-4}, ("model",)) is True  # order does not matter
    with pytest.raises(UsageError) as refused:
        claim(tmp_path, "train", "a training", {"lr": 1e-3, "steps": 3}, ("model",))
    assert "lr: 0.0001 -> 0.001" in str(refused.value) and "steps" not in str(refused.value)
    assert "another --out" in str(refused.value) and "--overwrite" in str(refused.value)
    assert (tmp_path / "model").exists()  # refusing deletes nothing
    assert claim(tmp_path, "train", "a training", {"lr": 1e-3, "steps": 3}, ("model",), overwrite=True) is False
    assert not (tmp_path / "model").exists()
    assert json.loads(settings_file(tmp_path, "train").read_text())["settings"] == {"lr": 1e-3, "steps": 3}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict:
    from hermesflow.testbed.model import UnifiedConfig, UnifiedModel

    root = tmp_path_factory.mktemp("resume")
    torch.manual_seed(0)
    UnifiedModel(UnifiedConfig(d_model=32, n_layers=1, n_heads=2)).save_pretrained(root / "model")
    args = ["run", "--model", str(root / "model"), "--out", str(root / "run"), "--train-steps", "3", *TINY]
    assert main(args) == 0
    return {"root": root, "run": root / "run", "model": root / "model", "args": args}


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and "report" not in p.parts}


def test_a_rerun_with_the_same_settings_reuses_every_stage_and_says_so(tiny_run, capsys):
    before = snapshot(tiny_run["run"])
    capsys.readouterr()
    assert main(tiny_run["args"]) == 0
    err = capsys.readouterr().err
    assert "resuming the run in" in err
    assert "reusing the evaluation" in err and "base/eval/metrics.json" in err
    assert "reusing round 1 curation" in err and "reusing the trained model" in err
    assert snapshot(tiny_run["run"]) == before


def test_a_rerun_with_other_settings_is_refused_naming_the_keys_and_keeps_run_config(tiny_run, capsys):
    before = snapshot(tiny_run["run"])
    capsys.readouterr()
    args = [*tiny_run["args"], "--train-steps", "10", "--loss-type", "product"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "holds a run made with other settings" in err
    assert "loss_type: 'und' -> 'product'" in err and "train_steps: 3 -> 10" in err
    assert "another --out" in err and "--overwrite" in err
    assert snapshot(tiny_run["run"]) == before  # run_config.yaml not rewritten, nothing relabelled


def test_each_stage_refuses_other_settings_on_its_own(tiny_run, capsys):
    run, model = tiny_run["run"], str(tiny_run["model"])
    before = snapshot(run)
    capsys.readouterr()
    curate = ["curate", "--model", model, "--data", str(run / "data"), "--out", str(run / "round-1"), *TINY[6:12], "--n-images", "2"]
    assert main(curate) == 2
    assert "round 1 curation made with other settings" in capsys.readouterr().err
    train = ["train", "--model", model, "--data", str(run / "data"), "--prefs", str(run / "round-1"), "--out", str(run / "round-1"),
             "--train-steps", "5", "--batch-size", "4", "--loss-type", "und"]
    assert main(train) == 2
    assert "train_steps: 3 -> 5" in capsys.readouterr().err
    evaluate = ["eval", "--model", model, "--out", str(run / "base" / "eval"), "--n", "4", "--steps", "2"]
    assert main(evaluate) == 2
    assert "n: 8 -> 4" in capsys.readouterr().err
    assert snapshot(run) == before


def test_overwrite_deletes_the_old_results_and_starts_again(tiny_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run["run"], run)
    args = [a if a != str(tiny_run["run"]) else str(run) for a in tiny_run["args"]]
    assert main([*args, "--train-steps", "2", "--overwrite"]) == 0
    assert "train_steps: 2" in (run / "run_config.yaml").read_text()
    trained = json.loads(settings_file(run / "round-1" / "train", "train").read_text())["settings"]
    assert trained["train_steps"] == 2
    assert [json.loads(line)["step"] for line in (run / "round-1" / "train" / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_an_os_error_at_the_boundary_is_one_line_naming_the_path(tiny_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run["run"], run, ignore=shutil.ignore_patterns("report"))
    (run / "report").write_text("a file where the report folder goes")
    capsys.readouterr()
    assert main(["report", str(run)]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and str(run / "report") in err and "Traceback" not in err, err


def test_an_ablation_folder_keeps_its_config_and_refuses_other_settings(tmp_path, capsys):
    from hermesflow.recipes.run import claim_folder
    from hermesflow.settings import AblateConfig

    claim_folder(config.build(AblateConfig, out=tmp_path, seeds=2), "ablate_config.yaml", "an ablation")
    claim_folder(config.build(AblateConfig, out=tmp_path, seeds=2, save_every=7), "ablate_config.yaml", "an ablation")  # free to change
    assert "resuming" in capsys.readouterr().err
    with pytest.raises(UsageError) as refused:
        claim_folder(config.build(AblateConfig, out=tmp_path, seeds=3), "ablate_config.yaml", "an ablation")
    assert "holds an ablation made with other settings" in str(refused.value) and "seeds: 2 -> 3" in str(refused.value)
    assert b"seeds: 2\n" in (tmp_path / "ablate_config.yaml").read_bytes()  # not rewritten by the refused rerun
