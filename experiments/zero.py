"""Issue 10's "zero": can the built-in model learn from good samples at all?

Outside the pipeline: sample n images for each of the post-training world prompts, keep the oracle-
perfect one of each prompt (or a random one, the control), fine-tune with pretraining's own
text-to-image loss (masked modelling, cosine mask, condition dropout), and measure generation on the
trained prompts (fresh samples) and on the eval split, seen and unseen prompts apart, each paired
with the base under the same sampling seed. Results go to OUT/zero.json and the terminal.

    python experiments/zero.py --out runs/zero --select perfect
    python experiments/zero.py --out runs/zero --select random
    python experiments/zero.py --out runs/zero --sweep        # the sampler settings, base only
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hermesflow.backbones import GenerationConfig, load_backbone
from hermesflow.backbones.maskgit import mask_ratio
from hermesflow.records import QA
from hermesflow.stats import cluster_mean_ci
from hermesflow.world.build import world_eval_items, world_records
from hermesflow.world.holdout import is_held_out
from hermesflow.world.oracle import parse_batch
from hermesflow.world.prompts import CATEGORIES, parse_prompt, satisfied_by
from hermesflow.world.questions import answer_on_scene

BASE = Path(__file__).resolve().parents[1] / "hermesflow" / "assets" / "base"


def judge(model, captions: list[str], qas: list[tuple[QA, ...]], tokens: torch.Tensor) -> dict:
    """Per image: the oracle's share of correct answers (per question counts kept), GenEval's hit,
    and the number of objects drawn."""
    scenes = parse_batch(model.decode(tokens))
    correct = np.array([sum(answer_on_scene(q.question, s) == q.answer for q in qa) for qa, s in zip(qas, scenes)], dtype=float)
    n_q = np.array([len(qa) for qa in qas], dtype=float)
    specs = [parse_prompt(c) for c in captions]
    return {"correct": correct, "questions": n_q, "hit": np.array([satisfied_by(s, p) for s, p in zip(scenes, specs)], dtype=float),
            "objects": np.array([len(s.objects) for s in scenes], dtype=float), "category": [p.category for p in specs],
            "unseen": np.array([is_held_out(p) for p in specs])}


def per_question(j: dict, keep: np.ndarray | None = None) -> float:
    keep = np.ones(len(j["correct"]), bool) if keep is None else keep
    return float(j["correct"][keep].sum() / j["questions"][keep].sum())


def paired(a: dict, b: dict, keep: np.ndarray | None = None) -> dict:
    """Per-question difference b - a over the same items, 95% interval clustered by item (`cluster_mean_ci`)."""
    keep = np.ones(len(a["correct"]), bool) if keep is None else keep
    return cluster_mean_ci((b["correct"] - a["correct"])[keep], a["questions"][keep]) | {"n": int(keep.sum())}


def geneval(j: dict) -> dict:
    out = {c: float(np.mean([h for h, k in zip(j["hit"], j["category"]) if k == c])) for c in CATEGORIES if c in j["category"]}
    out["overall"] = float(np.mean(list(out.values())))
    return out


def ancestral(model, captions: list[str], n: int, cfg: GenerationConfig) -> torch.Tensor:
    """One cell per step in a random order, each drawn from the (guided) model at the cells drawn so
    far: at guidance 0 an exact sample from the model's own joint p(image | caption), with none of
    MaskGIT's parallel, confidence-ordered commits. Built-in model only (its prompt cache)."""
    ids = [model.encode_text(c) for c in captions for _ in range(n)]
    g = torch.Generator().manual_seed(cfg.seed)
    with model.sampling():
        context = model._prompt_context(ids, cfg.guidance)
        codes = torch.full((len(ids), model.images.n_tokens), -1, dtype=torch.long)
        for order in torch.rand(codes.shape, generator=g).argsort(1).T:  # the k-th cell to draw, per row
            logits = model._guided_logits(context, codes, cfg.guidance).float()
            probs = F.softmax(logits[torch.arange(len(ids)), order] / max(cfg.temperature, 1e-6), -1)
            codes[torch.arange(len(ids)), order] = torch.multinomial(probs, 1, generator=g)[:, 0]
    return codes


def sft_examples(base, caps: list[str], qas: list, n: int, sample, select: str, seed: int):
    """n samples per caption (`sample(captions, n)`), judged by the oracle; per caption a perfect one
    (dropped when none is) or a random one. Returns the (caption, tokens) examples, every sample's
    accuracy (len(caps), n), and the mean accuracy of the picked samples."""
    tokens = sample(caps, n).view(len(caps), n, -1)
    j = judge(base, [c for c in caps for _ in range(n)], [q for q in qas for _ in range(n)], tokens.flatten(0, 1))
    acc = (j["correct"] / j["questions"]).reshape(len(caps), n)
    rng = np.random.default_rng(seed)
    if select == "perfect":
        picks = [(i, int(rng.choice(np.flatnonzero(acc[i] == 1)))) for i in range(len(caps)) if (acc[i] == 1).any()]
    else:
        picks = [(i, int(rng.integers(n))) for i in range(len(caps))]
    return [(caps[i], tokens[i, k]) for i, k in picks], acc, float(np.mean([acc[i, k] for i, k in picks]))


def fine_tune(base, examples: list[tuple[str, torch.Tensor]], steps: int, lr: float, batch: int, cond_dropout: float, seed: int):
    """Pretraining's text-to-image loss on (caption, image tokens) examples; returns a fine-tuned copy."""
    model = copy.deepcopy(base).train()
    opt = torch.optim.AdamW(model.trainable_module().parameters(), lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    n = model.images.n_tokens
    for _ in range(steps):
        idx = torch.randint(len(examples), (batch,), generator=g).tolist()
        drop = (torch.rand(batch, generator=g) < cond_dropout).tolist()
        prompts = [[] if d else model.encode_text(examples[i][0]) for i, d in zip(idx, drop)]
        codes = torch.stack([examples[i][1] for i in idx])
        count = torch.clamp(torch.ceil(mask_ratio(torch.rand(batch, generator=g)) * n), 1, n)
        masked = torch.rand(batch, n, generator=g).argsort(1).argsort(1) < count[:, None]
        logits = model.image_logits(*model.t2i_batch(prompts, torch.where(masked, -1, codes)))
        loss = F.cross_entropy(logits[masked].float(), codes[masked])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model.eval()


def summary_line(name: str, j: dict) -> str:
    g = geneval(j)
    return (f"{name:<34} gen {per_question(j):.3f}  unseen {per_question(j, j['unseen']):.3f}  GenEval {g['overall']:.3f}  "
            + " ".join(f"{c[:6]} {g[c]:.2f}" for c in CATEGORIES if c in g)
            + f"  objects(counting) {np.mean([o for o, c in zip(j['objects'], j['category']) if c == 'counting']):.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=BASE)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--select", choices=("perfect", "random"), default="perfect")
    p.add_argument("--sweep", action="store_true", help="only evaluate the base under several sampler settings")
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-samples", type=int, default=8)
    p.add_argument("--eval-n", type=int, default=500)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--train-steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--cond-dropout", type=float, default=0.1)
    p.add_argument("--sampler", choices=("maskgit", "ancestral"), default="maskgit",
                   help="maskgit: the library's sampler; ancestral: one cell per step in a random order (see `ancestral`)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    base = load_backbone(a.model, "fp32").eval()
    evals = world_eval_items(a.eval_n, 4242)
    e_caps, e_qas = [it.caption for it in evals], [it.qa for it in evals]

    def sample(model, caps, n, seed, **changes):
        cfg = GenerationConfig(**{**GenerationConfig(guidance=a.guidance, temperature=a.temperature, steps=a.steps, seed=seed).__dict__, **changes})
        return ancestral(model, caps, n, cfg) if a.sampler == "ancestral" else model.generate(caps, n, cfg)

    if a.sweep:
        rows = {}
        for guidance in (0.0, 0.5, 1.0, 2.0, 3.0):
            for steps in (10, 16) if a.sampler == "maskgit" else (16,):
                j = judge(base, e_caps, e_qas, sample(base, e_caps, 1, 11, guidance=guidance, steps=steps))
                print(summary_line(f"guidance {guidance} steps {steps}", j), flush=True)
                rows[f"g{guidance}-s{steps}"] = {"generation": per_question(j), "unseen": per_question(j, j["unseen"]), "geneval": geneval(j)}
        (a.out / f"sweep-{a.sampler}.json").write_text(json.dumps(rows, indent=1))
        return

    records = [r for r, _ in world_records(a.n_train, a.seed + 1, "train", prompts="seen")]
    caps = [r["caption"] for r in records]
    qas = [tuple(QA(q["question"], tuple(q["choices"]), q["answer"], q["type"]) for q in r["qa"]) for r in records]
    tic = time.perf_counter()
    examples, acc, chosen_acc = sft_examples(base, caps, qas, a.n_samples, lambda c, n: sample(base, c, n, 7), a.select, a.seed)
    print(f"{len(caps)} prompts x {a.n_samples} samples: mean oracle accuracy {acc.mean():.3f}, a perfect sample for "
          f"{(acc.max(1) == 1).mean():.1%} of prompts; {len(examples)} {a.select} examples ({time.perf_counter() - tic:.0f} s)", flush=True)
    tuned = fine_tune(base, examples, a.train_steps, a.lr, a.batch, a.cond_dropout, a.seed)

    result = {"settings": vars(a) | {"model": str(a.model), "out": str(a.out)}, "samples_accuracy": float(acc.mean()),
              "examples": len(examples), "chosen_accuracy": chosen_acc}
    for name, c, q in (("trained prompts", caps, qas), ("eval", e_caps, e_qas)):
        jb, jt = judge(base, c, q, sample(base, c, 1, 11)), judge(tuned, c, q, sample(tuned, c, 1, 11))
        print(summary_line(f"base   {name}", jb))
        print(summary_line(f"{a.select:<6} {name}", jt))
        diffs = {"all": paired(jb, jt)}
        if name == "eval":
            diffs |= {"unseen": paired(jb, jt, jb["unseen"]), "seen": paired(jb, jt, ~jb["unseen"])}
        for k, d in diffs.items():
            print(f"    difference ({k}, n={d['n']}): {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]")
        result[name] = {"base": per_question(jb), "tuned": per_question(jt), "base_geneval": geneval(jb), "tuned_geneval": geneval(jt),
                        "difference": diffs}
    (a.out / f"zero-{a.select}-{a.sampler}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
