"""Command-line behaviour not tied to one stage: presets, the Show-o converter verb, refusals before any
work (bad inputs, launches that would run as something else)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from hermesflow import config
from hermesflow.cli import VERBS, build_parser
from hermesflow.settings import RunConfig


def resolve_run(*argv: str) -> RunConfig:
    args = build_parser().parse_args(["run", "--out", "x", *argv])
    return config.resolve(RunConfig, args)


def test_the_paper_preset_sets_the_papers_hyperparameters_and_flags_still_win(tmp_path: Path):
    default, paper = resolve_run(), resolve_run("--preset", "paper")
    assert (default.training.lr, default.training.sft_gen, default.curation.n_images) == (1e-4, 1.0, 16)
    for key, value in config.read_file(RunConfig, config.preset_file(RunConfig, "paper")).items():
        assert config.flat(paper)[key] == value, key
    training, curation = paper.training, paper.curation
    assert (training.lr, training.beta_und, training.batch_size, training.train_steps, curation.guidance, curation.steps) == (2e-5, 0.2, 4, 3000, 5.0, 50)
    assert resolve_run("--preset", "paper", "--lr", "1e-5").training.lr == 1e-5
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("train_steps: 10\n")
    assert resolve_run("--preset", "paper", "--config", str(yaml_file)).training.train_steps == 10


def test_convert_showo_names_a_missing_folder_in_one_line(tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", "hermesflow", "convert-showo", str(tmp_path / "nope"), str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr == f"error: Show-o folder {tmp_path / 'nope'}: no such folder\n"
    assert not (tmp_path / "out").exists()


def hermesflow(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hermesflow", *args], capture_output=True, text=True)


def test_abbreviations_are_refused_and_the_closest_flag_is_suggested():
    result = hermesflow("run", "--out", "x", "--round", "3")  # not silently --rounds
    assert result.returncode == 2
    assert "unrecognized arguments: --round 3 (--round: did you mean --rounds?)" in result.stderr
    assert result.stderr.startswith("usage: hermesflow run --out OUT [options]")  # the verb's usage, short
    typo = hermesflow("curate", "--modle", "foo")
    assert typo.returncode == 2 and "(--modle: did you mean --model?)" in typo.stderr
    assert typo.stderr.startswith("usage: hermesflow curate --model MODEL --data DATA --out OUT [options]")


def test_every_missing_required_flag_is_reported_at_once():
    result = hermesflow("curate")
    assert (result.returncode, result.stderr) == (2, "error: --model, --data, --out are required\n")
    missing = hermesflow("validate")
    assert (missing.returncode, missing.stderr) == (2, "error: DATA is required\n")


def test_help_marks_required_flags_says_each_default_once_and_groups_run_flags():
    text = build_parser().format_help()
    assert "VERB" in text
    run_help = hermesflow("run", "--help-all").stdout
    groups = ("run:", "model:", "data:", "data reading:", "curation:", "training:", "grpo:", "evaluation:", "api (--judge vlm):")
    places = [run_help.index(f"\n{group}\n") for group in groups]  # in the order a run uses them
    assert places == sorted(places)
    assert "(required)" in run_help
    flat = " ".join(run_help.split())
    assert "(default: None)" not in flat and flat.count("(default: the shipped base checkpoint)") == 1
    assert all(line.count("(default") <= 1 for line in flat.split("--"))
    curate_help = hermesflow("curate", "--help-all").stdout
    assert "\nrequired:\n" in curate_help and " ".join(curate_help.split()).count("(required)") == 3


@pytest.mark.parametrize("verb", ["run", "ablate", "eval", "curate", "train"])
def test_short_help_lists_the_common_flags_in_at_most_40_lines_and_help_all_every_flag(verb):
    short, every = hermesflow(verb, "-h"), hermesflow(verb, "--help-all")
    assert short.returncode == every.returncode == 0
    assert len(short.stdout.splitlines()) <= 40
    assert f"more flags, grouped in the order a run uses them: hermesflow {verb} --help-all" in short.stdout
    flags = set(re.findall(r"^  (--[a-z-]+)", every.stdout, re.M))
    listed = [line.split()[0] for line in short.stdout.splitlines() if line.startswith("  --")]
    assert len(listed) >= 8 and set(listed) <= flags  # each a real flag
    settings = config.leaves(VERBS[verb][0])
    assert {"--" + name.replace("_", "-") for name, (_, f, _) in settings.items() if not f.metadata.get("positional")} <= flags
    assert len(hermesflow("world", "-h").stdout.splitlines()) > 10  # a verb of few flags shows them all


def test_an_unusable_out_is_one_line_before_any_model_loads(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    missing_model = str(tmp_path / "no-model")  # were it loaded first, this would be the error
    for out, message in ((blocker, f"--out {blocker}: exists and is not a folder"),
                         (blocker / "sub", f"--out {blocker / 'sub'}: cannot be created, {blocker} is a file")):
        result = hermesflow("curate", "--model", missing_model, "--data", str(tmp_path), "--out", str(out))
        assert (result.returncode, result.stderr) == (2, f"error: {message}\n")
    result = hermesflow("run", "--model", missing_model, "--out", str(blocker))
    assert (result.returncode, result.stderr) == (2, f"error: --out {blocker}: exists and is not a folder\n")
    if Path("/proc/self").is_dir():  # writable by permissions, yet no file can be made there, even by root
        result = hermesflow("run", "--model", missing_model, "--out", "/proc/hermesflow-run")
        assert result.returncode == 2 and result.stderr.startswith("error: --out /proc/hermesflow-run: ")
        assert len(result.stderr.splitlines()) == 1



@pytest.mark.parametrize("verb, flags, said", [
    ("train", ["--model", "m", "--data", "d", "--prefs", "p", "--replay", "1"],
     "--replay trains on a run's earlier rounds, which `hermesflow train` is not given: use hermesflow run"),
    ("run", ["--recipe", "grpo", "--replay", "1"], "--replay trains again on earlier rounds' pairs; GRPO trains on fresh samples"),
    ("run", ["--recipe", "grpo", "--reference-model", "base"], "--reference-model base applies to Pair-DPO; GRPO's KL is to"),
    ("run", ["--sharding", "fsdp", "--lora-r", "4", "--no-lora-merge"], "--sharding fsdp --no-lora-merge: the trained weights are"),
])
def test_options_a_round_cannot_honour_together_are_refused_before_any_work(tmp_path: Path, verb, flags, said):
    result = hermesflow(verb, "--out", str(tmp_path / "out"), *flags)
    assert result.returncode == 2 and result.stderr.startswith(f"error: {said}") and len(result.stderr.splitlines()) == 1, result.stderr
    assert not (tmp_path / "out").exists()


def test_a_run_refused_for_its_inputs_writes_nothing(tmp_path: Path):
    from hermesflow.world.build import write_world

    write_world(tmp_path / "data", 4, seed=0, split="train", prompts="seen")
    (tmp_path / "data" / "images" / "train-0-000002.png").unlink()
    for bad in (["--data", str(tmp_path / "data")], ["--model", str(tmp_path / "no-model")],
                ["--eval-data", str(tmp_path / "data")]):
        result = hermesflow("run", "--out", str(tmp_path / "run"), *bad)
        assert result.returncode == 2, result.stderr
        assert not (tmp_path / "run").exists(), bad  # so the corrected command is not refused as "other settings"
    assert "train-0-000002" in result.stderr


@pytest.mark.parametrize("distributed, said", [
    ("FSDP", "accelerate's FSDP plugin config is not supported"),  # on CPU accelerate would quietly run it as DDP
    ("MULTI_CPU", "accelerate launch started one process though its config asks for several"),  # its CPU launcher starts one
])
def test_a_launch_that_would_run_as_something_else_is_refused_in_one_line(tmp_path: Path, distributed, said):
    cfg = tmp_path / "accelerate.yaml"
    cfg.write_text(f"compute_environment: LOCAL_MACHINE\ndistributed_type: {distributed}\nmixed_precision: 'no'\n"
                   "num_machines: 1\nnum_processes: 2\nuse_cpu: true\n")
    accelerate = Path(sys.executable).with_name("accelerate")
    result = subprocess.run([str(accelerate), "launch", "--config_file", str(cfg), "-m", "hermesflow", "run", "--out",
                             str(tmp_path / "run"), "--n-train", "4"], capture_output=True, text=True, timeout=300)
    ours = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode != 0 and ours and all(said in line for line in ours), result.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_a_deepspeed_launch_is_refused_in_one_line():
    """accelerate's DeepSpeed launcher needs deepspeed, which this machine lacks: the environment it gives
    its processes stands in for the launch (accelerate.utils.launch: ACCELERATE_USE_DEEPSPEED)."""
    from hermesflow.accel import check_launch
    from hermesflow.errors import UsageError

    with pytest.raises(UsageError, match="accelerate's DeepSpeed plugin config is not supported"):
        check_launch({"ACCELERATE_USE_DEEPSPEED": "true", "WORLD_SIZE": "2"})
    check_launch({"ACCELERATE_USE_CPU": "False", "MASTER_ADDR": "127.0.0.1", "WORLD_SIZE": "2"})  # torchrun-style: fine


@pytest.mark.parametrize("name, machines", [("multi_gpu", 1), ("multi_node", 2)])
def test_shipped_accelerate_configs_launch_plain_processes_of_8_gpus_each(name, machines):
    """The shipped configs only launch (8 GPUs per machine): no accelerate FSDP or DeepSpeed plugin, which
    check_launch would refuse; sharding is HermesFlow's own --sharding fsdp."""
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(Path(__file__).parents[1] / "configs" / "accelerate" / f"{name}.yaml"))
    assert cfg.distributed_type == "MULTI_GPU" and not cfg.fsdp_config and not cfg.deepspeed_config
    assert cfg.num_machines == machines and cfg.num_processes == 8 * machines and cfg.mixed_precision == "no"
