"""`hermesflow plan`: the published configs build the published models on the meta device, and the
memory follows from how training holds each part (the estimate against a measured step:
benchmarks/bench_plan.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from hermesflow.cli import main
from hermesflow.errors import UsageError
from hermesflow.plan import largest_batch, plan

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_published_configs_build_the_published_parameter_counts():
    """Show-o against the reference code's own full-size model (names and shapes recorded in the fixture):
    every Phi parameter trains, MAGVIT-v2 stays frozen. Janus-Pro: 2.08 B and 7.41 B parameters, as published."""
    recorded = json.loads((FIXTURES / "showo" / "full_size_params.json").read_text())
    count = {name: sum(math.prod(shape) for shape in recorded[name]["parameters"].values()) for name in ("show-o", "magvitv2")}
    showo = plan("show-o", "bf16", batch_size=1)
    assert showo.trainable == count["show-o"] and showo.parameters == count["show-o"] + count["magvitv2"]
    assert round(plan("janus-pro-1b", batch_size=1).parameters / 1e9, 2) == 2.08
    assert round(plan("janus-pro-7b", batch_size=1).parameters / 1e9, 2) == 7.41


def test_memory_follows_how_training_holds_each_part():
    full = plan("show-o", "bf16", batch_size=2)
    trained, frozen = full.trainable, full.parameters - full.trainable
    assert full.weights == trained * 4 + frozen * 4  # trained weights in fp32; MAGVIT-v2 is kept in fp32 too
    assert full.gradients == trained * 4 and full.optimizer == trained * 8  # AdamW's two fp32 moments
    assert full.reference == full.weights and full.gathered == 0  # per-step masks: a frozen copy
    assert plan("show-o", "bf16", batch_size=2, reference="cached").reference == 0
    assert full.activations == pytest.approx(2 * full.per_example, rel=1e-4)  # activations grow with the batch (a mask is shared)
    lora = plan("show-o", "bf16", lora_r=8, batch_size=2)
    assert 0 < lora.trainable < full.trainable / 100 and lora.reference == 0  # the adapter disabled is the reference
    assert lora.weights == trained * 2 + frozen * 4 + lora.trainable * 4  # the frozen Phi base stays in bf16
    sharded = plan("show-o", "bf16", sharding="fsdp", processes=4, batch_size=8)
    assert sharded.weights == full.weights / 4 and sharded.optimizer == full.optimizer / 4
    assert 0 < sharded.gathered < full.weights / 2  # the root's parameters and two blocks at a time
    assert sharded.activations == pytest.approx(full.activations, rel=1e-6)  # 8 over 4 processes: 2 each, as above


def test_the_largest_batch_is_what_fits_beside_the_fixed_parts():
    p = plan("show-o", "bf16", batch_size=1)
    fixed = p.total - p.activations
    assert largest_batch(p, fixed + 3.5 * p.per_example, 1) == 3
    assert largest_batch(p, fixed + 3.5 * p.per_example, 2) == 6  # per process: the global batch is twice
    assert largest_batch(p, fixed / 2, 1) == 0


def test_plan_on_the_command_line_and_its_refusals(tmp_path, capsys):
    out = subprocess.run([sys.executable, "-m", "hermesflow", "plan", "--model", "janus-pro-1b", "--lora-r", "16", "--gpu-memory", "80",
                          "--batch-size", "2"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "2.08 B parameters" in out.stdout and "largest --batch-size that fits 80 GB per process:" in out.stdout
    for args, said in ((["--model", str(tmp_path / "nothing")], "neither a folder with config.json nor a published config"),
                       (["--model", "show-o", "--processes", "3", "--batch-size", "8"], "must divide evenly over 3 processes")):
        assert main(["plan", *args]) == 2  # the same entry point, in this process
        assert said in capsys.readouterr().err
    with pytest.raises(UsageError, match="model_type 'llama' cannot be planned"):
        (tmp_path / "llama").mkdir()
        (tmp_path / "llama" / "config.json").write_text('{"model_type": "llama"}')
        plan(str(tmp_path / "llama"))
