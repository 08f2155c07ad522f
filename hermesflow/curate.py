"""Homologous preference curation (paper §3.1): the model judges its own captions and images.

For each homologous record (image x, caption y, questions):
- understanding: the model samples n captions of x; each is scored by sentence similarity to y;
  best -> chosen y_w, worst -> rejected y_l;
- generation: the model draws n images for y; it answers the record's questions about each image
  itself (self-VQA); the accuracy ranks them; best -> chosen x_w (kept only above the threshold),
  worst -> rejected x_l. When the records carry world scenes, the exact oracle's accuracy of each
  image is stored beside it, only to measure how often the model's own judgement agrees with the
  truth; other data is curated by the self-judge alone.
Sampled captions the model cannot score (`Backbone.fit_problems`) do not compete; a record left with
none drops its caption pair as "unscorable". From round 1 on, pairs follow the paper's Eq. 10
(`hermesflow.selfplay`). Each record becomes one `prefs.Preference`.

Work is split into fixed batches whose seeds depend only on (seed, round, batch index). Rows are
appended to one shard per process and flushed per batch; a restarted run skips the batches whose
rows are all present, so a killed and resumed curation writes the same file as an uninterrupted
one. Shards are merged in input order into `prefs.jsonl`, with a `manifest.json` of the counts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hermesflow.backbones import Backbone, GenerationConfig
from hermesflow.data import HomologousData, Record
from hermesflow.errors import DataError
from hermesflow.io import atomic_write_json, atomic_write_text
from hermesflow.prefs import PREFS, CaptionPair, Dropped, ImagePair, Preference, read_lines, to_line
from hermesflow.selfplay import Pair, Sample, initial_pair, update_pair
from hermesflow.settings import CurationOptions
from hermesflow.stages import say
from hermesflow.world.oracle import parse_batch
from hermesflow.world.questions import answer_on_scene

MANIFEST = "manifest.json"
UNSCORABLE = "unscorable"  # every sampled caption is one the model cannot score


@dataclass
class CurationSettings(CurationOptions):
    """The sampling and judging options of one curation, with its round and seed. `round` counts from
    0 here and in prefs.jsonl (it enters the seeds); people see it counted from 1, as in round-N folders."""

    round: int = 0
    seed: int = 0


def self_vqa_accuracy(backbone: Backbone, inputs: torch.Tensor, qa: tuple, owners: list[int]) -> np.ndarray:
    """Acc(x_j): the share of the record's questions the model answers correctly about each image.
    `inputs[j]` are image j's understanding inputs, `owners[j]` its record, `qa[r]` that record's questions."""
    rows, questions, choices, truth = [], [], [], []
    for j, r in enumerate(owners):
        for q in qa[r]:
            rows.append(j)
            questions.append(q.question)
            choices.append(list(q.choices))
            truth.append(q.answer)
    answers = backbone.answer(inputs[rows], questions, choices)
    return _share_correct(rows, [a == t for a, t in zip(answers, truth)], len(owners))


def oracle_accuracy(images: np.ndarray, qa: tuple, owners: list[int]) -> np.ndarray:
    """The same accuracy with the world's exact oracle answering instead of the model."""
    scenes = parse_batch(images)
    rows, correct = [], []
    for j, r in enumerate(owners):
        for q in qa[r]:
            rows.append(j)
            correct.append(answer_on_scene(q.question, scenes[j]) == q.answer)
    return _share_correct(rows, correct, len(owners))


def _share_correct(rows: list[int], correct: list[bool], n: int) -> np.ndarray:
    totals, counts = np.zeros(n), np.zeros(n)
    np.add.at(totals, rows, np.asarray(correct, dtype=np.float64))
    np.add.at(counts, rows, 1.0)
    return totals / np.maximum(counts, 1)


def curate_batch(backbone: Backbone, similarity, records: list[Record], previous: dict[str, Preference],
                 s: CurationSettings, batch_seed: int) -> list[Preference]:
    """Preference records for one batch of records (see the module docstring)."""
    inputs = backbone.prepare_images([r.load_image() for r in records])
    caption_gen = GenerationConfig(temperature=s.caption_temperature, top_k=s.caption_top_k, seed=batch_seed)
    captions = backbone.sample_captions(inputs, s.n_captions, caption_gen)
    flat = [c for cs in captions for c in cs]
    cap_scores = similarity.similarity(flat, [r.caption for r in records for _ in range(s.n_captions)]).tolist()

    image_gen = GenerationConfig(guidance=s.guidance, temperature=s.image_temperature, steps=s.steps, seed=batch_seed)
    tokens = backbone.generate([r.caption for r in records], s.n_images, image_gen).cpu()
    # Each record's candidates: its n new images, then (from round 1 on) the previous pair, which
    # is judged again by the current model so that Eq. 10 compares scores of one judge.
    candidates = []
    for i, record in enumerate(records):
        prev = previous.get(record.id)
        carried = [list(prev.gen.chosen), list(prev.gen.rejected)] if prev is not None and prev.has("gen") else []
        candidates.append(tokens[i * s.n_images : (i + 1) * s.n_images].tolist() + carried)
    owners = [i for i, c in enumerate(candidates) for _ in c]
    all_tokens = torch.tensor([t for c in candidates for t in c])
    qa = tuple(r.qa for r in records)
    self_acc = self_vqa_accuracy(backbone, backbone.prepare_generated(all_tokens), qa, owners).tolist()
    # the oracle judges only data it knows (the world's scenes), and only to measure the self-judge
    judged = all(r.scene is not None for r in records)
    true_acc = oracle_accuracy(backbone.decode(all_tokens), qa, owners).tolist() if judged else None

    out, offset = [], 0
    for i, record in enumerate(records):
        n = s.n_images
        own = slice(offset, offset + len(candidates[i]))
        offset += len(candidates[i])
        scores = self_acc[own]
        truth = true_acc[own] if judged else None
        prev = previous.get(record.id)
        # a caption the model cannot score (no words, too long) does not compete
        mine = captions[i]
        und_samples = [Sample(c, float(x)) for c, x in zip(mine, cap_scores[i * s.n_captions : (i + 1) * s.n_captions])
                       if c.strip() and not backbone.fit_problems(None, [c])]
        if und_samples:
            prev_und = Pair(Sample(prev.und.chosen, prev.und.chosen_score), Sample(prev.und.rejected, prev.und.rejected_score)) \
                if prev is not None and prev.has("und") else None
            und_pair, und_reason = _choose(prev_und, und_samples, None, s.round)
        else:
            und_pair, und_reason = None, UNSCORABLE
        gen_prev = Pair(Sample(n, scores[n]), Sample(n + 1, scores[n + 1])) if len(candidates[i]) > n else None
        gen_pair, gen_reason = _choose(gen_prev, [Sample(j, scores[j]) for j in range(n)], s.min_chosen_accuracy, s.round)
        und = Dropped(und_reason) if und_pair is None else CaptionPair(
            und_pair.chosen.key, und_pair.rejected.key, und_pair.chosen.score, und_pair.rejected.score, und_reason)
        if gen_pair is None:
            gen = Dropped(gen_reason)
        else:
            c, r = gen_pair.chosen.key, gen_pair.rejected.key
            gen = ImagePair(tuple(candidates[i][c]), tuple(candidates[i][r]), gen_pair.chosen.score, gen_pair.rejected.score,
                            gen_reason, truth[c] if judged else None, truth[r] if judged else None)
        out.append(Preference(record.id, s.round, record.caption, und, gen, tuple(mine), tuple(scores[:n]),
                              tuple(truth[:n]) if judged else None))
    return out


def _choose(previous: Pair | None, samples: list[Sample], threshold: float | None, round_index: int) -> tuple[Pair | None, str]:
    if round_index == 0:
        return initial_pair(samples, min_chosen_score=threshold)
    return update_pair(previous, samples, min_chosen_score=threshold)


def curate(backbone: Backbone, similarity, data: HomologousData, out: Path, s: CurationSettings,
           previous: dict[str, Preference], rank: int = 0, world: int = 1) -> None:
    """Curate this process's share of the batches into its shard (resumable)."""
    out.mkdir(parents=True, exist_ok=True)
    shard = out / "shards" / f"shard-{rank}-of-{world}.jsonl"
    shard.parent.mkdir(exist_ok=True)
    done_prefs = read_lines(shard)
    atomic_write_text(shard, "".join(to_line(p) for p in done_prefs))  # drop a cut line, if any
    done = {p.id for p in done_prefs}
    records = data.records
    if rank == 0:
        finished = sum(len(read_lines(f)) for f in shard.parent.glob(f"shard-*-of-{world}.jsonl"))
        if finished:
            say(f"resuming: {finished} of {len(records)} records curated in {out}")
    batches = [records[i : i + s.curate_batch_size] for i in range(0, len(records), s.curate_batch_size)]
    mine = [(b, batch) for b, batch in enumerate(batches) if b % world == rank]
    with open(shard, "a", encoding="utf-8") as f:
        for b, batch in tqdm(mine, desc=f"curate round {s.round + 1}", disable=rank != 0, dynamic_ncols=True):
            if all(r.id in done for r in batch):
                continue
            seed = s.seed * 1_000_003 + s.round * 10_007 + b
            new = [p for p in curate_batch(backbone, similarity, batch, previous, s, seed) if p.id not in done]
            f.write("".join(to_line(p) for p in new))
            f.flush()


def merge(out: Path, data: HomologousData, world: int, extra_manifest: dict) -> dict:
    """Join the shards by id in input order into prefs.jsonl and write the manifest."""
    by_id: dict[str, Preference] = {}
    for rank in range(world):
        for pref in read_lines(out / "shards" / f"shard-{rank}-of-{world}.jsonl"):
            by_id[pref.id] = pref
    missing = [r.id for r in data.records if r.id not in by_id]
    if missing:
        raise DataError([f"{out}: curation incomplete, {len(missing)} records missing (first: {missing[0]})"])
    prefs = [by_id[r.id] for r in data.records]
    atomic_write_text(out / PREFS, "".join(to_line(p) for p in prefs))
    counts = {"records": len(prefs)}
    for b in ("und", "gen"):
        counts[f"{b}_kept"] = sum(p.has(b) for p in prefs)
    counts["both_kept"] = sum(p.has("und") and p.has("gen") for p in prefs)
    for b in ("und", "gen"):
        counts[f"{b}_dropped"] = dict(Counter(getattr(p, b).reason for p in prefs if not p.has(b)))
    for b in ("und", "gen"):
        counts[f"{b}_kept_by"] = dict(Counter(getattr(p, b).reason for p in prefs if p.has(b)))
    manifest = {**extra_manifest, "counts": counts, "self_judge": self_judge_agreement(prefs)}
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


def self_judge_agreement(prefs: list[Preference]) -> dict:
    """How often the model's own ranking of a kept generated pair agrees with the oracle's (when the
    oracle could judge the data)."""
    kept = [p.gen for p in prefs if p.has("gen") and p.gen.chosen_oracle is not None]
    if not kept:
        return {"pairs": 0}
    return {
        "pairs": len(kept),
        "oracle_prefers_chosen": float(np.mean([g.chosen_oracle > g.rejected_oracle for g in kept])),
        "oracle_ties": float(np.mean([g.chosen_oracle == g.rejected_oracle for g in kept])),
        "chosen_oracle_accuracy": float(np.mean([g.chosen_oracle for g in kept])),
        "rejected_oracle_accuracy": float(np.mean([g.rejected_oracle for g in kept])),
    }
