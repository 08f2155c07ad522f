"""Command-line behaviour not tied to one stage: presets, the Show-o converter verb."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hermesflow import config
from hermesflow.cli import build_parser
from hermesflow.settings import RUN_PRESETS, RunConfig


def resolve_run(*argv: str) -> RunConfig:
    args = build_parser().parse_args(["run", "--out", "x", *argv])
    return config.resolve(RunConfig, args)


def test_the_paper_preset_sets_the_papers_hyperparameters_and_flags_still_win(tmp_path: Path):
    default, paper = resolve_run(), resolve_run("--preset", "paper")
    assert (default.lr, default.sft_gen, default.n_images) == (1e-4, 1.0, 16)
    for key, value in RUN_PRESETS["paper"].items():
        assert getattr(paper, key) == value, key
    assert (paper.lr, paper.beta_und, paper.batch_size, paper.train_steps, paper.guidance, paper.steps) == (2e-5, 0.2, 4, 3000, 5.0, 50)
    assert resolve_run("--preset", "paper", "--lr", "1e-5").lr == 1e-5
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("train_steps: 10\n")
    assert resolve_run("--preset", "paper", "--config", str(yaml_file)).train_steps == 10


def test_convert_showo_names_a_missing_folder_in_one_line(tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", "hermesflow", "convert-showo", str(tmp_path / "nope"), str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr == f"error: Show-o folder {tmp_path / 'nope'}: no such folder\n"
    assert not (tmp_path / "out").exists()
