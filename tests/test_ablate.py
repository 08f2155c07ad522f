"""`hermesflow ablate --arms FILE`: arms from YAML, checked before any work, and a tiny ablation whose
arms share the base, round-0 data, eval items and sampling seed, with paired intervals to the base."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from hermesflow.cli import main
from hermesflow.errors import UsageError
from hermesflow.recipes.ablate import BUILTIN_ARMS, load_arms

REPO = Path(__file__).resolve().parents[1]


def arms_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "arms.yaml"
    path.write_text(text)
    return path


def test_the_shipped_recipes_file_loads():
    arms = {a.name: a for a in load_arms(REPO / "experiments" / "recipes.yaml")}
    assert {"default", "base_recipe", "paper_sum", "product_no_nll", "dpo_und", "dpo_gen", "dpop_gen", "grpo"} <= set(arms)
    assert arms["default"].settings == {} and arms["default"].rounds == 3  # the control, with its self-play rounds
    assert arms["base_recipe"].settings == {"gen_objective": "dpo"}
    assert arms["paper_sum"].settings == {"gen_objective": "dpo", "sft_und": 0.0, "sft_gen": 0.0}  # the rest is the default's
    assert arms["grpo"].settings["recipe"] == "grpo"
    assert {name for name, a in arms.items() if a.curates} == {"perturbed", "oracle_pairs"}  # curation settings: own round 0
    assert arms["gen_sft"].settings == {"gen_objective": "sft"}


def test_arms_take_rounds_and_mark_those_that_curate(tmp_path):
    arms = load_arms(arms_file(tmp_path, "a:\n  loss_type: und\n  rounds: 3\nb:\n  n_images: 4\n  lr: 1\nc:\n"))
    assert [(a.name, a.rounds, a.curates) for a in arms] == [("a", 3, False), ("b", 1, True), ("c", 1, False)]
    assert arms[1].settings == {"n_images": 4, "lr": 1.0}  # an int where a float is wanted is taken, as in --config files
    assert [arms[0].row(r) for r in (1, 2, 3)] == ["a", "a_r2", "a_r3"]
    assert [a.name for a in BUILTIN_ARMS] == ["dpo_und", "dpo_gen", "pair_sum", "pair_product"]


@pytest.mark.parametrize("text, message", [
    ("a:\n  bta_gen: 0.1\n", "arm 'a': unknown setting 'bta_gen'; did you mean 'beta_gen'?"),
    ("a:\n  loss_type: sums\n", "arm 'a': loss_type must be one of"),
    ("a:\n  lr: -1.0\n", "arm 'a': --lr must be at least"),
    ("a:\n  n_images: many\n", "arm 'a': n_images must be int, got 'many'"),
    ("a:\n  train_steps: 10\n", "arm 'a': train_steps cannot differ between arms (the step budget is shared"),
    ("a:\n  rounds: 0\n", "arm 'a': rounds must be a whole number of at least 1"),
    ("a:\n  recipe: grpo\n  replay: 1\n", "arm 'a': --replay trains again on earlier rounds' pairs; GRPO trains on fresh samples"),
    ("a: [1, 2]\n", "arm 'a': expected a mapping of setting: value"),
    ("base: {}\n", "arm 'base': 'base' is the starting model's row"),
    ("a b: {}\n", "arm 'a b': an arm name is a folder name"),
    ("a:\n  rounds: 2\na_r2: {}\n", "the rows ['a_r2'] would be written twice"),
    ("- a\n", "expected a mapping of arm name"),
    ("a: {lr: [\n", "cannot be read"),
])
def test_bad_arms_files_are_refused_naming_file_arm_and_key(tmp_path, text, message):
    path = arms_file(tmp_path, text)
    with pytest.raises(UsageError) as refused:
        load_arms(path)
    assert message in str(refused.value) and str(path) in str(refused.value)


def test_a_bad_arms_file_stops_the_command_before_any_work(tmp_path, capsys):
    path = arms_file(tmp_path, "a:\n  bta_gen: 0.1\n")
    assert main(["ablate", "--arms", str(path), "--out", str(tmp_path / "out"), "--model", str(tmp_path / "missing")]) == 2
    assert "unknown setting 'bta_gen'" in capsys.readouterr().err
    assert not (tmp_path / "out" / "round-0").exists()


TINY = ["--seeds", "2", "--n-train", "8", "--eval-n", "12", "--train-steps", "2", "--lr", "0.01", "--batch-size", "4", "--n-captions", "4",
        "--n-images", "2", "--steps", "2", "--curate-batch-size", "8", "--min-chosen-accuracy", "0", "--pair-rows", "branch"]


def test_a_tiny_ablation_from_a_yaml_file(tmp_path):
    from hermesflow.testbed.model import UnifiedConfig, UnifiedModel

    torch.manual_seed(0)
    UnifiedModel(UnifiedConfig(d_model=32, n_layers=1, n_heads=2)).save_pretrained(tmp_path / "model")
    # self-play rounds of an arm (rounds: N) run in tests/test_pipeline.py's ablation (pair_sum with rounds 2 and 3)
    arms = arms_file(tmp_path, "und:\n  loss_type: und\nmore_images:\n  loss_type: und\n  n_images: 3\n")
    out = tmp_path / "ablate"
    assert main(["ablate", "--arms", str(arms), "--model", str(tmp_path / "model"), "--out", str(out), *TINY, "--control", "und"]) == 0
    summary = json.loads((out / "ablation.json").read_text())
    assert list(summary) == ["base", "und", "more_images"]
    # arms compared with the control seed by seed on the same items; an ablation evaluates on the selection draw
    versus = summary["more_images"]["vs_control"]
    assert versus["control"] == "und" and versus["generation"]["seeds"] == 2 and "vs_control" not in summary["und"]
    assert versus["generation"]["ci95"][0] <= versus["generation"]["mean"] <= versus["generation"]["ci95"][1]
    assert "Each arm against the control" in (out / "ablation.md").read_text()
    assert json.loads((out / "base" / "eval" / "metrics.json").read_text())["per_example"]["ids"][0].startswith("selection-")
    assert all(summary[a]["seeds"] == 2 for a in ("und", "more_images"))
    assert summary["und"]["curation"] == "shared round 0" and summary["more_images"]["curation"] == "own round 0 (n_images)"
    assert (out / "more_images" / "round-0" / "manifest.json").exists()
    assert json.loads((out / "more_images" / "round-0" / "manifest.json").read_text())["settings"]["n_images"] == 3
    assert json.loads((out / "round-0" / "manifest.json").read_text())["settings"]["n_images"] == 2
    # every arm evaluated on the base's items with the base's sampling seed: the pairing holds
    base = json.loads((out / "base" / "eval" / "metrics.json").read_text())
    for arm in ("und", "more_images"):
        for seed in (0, 1):
            m = json.loads((out / arm / f"seed-{seed}" / "eval" / "metrics.json").read_text())
            assert m["per_example"]["ids"] == base["per_example"]["ids"] and m["settings"]["seed"] == base["settings"]["seed"]
        change = summary[arm]["change"]
        for key in ("understanding", "generation", "gap"):
            lo, hi = change[key]["ci95"]
            assert lo <= change[key]["mean"] <= hi and change[key]["seeds"] == 2
        assert summary[arm]["train_seconds_per_step"] >= 0  # measured; a tiny model may round to 0.0 s
    table = (out / "ablation.md").read_text()
    assert "| more_images | own round 0 (n_images) |" in table and "Δ generation unseen" in table
    assert (out / "arms.yaml").read_text() == arms.read_text()
    assert (out / "report" / "index.html").exists()


def test_summary_pools_paired_differences_and_leaves_unmeasured_scores_null():
    from hermesflow.recipes.ablate import summarise
    from hermesflow.results import Evaluation

    def metrics(und: list[int], gen: list[int], unseen) -> Evaluation:
        def score(mean: float) -> dict:
            return {"mean": mean, "ci95": [mean, mean]}

        return Evaluation.from_json({
            "n_examples": 2, "n_questions": 6, "judges": {"understanding": "answers vs truth", "generation": "self"},
            "understanding_score": score(sum(und) / 6), "generation_score": score(sum(gen) / 6),
            "gap": score((sum(und) - sum(gen)) / 6), "understanding_prior": 0.5, "understanding_by_type": {},
            "generation_by_type": {}, "understanding_prior_by_type": {}, "geneval": {},
            "per_example": {"ids": ["a", "b"], "understanding": [u / q for u, q in zip(und, (2, 4))],
                            "generation": [g / q for g, q in zip(gen, (2, 4))], "questions": [2, 4],
                            "understanding_correct": und, "generation_correct": gen, "unseen": unseen}})

    base = metrics([1, 3], [1, 2], [None, None])  # not world prompts: no unseen part
    seeds = [metrics([2, 3], [1, 4], [None, None]), metrics([1, 3], [2, 2], [None, None])]
    s = summarise(seeds, base)
    assert s["seeds"] == 2 and s["generation"]["mean"] == pytest.approx((5 + 4) / 2 / 6)
    assert s["change"]["generation"]["mean"] == pytest.approx((2 + 1) / 2 / 6)  # each item's change averaged over seeds
    assert s["change"]["understanding"]["mean"] == pytest.approx(1 / 2 / 6)
    assert "error" in s["change"]["generation_unseen"]
    assert s["generation_unseen"] == {"mean": None, "std": None} and s["geneval/overall"]["mean"] is None


def test_the_control_is_the_arm_named_or_the_one_that_changes_nothing():
    from hermesflow.recipes.ablate import Arm, control_of

    arms = [Arm("default"), Arm("und", {"loss_type": "und"}), Arm("sum_r3", {}, rounds=3)]
    assert control_of(None, arms) == "default" and control_of("und", arms) == "und"
    assert control_of(None, arms[1:]) is None  # no arm is the default recipe: no control unless named
    with pytest.raises(UsageError, match=r"--control 'dpo' is not one of the arms \['default', 'und', 'sum_r3'\]"):
        control_of("dpo", arms)


def test_the_written_rule_picks_an_eligible_arm_only_when_it_beats_the_control():
    """experiments/pick_default.py reads out experiments/recipes.md's rule from ablation.json rows."""
    sys.path.insert(0, str(REPO / "experiments"))
    from pick_default import pick

    def row(und, und_unseen, gen_unseen, vs=None, settings=1):
        change = {key: {"mean": sum(ci) / 2, "ci95": list(ci)} for key, ci in
                  (("understanding", und), ("understanding_unseen", und_unseen), ("generation_unseen", gen_unseen))}
        out = {"change": change, "settings": {f"s{i}": 1 for i in range(settings)}}
        if vs is not None:
            out["vs_control"] = {"control": "default", "generation_unseen": {"mean": sum(vs) / 2, "ci95": list(vs)}}
        return out

    rows = {"base": {}, "default": row((-0.03, 0.01), (-0.04, 0.01), (0.03, 0.09), settings=0),
            "costly": row((-0.02, 0.0), (-0.02, 0.0), (0.10, 0.2), vs=(0.05, 0.1)),  # buys generation with understanding
            "small": row((-0.005, 0.0), (-0.005, 0.0), (0.06, 0.08), vs=(-0.01, 0.02))}
    assert pick(rows)[0] is None  # the only eligible arm does not beat the control: it stays
    rows["better"] = row((-0.005, 0.0), (-0.009, 0.0), (0.08, 0.1), vs=(0.002, 0.03), settings=2)
    assert pick(rows)[0] == "better"
    rows["simpler"] = row((-0.005, 0.0), (-0.009, 0.0), (0.078, 0.096), vs=(0.001, 0.03), settings=1)  # within 0.005: fewer settings
    assert pick(rows)[0] == "simpler"
