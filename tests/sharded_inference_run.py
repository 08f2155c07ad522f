"""Run under `torchrun --nproc_per_node 2` (gloo, CPU) by tests/test_sharded_inference.py: a model
sharded over the processes (`Backbone.shard`) samples and scores exactly as its whole weights do in
one process, each process doing a different number of calls (rank r: r + 1 rounds of generation,
captions and multiple choice), so one process drains while the other still works.

    python -m torch.distributed.run --nproc_per_node 2 tests/sharded_inference_run.py OUT.json MODEL DTYPE [MODEL DTYPE ...]

writes, for each model, each process's report.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from hermesflow.backbones import GenerationConfig, load_backbone
from hermesflow.io import atomic_write_json


def calls(model, rank: int) -> list:
    """What process `rank` computes: r + 1 rounds of images, captions and answers, each with its own seed."""
    gen = GenerationConfig(guidance=1.0, temperature=1.0, steps=3, top_k=0)
    outputs = []
    with model.sampling():
        for k in range(rank + 1):
            seed = GenerationConfig(**{**vars(gen), "seed": 10 * rank + k})
            tokens = model.generate(["a red circle", "two blue squares"], 2, seed)
            inputs = model.prepare_generated(tokens)
            captions = model.sample_captions(inputs[:2], 2, seed)
            scores = model.choice_logps(inputs[:2], ["what color is the circle?"] * 2, [["red", "blue"], ["green", "blue", "red"]])
            outputs.append((tokens, captions, scores))
    return outputs


def report(folder: str, dtype: str, rank: int) -> dict:
    """This process's check of one model: the same outputs sharded as whole, its share, the fingerprints."""
    whole = load_backbone(folder, dtype).eval()
    expected = calls(whole, rank)
    fingerprint = whole.fingerprint()
    sizes = {name: p.numel() for name, p in whole.named_parameters()}
    sharded = load_backbone(folder, dtype).eval().shard()
    held = {name: p.to_local().numel() for name, p in sharded.named_parameters() if hasattr(p, "to_local")}
    with sharded.inference():
        got = calls(sharded, rank)
        # between forwards each block is back to its shard (only the root's own weights stay whole)
        blocks_sharded = all(hasattr(p, "to_local") for unit in sharded.shard_units() for p in unit.parameters())
    same = all(torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2] for a, b in zip(expected, got)) and len(got) == rank + 1
    return {"same_outputs": same, "calls": len(got), "blocks_sharded_between_calls": blocks_sharded,
            "fingerprint_sharded": sharded.fingerprint(), "fingerprint_whole": fingerprint,
            "fingerprint_regathered": sharded.whole().fingerprint(),
            "held_fraction": {name: held[name] / sizes[name] for name in held}}


def main(out: str, *models: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    reports = {}
    for folder, dtype in zip(models[::2], models[1::2]):
        reports[folder] = [None] * dist.get_world_size()
        dist.all_gather_object(reports[folder], report(folder, dtype, rank))
    if rank == 0:
        atomic_write_json(out, reports)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
