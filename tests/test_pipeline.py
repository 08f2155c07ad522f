"""Curation and training end to end through the real command line: resume after SIGKILL, and
several processes (torchrun, gloo on CPU) giving the same results as one."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hermesflow.backbones import load_backbone
from hermesflow.report import ABLATION_SECTIONS, SECTIONS
from hermesflow.settings import PretrainConfig
from hermesflow.testbed.pretrain import pretrain
from hermesflow.world.build import write_world

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
CURATE = ["--n-captions", "3", "--n-images", "3", "--steps", "3", "--curate-batch-size", "4", "--min-chosen-accuracy", "0"]
TRAIN = ["--train-steps", "12", "--batch-size", "4", "--save-every", "4", "--lr", "1e-3", "--warmup", "2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("pipeline")
    pretrain(PretrainConfig(out=root / "model", preset="micro", steps=300, checkpoint_every=1000))
    write_world(root / "data", n=40, seed=3, split="train")
    return {"root": root, "model": root / "model", "data": root / "data"}


def hermesflow(*args: str, procs: int = 1) -> subprocess.Popen:
    if procs == 1:
        cmd = [sys.executable, "-m", "hermesflow", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port", "29533", "-m", "hermesflow", *args]
    # A shell's background job starts with SIGINT ignored, and Python then leaves it ignored: give the
    # child the default, so that Ctrl-C (SIGINT) reaches it however the tests were started.
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def finish(p: subprocess.Popen) -> str:
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    return out


def kill_when(p: subprocess.Popen, ready, timeout: float = 300, sig: int = signal.SIGKILL) -> None:
    """Send `sig` (SIGKILL unless told) to the process as soon as `ready()` holds."""
    deadline = time.time() + timeout
    while not ready():
        assert p.poll() is None, f"finished before it could be killed: {p.communicate()[1][-2000:]}"
        assert time.time() < deadline
        time.sleep(0.02)
    p.send_signal(sig)
    if sig == signal.SIGKILL:
        p.wait()


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def curate(setup, out: Path, procs: int = 1) -> subprocess.Popen:
    return hermesflow("curate", "--model", str(setup["model"]), "--data", str(setup["data"]), "--out", str(out), *CURATE, procs=procs)


@pytest.fixture(scope="module")
def curated(setup) -> Path:
    out = setup["root"] / "curated"
    finish(curate(setup, out))
    return out


def test_curation_killed_and_resumed_writes_the_same_file(setup, curated):
    out = setup["root"] / "killed"
    shard = out / "shards" / "shard-0-of-1.jsonl"
    kill_when(curate(setup, out), lambda: lines(shard) >= 12)
    assert not (out / "prefs.jsonl").exists()
    finish(curate(setup, out))
    assert (out / "prefs.jsonl").read_bytes() == (curated / "prefs.jsonl").read_bytes()
    ids = [json.loads(line)["id"] for line in (out / "prefs.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 40


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_curation_with_one_line_and_exit_130_and_a_rerun_resumes(setup, curated, sig, code):
    out = setup["root"] / f"interrupted-{code}"
    shard = out / "shards" / "shard-0-of-1.jsonl"
    p = curate(setup, out)
    kill_when(p, lambda: lines(shard) >= 8, sig=sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == code
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    last = err.strip().splitlines()[-1]
    assert last == f"interrupted: rerun the same command to resume (the work saved in {out} is kept)"
    assert not (out / "prefs.jsonl").exists() and not list(out.rglob("*.tmp"))
    rerun = curate(setup, out)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err[-2000:]
    done = int(re.search(r"resuming: (\d+) of 40 records curated", err).group(1))
    # the bar counts records and starts at those done before, so its rate is this process's own
    first = re.search(r"curate round 1:\s+\d+%\|[^|]*\| (\d+)/40 \[00:00<\?, \?record/s\]", err)
    assert first and int(first.group(1)) == done > 0, err[-2000:]
    assert (out / "prefs.jsonl").read_bytes() == (curated / "prefs.jsonl").read_bytes()


def test_curation_sharded_over_two_processes_merges_to_the_same_file(setup, curated):
    out = setup["root"] / "two"
    finish(curate(setup, out, procs=2))
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard-0-of-2.jsonl", "shard-1-of-2.jsonl"]
    assert (out / "prefs.jsonl").read_bytes() == (curated / "prefs.jsonl").read_bytes()


def test_manifest_counts_kept_and_dropped(curated):
    manifest = json.loads((curated / "manifest.json").read_text())
    rows = [json.loads(line) for line in (curated / "prefs.jsonl").read_text().splitlines()]
    counts = manifest["counts"]
    assert counts["records"] == 40
    assert counts["und_kept"] + sum(counts["und_dropped"].values()) == 40
    assert counts["gen_kept"] + sum(counts["gen_dropped"].values()) == 40
    for row in rows:
        for branch in ("und", "gen"):
            pair = row[branch]
            assert ("chosen" in pair) != ("dropped" in pair)
            if "chosen" in pair:
                assert pair["chosen_score"] > pair["rejected_score"]  # strictly, or it is dropped
        if "chosen" in row["gen"]:
            assert len(row["gen"]["chosen"]) == 16 and len(row["gen"]["rejected"]) == 16


def train(setup, curated, out: Path, procs: int = 1, *extra: str) -> subprocess.Popen:
    return hermesflow("train", "--model", str(setup["model"]), "--data", str(setup["data"]), "--prefs", str(curated),
                      "--out", str(out), *TRAIN, *extra, procs=procs)


@pytest.fixture(scope="module")
def trained(setup, curated) -> Path:
    out = setup["root"] / "trained"
    finish(train(setup, curated, out, 1, "--log-branch-grad-norms"))  # a diagnostic: must not change training
    return out


def test_training_killed_and_resumed_ends_with_the_same_parameters(setup, curated, trained):
    out = setup["root"] / "train-killed"
    kill_when(train(setup, curated, out), lambda: (out / "train" / "state" / "step.json").exists())
    resumed = train(setup, curated, out)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0 and re.search(r"resuming: training from step \d+ of 12", err), err[-2000:]
    a, b = load_file(trained / "model" / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # each step logged once, none lost
    logged = [json.loads(line) for line in (trained / "train" / "metrics.jsonl").read_text().splitlines()]
    assert all(row["und/grad_norm"] > 0 and row["gen/grad_norm"] > 0 for row in logged[1:])


def test_training_on_two_processes_matches_one(setup, curated, trained):
    out = setup["root"] / "train-two"
    finish(train(setup, curated, out, 2))
    summary = json.loads((out / "train" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["ranks_identical"]
    a, b = load_file(trained / "model" / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    start = load_file(setup["model"] / "model.safetensors")
    # All-reduce sums in another order than one process, so float noise differs; Adam turns noise
    # on parameters whose true gradient is zero (attention key biases) into lr-sized steps. So the
    # two runs must agree to 0.1% of how far training moved the weights, and to lr-scale per value.
    moved = sum(((a[k] - start[k]) ** 2).sum() for k in a) ** 0.5
    apart = sum(((a[k] - b[k]) ** 2).sum() for k in a) ** 0.5
    assert moved > 0 and apart / moved < 1e-3, float(apart / moved)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-3


def moved_and_apart(start: dict, a: dict, b: dict) -> tuple[float, float]:
    """How far training moved the weights (a from start), and how far apart two trainings ended."""
    return (float(sum(((a[k] - start[k]) ** 2).sum() for k in a) ** 0.5), float(sum(((a[k] - b[k]) ** 2).sum() for k in a) ** 0.5))


def test_sharded_training_matches_one_process_and_resumes_exactly_after_a_kill(setup, curated, trained):
    """--sharding fsdp on two processes: the same model as one process (to DDP's tolerance), written as an
    ordinary folder; a kill and a rerun end on the same weights; its state resumes only as it was saved."""
    whole, killed = setup["root"] / "fsdp", setup["root"] / "fsdp-killed"
    finish(train(setup, curated, whole, 2, "--sharding", "fsdp"))
    summary = json.loads((whole / "train" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["sharding"] == "fsdp"
    assert 0.49 <= summary["weights_held"] <= 0.51  # the main process held half of the weights while training
    start, one, sharded = (load_file(d / "model.safetensors") for d in (setup["model"], trained / "model", whole / "model"))
    assert one.keys() == sharded.keys()
    moved, apart = moved_and_apart(start, one, sharded)
    assert moved > 0 and apart / moved < 1e-3, apart / moved
    kill_when(train(setup, curated, killed, 2, "--sharding", "fsdp"), lambda: (killed / "train" / "state" / "step.json").exists())
    assert sorted(p.name for p in (killed / "train" / "state").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # each its part
    for wrong, said in ((train(setup, curated, killed), "was saved with --sharding fsdp; resume it with --sharding fsdp"),
                        (train(setup, curated, killed, 1, "--sharding", "fsdp"), "--sharding fsdp shards over processes")):
        _, err = wrong.communicate(timeout=300)
        assert wrong.returncode == 2 and said in err.strip().splitlines()[-1], err[-2000:]
    resumed = train(setup, curated, killed, 2, "--sharding", "fsdp")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0 and re.search(r"resuming: training from step \d+ of 12", err), err[-2000:]
    again = load_file(killed / "model" / "model.safetensors")
    assert all(torch.equal(sharded[k], again[k]) for k in sharded)


def test_sharded_lora_and_bf16_training_match_one_process(setup, curated, tmp_path):
    """LoRA under FSDP (the adapter disabled is the reference) ends where one process does; bf16 runs in
    mixed precision on every process, so the first step's policy equals its reference (margin 0)."""
    for extra in (["--lora-r", "4"], ["--dtype", "bf16"]):
        name = extra[-1]
        finish(train(setup, curated, tmp_path / f"one-{name}", 1, *extra))
        finish(train(setup, curated, tmp_path / f"fsdp-{name}", 2, "--sharding", "fsdp", *extra))
        rows = {kind: [json.loads(line) for line in (tmp_path / f"{kind}-{name}" / "train" / "metrics.jsonl").read_text().splitlines()]
                for kind in ("one", "fsdp")}
        assert rows["fsdp"][0]["gen/rewards/margins"] == 0.0
        assert abs(rows["fsdp"][0]["loss"] - rows["one"][0]["loss"]) < (1e-5 if name == "4" else 2e-3)
        if name == "4":
            start = load_file(setup["model"] / "model.safetensors")
            one, sharded = (load_file(tmp_path / f"{kind}-4" / "model" / "model.safetensors") for kind in ("one", "fsdp"))
            moved, apart = moved_and_apart(start, one, sharded)
            assert moved > 0 and apart / moved < 1e-3, apart / moved


GRPO = ["--n-train", "8", "--eval-n", "8", "--n-captions", "2", "--n-images", "2", "--steps", "3", "--curate-batch-size", "4",
        "--min-chosen-accuracy", "0", "--recipe", "grpo", "--train-steps", "4", "--grpo-prompts", "2", "--grpo-group", "4",
        "--grpo-reward", "hard", "--grpo-beta-kl", "0.05", "--lr", "1e-3", "--warmup", "1"]


def test_sharded_grpo_matches_ddp_on_two_processes(setup, tmp_path):
    """GRPO under --sharding fsdp: sampling, rewards and updates run on the shards (each block gathered
    for its forward); the same metrics and weights as DDP at the same world size (the
    sampling seeds are per process). A step where one process has no signal and the other has
    (groups/dropped 0.5) runs on both: each takes part in the forward passes whose collectives it holds."""
    runs = {}
    for sharding in ("ddp", "fsdp"):
        out = tmp_path / sharding
        finish(hermesflow("run", "--model", str(setup["model"]), "--out", str(out), *GRPO, "--sharding", sharding, procs=2))
        runs[sharding] = [json.loads(line) for line in (out / "round-1" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in runs["fsdp"]] == [1, 2, 3, 4]
    assert any(r["groups/dropped"] == 0.5 for r in runs["ddp"])
    # the update's figures are the processes' with signal: the first update's ratio is near 1, not halved
    assert all(0.5 < r["ratio/mean"] < 2 for r in runs["ddp"] if r["groups/dropped"] < 1)
    for a, b in zip(runs["ddp"], runs["fsdp"]):
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-5 for k in a), (a, b)
    start = load_file(setup["model"] / "model.safetensors")
    one, sharded = (load_file(tmp_path / kind / "round-1" / "model" / "model.safetensors") for kind in ("ddp", "fsdp"))
    moved, apart = moved_and_apart(start, one, sharded)
    assert moved > 0 and apart / moved < 1e-6, apart / moved
    # the exported folder loads in one process, and the round's evaluation (sampled, judged) is DDP's
    assert load_backbone(tmp_path / "fsdp" / "round-1" / "model").fingerprint() == load_backbone(tmp_path / "ddp" / "round-1" / "model").fingerprint()
    evaluations = [json.loads((tmp_path / kind / "round-1" / "eval" / "metrics.json").read_text()) for kind in ("ddp", "fsdp")]
    assert evaluations[0]["per_example"] == evaluations[1]["per_example"]


def test_sharded_rounds_curate_and_evaluate_on_the_shards_as_ddp_does(setup, tmp_path):
    """`run --sharding fsdp` on two processes: the base evaluation (the main process's forward passes,
    the other process draining), each round's curation (three batches: one process curates two, the
    other one) and evaluation run on sharded weights, and give DDP's files at the same world size; round
    2 is curated by round 1's model as the main process wrote it (its fingerprint)."""
    args = ["--rounds", "2", "--n-train", "12", "--eval-n", "8", "--train-steps", "3", "--batch-size", "4", *CURATE]
    for sharding in ("ddp", "fsdp"):
        finish(hermesflow("run", "--model", str(setup["model"]), "--out", str(tmp_path / sharding), *args, "--sharding", sharding, procs=2))
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    for file in ("base/eval/metrics.json", "round-1/prefs.jsonl"):  # the base model's work: byte for byte
        assert (ddp / file).read_bytes() == (fsdp / file).read_bytes(), file
    evaluations = [json.loads((run / "round-1" / "eval" / "metrics.json").read_text()) for run in (ddp, fsdp)]
    assert evaluations[0]["per_example"] == evaluations[1]["per_example"]
    manifest = json.loads((fsdp / "round-2" / "manifest.json").read_text())
    assert manifest["model_sha1"] == load_backbone(fsdp / "round-1" / "model").fingerprint()
    assert manifest["counts"]["records"] == 12
    assert [row["round"] for row in json.loads((fsdp / "summary.json").read_text())] == ["base", "1", "2"]


ROUNDS = ["--rounds", "2", "--n-train", "16", "--eval-n", "24", "--train-steps", "6", "--save-every", "2", "--batch-size", "4",
          "--replay", "1", *CURATE]


def rounds(setup, out: Path) -> subprocess.Popen:
    return hermesflow("iterate", "--model", str(setup["model"]), "--out", str(out), *ROUNDS)


def test_self_play_rounds_resume_after_a_kill_in_the_second_round(setup):
    whole = setup["root"] / "rounds-whole"
    finish(rounds(setup, whole))
    killed = setup["root"] / "rounds-killed"
    kill_when(rounds(setup, killed), lambda: lines(killed / "round-2" / "shards" / "shard-0-of-1.jsonl") >= 4)
    assert not (killed / "summary.json").exists()
    said = finish(hermesflow("status", str(killed))).splitlines()  # where it stands, from its files alone
    assert said[0] == f"{killed}: a run of 2 rounds (settings in run_config.yaml)"
    assert said[1].split() == ["base", "evaluation", "done:", "understanding", *said[1].split()[4:]]
    assert re.fullmatch(r"  round 2 curation +\d+ of 16 records curated \(a rerun resumes there\)", said[5])
    assert said[6:8] == ["  round 2 training     not started", "  round 2 evaluation   not started"]
    assert said[-1] == ("A rerun of the same command reuses the base evaluation, round 1's curation, round 1's model, "
                        "round 1's evaluation and resumes round 2's curation.")
    finish(rounds(setup, killed))
    a, b = json.loads((whole / "summary.json").read_text()), json.loads((killed / "summary.json").read_text())
    assert [r["round"] for r in a] == ["base", "1", "2"] and a == b
    for name in ("round-1", "round-2"):
        assert (whole / name / "prefs.jsonl").read_bytes() == (killed / name / "prefs.jsonl").read_bytes()
    second = [json.loads(line) for line in (whole / "round-2" / "prefs.jsonl").read_text().splitlines()]
    assert all(row["round"] == 1 for row in second)
    trained = [json.loads((whole / name / "train" / "summary.json").read_text()) for name in ("round-1", "round-2")]
    assert trained[0]["examples_replayed"] == 0 and trained[1]["examples_replayed"] == trained[0]["examples"] > 0  # --replay 1
    kept_by = json.loads((whole / "round-2" / "manifest.json").read_text())["counts"]["und_kept_by"]
    assert set(kept_by) <= {"improved", "not_improved", "initial"} and sum(kept_by.values()) > 0


def test_run_reuses_a_matching_base_eval_and_refuses_another_naming_the_difference(setup):
    root, model = setup["root"], str(setup["model"])
    finish(hermesflow("eval", "--model", model, "--out", str(root / "base-eval"), "--n", "24", "--steps", "3"))
    reused = root / "reuse-base"
    p = hermesflow("run", "--model", model, "--out", str(reused), "--base-eval", str(root / "base-eval"), "--rounds", "0",
                   "--eval-n", "24", "--n-train", "16", *CURATE)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0 and "its evaluation taken from --base-eval" in err and "evaluate 24" not in err, err[-2000:]
    for name in ("metrics.json", "generated.png"):  # the run folder holds the evaluation it reused
        assert (reused / "base" / "eval" / name).read_bytes() == (root / "base-eval" / name).read_bytes()
    assert json.loads((reused / "summary.json").read_text())[0]["round"] == "base"
    refused = root / "refuse-base"  # 24 items evaluated, the run would evaluate 20, and the settings say so
    out, err = hermesflow("run", "--model", model, "--out", str(refused), "--base-eval", str(root / "base-eval"), "--rounds", "0",
                          "--eval-n", "20", "--n-train", "16", *CURATE).communicate(timeout=300)
    assert "--base-eval" in err and "n: 24 -> 20" in err, err
    assert not refused.exists()  # refused before anything is written


def test_pretraining_killed_and_resumed_ends_with_the_same_weights(tmp_path):
    args = ["--preset", "micro", "--steps", "120", "--checkpoint-every", "30"]
    finish(hermesflow("pretrain", "--out", str(tmp_path / "whole"), *args))
    killed = tmp_path / "killed"
    kill_when(hermesflow("pretrain", "--out", str(killed), *args), lambda: (killed / "state" / "step.json").exists())
    finish(hermesflow("pretrain", "--out", str(killed), *args))
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(killed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (killed / "state").exists()
    logged = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert logged == [25, 50, 75, 100, 120]  # logged every 25 steps and at the end, once each
    shutil.copytree(tmp_path / "whole", tmp_path / "whole2")  # a finished pretraining with these settings
    (tmp_path / "whole2" / "state").mkdir()  # a checkpoint of a run with other settings is refused
    (tmp_path / "whole2" / "state" / "step.json").write_text('{"step": 30}')
    refused = hermesflow("pretrain", "--out", str(tmp_path / "whole2"), "--preset", "micro", "--steps", "200")
    _, err = refused.communicate(timeout=300)
    assert refused.returncode == 2 and "other settings" in err
    (tmp_path / "whole2" / "checkpoint").mkdir()  # one an earlier version wrote is refused, naming the way out
    refused = hermesflow("pretrain", "--out", str(tmp_path / "whole2"), *args)
    _, err = refused.communicate(timeout=300)
    assert refused.returncode == 2 and "earlier version" in err and (tmp_path / "whole2" / "checkpoint").exists()


def test_run_writes_a_report_with_every_section_and_image(setup):
    run = setup["root"] / "rounds-whole"  # made by the self-play test above
    if not (run / "summary.json").exists():
        finish(rounds(setup, run))
    page = (run / "report" / "index.html").read_text()
    for section in SECTIONS:
        assert f">{section}</h2>" in page
    # the verdict first, naming its judge; the same line heads summary.txt
    top = page.split("<h2")[0]
    assert "Verdict, round 2 vs base" in top and "judged by oracle" in top and "generation on unseen prompts" in top
    assert "judged by the shapes world&#39;s exact oracle" in top or "judged by the shapes world's exact oracle" in top
    assert (run / "summary.txt").read_text().startswith("Verdict, round 2 vs base")
    rows = json.loads((run / "summary.json").read_text())  # the examples each round trained on, as its training counted them
    assert [r["examples_trained"] for r in rows[1:]] == [json.loads((run / f"round-{i}" / "train" / "summary.json").read_text())["examples"]
                                                         for i in (1, 2)]
    sources = re.findall(r'src="([^"]+)"', page)
    kept = json.loads((run / "round-2" / "manifest.json").read_text())["counts"]["both_kept"]
    assert len([s for s in sources if s.startswith("gallery/")]) == 3 * min(8, kept) > 0  # true, chosen, rejected
    assert all((run / "report" / s).is_file() for s in sources)
    assert "http://" not in page and "https://" not in page  # nothing fetched when the page is opened
    assert page.count("<tr><td class=t>round ") >= 2 * 3  # round labels say "round", in scores, change, GenEval and judge tables
    change = page.split('id=change>')[1].split("<h2")[0]
    assert "Δ understanding" in change and change.count("<tr><td class=t>round ") == 2 and "no paired interval" not in change
    geneval = page.split('id=geneval>')[1].split("<h2")[0]
    assert re.search(r"\d+/\d+ \[\d\.\d\d,&nbsp;\d\.\d\d\]", geneval)  # counts and Wilson intervals
    judge = page.split('id=judge>')[1].split("<h2")[0]
    assert "oracle sees a difference" in judge and re.search(r"\d+ of \d+", judge)
    drops = page.split('id=drops>')[1].split("<h2")[0]
    assert "<td class=t>initial</td>" in drops and "{" not in drops  # a table, not raw JSON
    assert "drawn across the round with seed 0" in page and "rewards phrasing" in page
    assert 'src="samples-base.png"' in page and 'src="samples-round-2.png"' in page and "<ol class=prompts><li>" in page
    side = page.split("<table class=side>")[1].split("</table>")[0]  # the same prompts by each model, side by side
    assert side.count("<tr>") == 1 + 8 and all(f'src="side/{m}-0.png"' in side for m in ("base", "round-1", "round-2"))
    assert all((run / "report" / "side" / f"{m}-{i}.png").is_file() for m in ("base", "round-1", "round-2") for i in range(8))
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["model"] == str(setup["model"].resolve()) and html_escaped(provenance["model"]) in page
    timings = json.loads((run / "timings.json").read_text())
    assert {"base/eval", "round-1/curate", "round-1/train", "round-1/eval"} <= set(timings)
    curves = [json.loads(line) for line in (run / "round-1" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "loss/und", "loss/gen", "nll/und", "nll/gen", "und/rewards/accuracies", "lr"} <= set(curves[0])


def html_escaped(text: str) -> str:
    import html

    return html.escape(text)


LAYOUT_PROBE = """<!doctype html><html><body style="margin:0"><iframe id=f src="%s" style="width:%dpx;height:900px;border:0"></iframe>
<script>
document.getElementById('f').addEventListener('load', () => {
  const frame = document.getElementById('f'), d = frame.contentDocument, w = frame.contentWindow;
  const r = {scroll: d.documentElement.scrollWidth, view: w.innerWidth, first: d.querySelector('h1').nextElementSibling.className, tables: []};
  d.querySelectorAll('table').forEach(t => {
    const box = t.parentElement.getBoundingClientRect(), cells = t.rows[0].cells;
    r.tables.push({head: cells.length > 1 ? cells[1].textContent : '', fits: t.getBoundingClientRect().width <= box.width + 1,
                   scrolls: w.getComputedStyle(t.parentElement).overflowX === 'auto' && box.right <= w.innerWidth,
                   second: cells.length > 1 ? cells[1].getBoundingClientRect().right <= box.right + 1 : true});
  });
  const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(r); document.body.appendChild(pre);
});
</script></body></html>"""


def test_report_layout_in_headless_chromium_at_a_laptops_and_a_phones_width(setup, tmp_path):
    """The page never scrolls sideways; each table fits or scrolls in its own box with its first column of
    numbers (the Δ column of the change table) in view; the verdict comes first. Measured in the browser
    (at 390 px through an iframe: headless Chromium's window is at least 500 px wide)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("skipped: chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    run = setup["root"] / "rounds-whole"
    if not (run / "report" / "index.html").exists():
        finish(rounds(setup, run))
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]
    for width in (1400, 390):  # a laptop screen, and a phone's width
        probe = run / "report" / f"probe-{width}.html"
        probe.write_text(LAYOUT_PROBE % ("index.html", width))
        done = subprocess.run([*flags, "--allow-file-access-from-files", "--window-size=1600,1000", "--dump-dom",
                               "--virtual-time-budget=5000", probe.as_uri()], capture_output=True, text=True, timeout=120)
        probe.unlink()
        found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout)
        assert found, done.stderr[-2000:]
        layout = json.loads(found.group(1).replace("&quot;", '"'))
        assert layout["view"] == width and layout["scroll"] <= width, layout
        assert layout["first"] == "verdict"
        assert len(layout["tables"]) >= 6 and all(t["fits"] or t["scrolls"] for t in layout["tables"]), layout
        assert all(t["second"] for t in layout["tables"]), layout  # e.g. Δ understanding, beside the sticky row label
        if width == 1400:  # the tables of numbers fit a laptop's screen whole
            assert all(t["fits"] for t in layout["tables"] if t["head"].startswith(("understanding", "Δ understanding"))), layout
        shot = tmp_path / f"report-{width}.png"
        subprocess.run([*flags, f"--window-size={width},4000", f"--screenshot={shot}", (run / "report" / "index.html").as_uri()],
                       capture_output=True, timeout=120)
        keep = os.environ.get("HERMESFLOW_KEEP_SCREENSHOTS")  # a folder to keep them in, for a person to look at
        if keep and shot.exists():
            shutil.copyfile(shot, Path(keep) / shot.name)


def test_ablation_runs_every_arm_with_seeds_and_resumes(setup):
    out = setup["root"] / "ablate"
    args = ["ablate", "--model", str(setup["model"]), "--out", str(out), "--seeds", "2", "--n-train", "12", "--eval-n", "12",
            "--train-steps", "4", "--batch-size", "4", *CURATE]
    kill_when(hermesflow(*args), lambda: (out / "pair_sum" / "seed-0" / "model" / "config.json").exists())
    finish(hermesflow(*args))
    summary = json.loads((out / "ablation.json").read_text())
    assert list(summary) == ["base", "dpo_und", "dpo_gen", "pair_sum", "pair_sum_r2", "pair_sum_r3", "pair_product"]
    assert all(summary[arm]["seeds"] == 2 for arm in summary if arm != "base")
    table = (out / "ablation.md").read_text()
    assert "Table 5 analog" in table and "| pair_product |" in table and "±" in table
    page = (out / "report" / "index.html").read_text()
    assert all(f"<h2>{section}</h2>" in page for section in ABLATION_SECTIONS)
    assert all((out / "report" / src).is_file() for src in re.findall(r'src="([^"]+)"', page))
