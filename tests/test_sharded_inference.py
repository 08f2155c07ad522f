"""Inference on sharded weights (`Backbone.shard`, `Backbone.inference`): under `torchrun
--nproc_per_node 2` (gloo, CPU), each backbone sharded over the two processes samples images and
captions and scores multiple choice exactly as its whole weights in one process, while the processes
do different numbers of calls (one drains while the other works); each holds half of each block
between calls, and the fingerprint is the whole weights'. The work is tests/sharded_inference_run.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import make_tiny_janus
from tiny_showo import make_tiny_showo

from hermesflow.backbones import BASE_MODEL

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
SCRIPT = Path(__file__).with_name("sharded_inference_run.py")


def test_a_sharded_model_samples_and_scores_as_its_whole_weights(tmp_path):
    """The built-in model in fp32, a tiny Janus in bf16 and a tiny Show-o in fp32, in one launch."""
    models = {BASE_MODEL: "fp32", make_tiny_janus(tmp_path / "janus", image_size=64): "bf16",
              make_tiny_showo(tmp_path / "showo", image_size=32): "fp32"}
    out = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547", str(SCRIPT),
           str(out), *(str(x) for pair in models.items() for x in pair)]
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = json.loads(out.read_text())
    assert list(reports) == [str(m) for m in models]
    for model, ranks in reports.items():
        assert [r["calls"] for r in ranks] == [1, 2], model  # rank 1 worked on while rank 0 drained
        for r in ranks:
            assert r["same_outputs"] and r["blocks_sharded_between_calls"], model
            assert r["fingerprint_sharded"] == r["fingerprint_whole"] == r["fingerprint_regathered"], model
        held = [r["held_fraction"] for r in ranks]
        assert held[0].keys() == held[1].keys() and held[0]
        for name in held[0]:  # the two halves make the whole (a parameter of an odd number of rows splits unevenly)
            assert held[0][name] + held[1][name] == pytest.approx(1.0)
            assert 0.3 <= held[0][name] <= 0.7, (model, name)


def test_blocks_run_out_of_order_are_refused_rather_than_hang(tmp_path):
    """Draining issues each block's gather in `shard_units()` order; a model whose forward skips or
    reorders them would leave the processes waiting on different collectives: it is refused."""
    import torch
    import torch.distributed as dist
    from torch import nn

    from hermesflow.errors import UsageError
    from hermesflow.sharding import shard, sharded_inference

    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))

        def forward(self, x, skip: bool):
            return self.blocks[2](self.blocks[0](x) if skip else self.blocks[1](self.blocks[0](x)))

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        model = Skips()
        shard(model, list(model.blocks))
        with sharded_inference(model, list(model.blocks)), torch.no_grad():
            model(torch.ones(1, 4), skip=False)
            model(torch.ones(1, 4), skip=False)  # whole passes, one after another: fine
            with pytest.raises(UsageError, match="ran block 2 after block 0"):
                model(torch.ones(1, 4), skip=True)
    finally:
        dist.destroy_process_group()
