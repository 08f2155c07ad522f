"""The test bed can learn from good samples (issue 10's zero): fine-tuning the shipped base on its
own oracle-perfect samples raises its generation on the prompts it trained on, and fine-tuning on
random samples of the same prompts does not. Without this no curation recipe could show a gain.
A small version of `experiments/zero.py` (whose full run is in experiments/zero.md)."""

import importlib.util
from pathlib import Path

import pytest

from hermesflow.backbones import BASE_MODEL, GenerationConfig, load_backbone
from hermesflow.records import QA
from hermesflow.world.build import world_records

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "zero.py"


def _zero():
    spec = importlib.util.spec_from_file_location("zero", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fine_tuning_on_perfect_self_samples_raises_generation_and_random_ones_do_not():
    zero = _zero()
    base = load_backbone(BASE_MODEL).eval()
    records = [r for r, _ in world_records(120, 1, "train", prompts="seen")]
    caps = [r["caption"] for r in records]
    qas = [tuple(QA(q["question"], tuple(q["choices"]), q["answer"], q["type"]) for q in r["qa"]) for r in records]

    def sample(model, captions, n, seed):
        return model.generate(captions, n, GenerationConfig(guidance=2.0, steps=10, seed=seed))

    fresh = {}
    drawn = sample(base, caps, 8, 7)  # both selections pick from the same 8 samples of each prompt
    for select in ("perfect", "random"):
        examples, acc, chosen = zero.sft_examples(base, caps, qas, 8, lambda c, n: drawn, select, 0)
        assert chosen == 1.0 if select == "perfect" else chosen < 0.8
        tuned = zero.fine_tune(base, examples, steps=120, lr=1e-4, batch=16, cond_dropout=0.1, seed=0)
        fresh[select] = zero.judge(tuned, caps, qas, sample(tuned, caps, 1, 11))
    before = zero.judge(base, caps, qas, sample(base, caps, 1, 11))
    gain = zero.paired(before, fresh["perfect"])
    assert gain["ci95"][0] > 0, gain
    assert zero.paired(fresh["random"], fresh["perfect"])["ci95"][0] > 0
