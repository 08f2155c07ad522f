"""Settings grouped by component: flags keep their names, config files old and new keep working,
presets are YAML files inside the package, and a run folder made before the grouping resumes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from hermesflow import config
from hermesflow.backbones import load_backbone
from hermesflow.errors import UsageError
from hermesflow.options import CurationOptions, TrainingOptions
from hermesflow.recipes.run import claim_run, curation_settings, eval_settings, settle
from hermesflow.settings import AblateConfig, RunConfig
from hermesflow.stages import claim
from hermesflow.testbed.options import PretrainConfig

ROOT = Path(__file__).resolve().parent.parent
# A run folder's settings files as the release before the grouping wrote them (commit ef0cf4f, `hermesflow
# run --out runs/demo`, the defaults): run_config.yaml flat, and each stage's recorded settings.
OLD_RUN = Path(__file__).resolve().parent / "fixtures" / "run-before-grouping"


def test_each_component_receives_its_own_options_and_the_flags_stay_flat():
    cfg = config.resolve(RunConfig, config_args("run", "--out", "x", "--n-captions", "3", "--lr", "0.5", "--skip-bad"))
    assert isinstance(cfg.curation, CurationOptions) and isinstance(cfg.training, TrainingOptions)
    assert (cfg.curation.n_captions, cfg.training.lr, cfg.reading.skip_bad) == (3, 0.5, True)
    names = config.leaves(RunConfig)
    assert names["n_captions"][0] == "curation" and names["lr"][0] == "training" and names["eval_n"][0] == "eval"
    assert names["endpoint"][0] == "api" and names["id_column"][0] == "reading" and names["grpo_group"][0] == "grpo"
    assert names["seed"][0] is None and names["dtype"][0] is None  # the run's own


def config_args(*argv: str):
    from hermesflow.cli import build_parser

    return build_parser().parse_args(list(argv))


def test_a_config_file_may_group_settings_or_give_them_flat_and_names_what_is_wrong(tmp_path: Path):
    grouped, flat = tmp_path / "grouped.yaml", tmp_path / "flat.yaml"
    grouped.write_text("curation:\n  n_images: 5\ntraining:\n  lr: 0.25\nrounds: 2\n")
    flat.write_text("n_images: 5\nlr: 0.25\nrounds: 2\n")
    a = config.resolve(RunConfig, config_args("run", "--out", "x", "--config", str(grouped)))
    b = config.resolve(RunConfig, config_args("run", "--out", "x", "--config", str(flat)))
    assert a == b and (a.curation.n_images, a.training.lr, a.rounds) == (5, 0.25, 2)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("training:\n  n_images: 5\n")
    with pytest.raises(UsageError, match=r"unknown settings \['n_images'\] under training"):
        config.resolve(RunConfig, config_args("run", "--out", "x", "--config", str(wrong)))
    wrong.write_text("training:\n  lr: fast\n")
    with pytest.raises(UsageError, match="lr must be float, got 'fast'"):
        config.resolve(RunConfig, config_args("run", "--out", "x", "--config", str(wrong)))
    wrong.write_text("lr: -1.0\n")
    with pytest.raises(UsageError, match="--lr must be at least"):
        config.resolve(RunConfig, config_args("run", "--out", "x", "--config", str(wrong)))


def test_a_saved_config_loads_back_equal_and_groups_its_settings(tmp_path: Path):
    cfg = config.build(RunConfig, out=tmp_path, n_captions=3, lr=0.5, endpoint="http://x", seed=4)
    config.save(cfg, tmp_path / "run_config.yaml")
    saved = yaml.safe_load((tmp_path / "run_config.yaml").read_text())
    assert saved["curation"]["n_captions"] == 3 and saved["training"]["lr"] == 0.5 and saved["seed"] == 4
    assert config.load(RunConfig, tmp_path / "run_config.yaml") == cfg


def test_whether_a_setting_changes_results_is_metadata_on_its_field():
    free = set(config.flat(config.build(RunConfig, out=Path("x")))) - set(config.results_settings(config.build(RunConfig, out=Path("x"))))
    assert free == {"out", "rounds", "preset", "overwrite", "report_to", "save_every", "max_nonfinite", "log_branch_grad_norms",
                    "endpoint", "api_key_env", "timeout", "retries", "backoff", "workers", "api_cache", "json_schema",
                    "long_text",  # refuse finishes only where truncate would cut nothing
                    "max_pixels",  # a refused image stops the run; an admitted one reads the same
                    "base_eval",  # taken only when its settings are the run's own
                    "sharding"}  # like the number of processes: float noise only (tested), and a state resumes only as saved


def test_presets_are_yaml_files_in_the_package_loaded_like_config_files():
    assert config.preset_names("run") == ("default", "paper", "quick")
    assert config.preset_names("pretrain") == ("default", "micro")
    assert config.preset_names("ablate") == ("full", "quick")
    micro = config.complete(PretrainConfig, {"out": Path("x"), "preset": "micro", "steps": 7})
    assert (micro.d_model, micro.n_layers, micro.steps, micro.batch_size) == (64, 2, 7, 48)  # a flag wins over the preset
    quick = config.complete(AblateConfig, {"out": Path("x"), "seeds": 0})  # 0: the preset's
    assert (quick.seeds, quick.n_train, quick.eval_n) == (3, 200, 500)
    for verb, cls in (("run", RunConfig), ("pretrain", PretrainConfig), ("ablate", AblateConfig)):
        for name in config.preset_names(verb):
            config.read_file(cls, config.preset_file(cls, name), "preset")  # every key a setting of its verb


@pytest.mark.slow
def test_an_installed_package_carries_its_presets_and_report_templates(tmp_path: Path):
    """The wheel holds every preset file and report template, where the code looks for them (beside its modules)."""
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    for name in ("pyproject.toml", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "hermesflow", source / "hermesflow", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                    str(source)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("hermesflow-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    packaged = {str(p.relative_to(ROOT)) for p in [*(ROOT / "hermesflow" / "presets").rglob("*.yaml"),
                                                   *(ROOT / "hermesflow" / "templates").glob("*")]}
    assert packaged and packaged <= names


def test_a_run_folder_made_before_the_grouping_resumes_with_the_same_settings(tmp_path: Path, capsys):
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    cfg = settle(config.build(RunConfig, out=run), load_backbone())  # as `run` completes it
    claim_run(cfg)  # the defaults, as then: same settings, so it resumes
    assert "resuming the run" in capsys.readouterr().err
    # each stage's recorded settings are what today's code records, so finished stages are reused
    curate = json.loads((OLD_RUN / "round-1" / "curate-settings.json").read_text())["settings"]
    now = config.to_dict(curation_settings(cfg, 0))
    assert now.pop("held_out_filter") is True  # rounds curated before held-out captions were filtered are not reused:
    assert now.pop("choice_score") == "sum"  # (nor before the choice score was a setting: the sum, as then)
    assert now.pop("judge_model") == "policy"  # (nor before the judge was a setting: the policy, as then)
    assert now.pop("pair_update") == "eq10"  # (nor before the pairs' update was a setting: Eq. 10, as then)
    assert now.pop("caption_score") == "similarity"  # (nor before the caption score was a setting: similarity, as then)
    assert now.pop("und_pairs") == "captions"  # (nor before answer pairs were a setting: captions, as then)
    assert now == {k: v for k, v in curate.items() if k not in ("model", "model_type", "data", "previous")}
    stage = {**config.to_dict(curation_settings(cfg, 0)), **{k: curate[k] for k in ("model", "model_type", "data", "previous")}}
    with pytest.raises(UsageError, match=r"other settings:\n  caption_score: None -> 'similarity'\n  choice_score: None -> 'sum'\n"
                                          r"  held_out_filter: None -> True\n"
                                          r"  judge_model: None -> 'policy'\n  pair_update: None -> 'eq10'\n"
                                          r"  und_pairs: None -> 'captions'\n"):
        claim(run / "round-1", "curate", "round 1 curation", stage, ())
    train = json.loads((OLD_RUN / "round-1" / "train" / "train-settings.json").read_text())["settings"]
    now = {**config.results_settings(cfg.training), "seed": cfg.seed, "dtype": cfg.dtype}
    assert now.pop("reference_model") == "round"  # trainings made before the reference was a setting are redone, not reused
    assert now.pop("replay") == 0  # (nor before replay was a setting: none, as then)
    assert now == {k: v for k, v in train.items() if k not in ("model", "model_type", "prefs", "data")}
    evaluation = json.loads((OLD_RUN / "base" / "eval" / "eval-settings.json").read_text())["settings"]
    now = eval_settings(cfg, cfg.seed)
    assert now.pop("draw") == "test"  # evaluations made before the eval split had two draws are redone, not reused
    assert now.pop("choice_score") == "sum"
    assert now == {k: v for k, v in evaluation.items() if k not in ("model", "model_type")}
    with pytest.raises(UsageError, match="lr: 0.0001 -> 0.5"):  # another setting is refused, named flat as before
        claim_run(config.build(RunConfig, out=run, lr=0.5))
