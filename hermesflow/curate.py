"""Homologous preference curation (paper §3.1): the model judges its own captions and images.

For each homologous record (image x, caption y, questions):
- understanding: the model samples n captions of x; each is scored by sentence similarity to y;
  best -> chosen y_w, worst -> rejected y_l;
- generation: the model draws n images for y; it answers the record's questions about each image
  itself (self-VQA); the accuracy ranks them; best -> chosen x_w (kept only above the threshold),
  worst -> rejected x_l. The exact oracle's accuracy of each image is stored beside it, to measure
  how often the model's own judgement agrees with the truth.
From round 1 on, pairs follow the paper's Eq. 10 (`hermesflow.selfplay`).

Work is split into fixed batches whose seeds depend only on (seed, round, batch index). Rows are
appended to one shard per process and flushed per batch; a restarted run skips the batches whose
rows are all present, so a killed and resumed curation writes the same file as an uninterrupted
one. Shards are merged in input order into `prefs.jsonl`, with a `manifest.json` of the counts.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hermesflow.data import HomologousData, Record
from hermesflow.errors import DataError
from hermesflow.io import atomic_write_json, atomic_write_text
from hermesflow.selfplay import Pair, Sample, initial_pair, update_pair
from hermesflow.settings import CurationOptions
from hermesflow.world.oracle import parse_batch
from hermesflow.world.questions import answer_on_scene

PREFS, MANIFEST = "prefs.jsonl", "manifest.json"


@dataclass
class CurationSettings(CurationOptions):
    """The sampling and judging options of one curation, with its round and seed."""

    round: int = 0
    seed: int = 0


def self_vqa_accuracy(model, images: np.ndarray, qa: tuple, owners: list[int]) -> np.ndarray:
    """Acc(x_j): the share of the record's questions the model answers correctly about each image.
    `owners[j]` is the record of image j; `qa[r]` its questions."""
    rows, questions, choices, truth = [], [], [], []
    for j, r in enumerate(owners):
        for q in qa[r]:
            rows.append(j)
            questions.append(q.question)
            choices.append(list(q.choices))
            truth.append(q.answer)
    answers = model.answer(images[rows], questions, choices)
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


def _pair_json(pair: Pair | None, reason: str, extra: dict) -> dict:
    if pair is None:
        return {"dropped": reason, **extra}
    return {"chosen": pair.chosen.key, "rejected": pair.rejected.key, "reason": reason,
            "chosen_score": pair.chosen.score, "rejected_score": pair.rejected.score, **extra}


def curate_batch(model, similarity, records: list[Record], previous: dict[str, dict], s: CurationSettings, batch_seed: int) -> list[dict]:
    """Preference rows for one batch of records (see the module docstring)."""
    images = np.stack([r.load_image() for r in records])
    captions = model.sample_captions(images, n=s.n_captions, temperature=s.caption_temperature,
                                     top_k=s.caption_top_k or None, seed=batch_seed)
    flat = [c for cs in captions for c in cs]
    cap_scores = similarity.similarity(flat, [r.caption for r in records for _ in range(s.n_captions)]).tolist()

    tokens = model.generate([r.caption for r in records], n=s.n_images, steps=s.steps, guidance=s.guidance,
                            temperature=s.image_temperature, seed=batch_seed)
    # Each record's candidates: its n new images, then (from round 1 on) the previous pair, which
    # is judged again by the current model so that Eq. 10 compares scores of one judge.
    candidates = []
    for i, record in enumerate(records):
        prev_gen = previous.get(record.id, {}).get("gen", {})
        carried = [prev_gen["chosen"], prev_gen["rejected"]] if "chosen" in prev_gen else []
        candidates.append(tokens[i * s.n_images : (i + 1) * s.n_images].tolist() + carried)
    owners = [i for i, c in enumerate(candidates) for _ in c]
    generated = model.decode(torch.tensor([t for c in candidates for t in c]))
    qa = tuple(r.qa for r in records)
    self_acc = self_vqa_accuracy(model, generated, qa, owners).tolist()
    true_acc = oracle_accuracy(generated, qa, owners).tolist()

    rows, offset = [], 0
    for i, record in enumerate(records):
        n = s.n_images
        own = slice(offset, offset + len(candidates[i]))
        offset += len(candidates[i])
        scores, truth = self_acc[own], true_acc[own]
        # an empty caption, or one with no room for [EOS], cannot be scored by the model: it does not compete
        und_samples = [Sample(c, float(x)) for c, x in zip(captions[i], cap_scores[i * s.n_captions : (i + 1) * s.n_captions])
                       if 0 < len(c.split()) < model.cfg.text_len]
        und_pair, und_reason = _choose(_previous_pair(previous.get(record.id, {}).get("und")), und_samples, None, s.round)
        gen_prev = Pair(Sample(n, scores[n]), Sample(n + 1, scores[n + 1])) if len(candidates[i]) > n else None
        gen_samples = [Sample(j, scores[j]) for j in range(n)]
        gen_pair, gen_reason = _choose(gen_prev, gen_samples, s.min_chosen_accuracy, s.round)
        gen_json = _pair_json(gen_pair, gen_reason, {"self_scores": scores[:n], "oracle_scores": truth[:n]})
        if gen_pair is not None:
            c, r = gen_pair.chosen.key, gen_pair.rejected.key
            gen_json.update(chosen=candidates[i][c], rejected=candidates[i][r], chosen_oracle=truth[c], rejected_oracle=truth[r])
        rows.append({
            "id": record.id,
            "round": s.round,
            "caption": record.caption,
            "und": _pair_json(und_pair, und_reason, {"samples": captions[i]}),
            "gen": gen_json,
        })
    return rows


def _previous_pair(saved: dict | None) -> Pair | None:
    """The caption pair of the previous round (its similarity scores come from a fixed encoder)."""
    if not saved or "chosen" not in saved:
        return None
    return Pair(Sample(saved["chosen"], saved["chosen_score"]), Sample(saved["rejected"], saved["rejected_score"]))


def _choose(previous: Pair | None, samples: list[Sample], threshold: float | None, round_index: int) -> tuple[Pair | None, str]:
    if round_index == 0:
        return initial_pair(samples, min_chosen_score=threshold)
    return update_pair(previous, samples, min_chosen_score=threshold)


def read_rows(path: Path) -> list[dict]:
    """Complete rows of a shard; a line cut short by a kill is ignored (it is redone)."""
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def read_prefs(round_dir: Path) -> dict[str, dict]:
    """The merged preference rows of a finished round, by id."""
    path = Path(round_dir) / PREFS
    if not path.is_file():
        raise DataError([f"{path}: no preference file (has the round been curated?)"])
    return {row["id"]: row for row in read_rows(path)}


def curate(model, similarity, data: HomologousData, out: Path, s: CurationSettings, previous: dict[str, dict],
           rank: int = 0, world: int = 1) -> None:
    """Curate this process's share of the batches into its shard (resumable)."""
    out.mkdir(parents=True, exist_ok=True)
    shard = out / "shards" / f"shard-{rank}-of-{world}.jsonl"
    shard.parent.mkdir(exist_ok=True)
    rows = read_rows(shard)
    atomic_write_text(shard, "".join(json.dumps(r) + "\n" for r in rows))  # drop a cut line, if any
    done = {r["id"] for r in rows}
    records = data.records
    batches = [records[i : i + s.curate_batch_size] for i in range(0, len(records), s.curate_batch_size)]
    mine = [(b, batch) for b, batch in enumerate(batches) if b % world == rank]
    with open(shard, "a", encoding="utf-8") as f:
        for b, batch in tqdm(mine, desc=f"curate round {s.round}", disable=rank != 0, dynamic_ncols=True):
            if all(r.id in done for r in batch):
                continue
            seed = s.seed * 1_000_003 + s.round * 10_007 + b
            new = [row for row in curate_batch(model, similarity, batch, previous, s, seed) if row["id"] not in done]
            f.write("".join(json.dumps(row) + "\n" for row in new))
            f.flush()


def merge(out: Path, data: HomologousData, world: int, extra_manifest: dict) -> dict:
    """Join the shards by id in input order into prefs.jsonl and write the manifest."""
    by_id: dict[str, dict] = {}
    for rank in range(world):
        for row in read_rows(out / "shards" / f"shard-{rank}-of-{world}.jsonl"):
            by_id[row["id"]] = row
    missing = [r.id for r in data.records if r.id not in by_id]
    if missing:
        raise DataError([f"{out}: curation incomplete, {len(missing)} records missing (first: {missing[0]})"])
    rows = [by_id[r.id] for r in data.records]
    atomic_write_text(out / PREFS, "".join(json.dumps(row) + "\n" for row in rows))
    counts = {
        "records": len(rows),
        "und_kept": sum("chosen" in r["und"] for r in rows),
        "gen_kept": sum("chosen" in r["gen"] for r in rows),
        "both_kept": sum("chosen" in r["und"] and "chosen" in r["gen"] for r in rows),
        "und_dropped": dict(Counter(r["und"]["dropped"] for r in rows if "dropped" in r["und"])),
        "gen_dropped": dict(Counter(r["gen"]["dropped"] for r in rows if "dropped" in r["gen"])),
        "und_kept_by": dict(Counter(r["und"].get("reason", "unrecorded") for r in rows if "chosen" in r["und"])),
        "gen_kept_by": dict(Counter(r["gen"].get("reason", "unrecorded") for r in rows if "chosen" in r["gen"])),
    }
    manifest = {**extra_manifest, "counts": counts, "self_judge": self_judge_agreement(rows)}
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


def self_judge_agreement(rows: list[dict]) -> dict:
    """How often the model's own ranking of a kept generated pair agrees with the oracle's."""
    kept = [r["gen"] for r in rows if "chosen" in r["gen"]]
    if not kept:
        return {"pairs": 0}
    agree = [g["chosen_oracle"] > g["rejected_oracle"] for g in kept]
    ties = [g["chosen_oracle"] == g["rejected_oracle"] for g in kept]
    return {
        "pairs": len(kept),
        "oracle_prefers_chosen": float(np.mean(agree)),
        "oracle_ties": float(np.mean(ties)),
        "chosen_oracle_accuracy": float(np.mean([g["chosen_oracle"] for g in kept])),
        "rejected_oracle_accuracy": float(np.mean([g["rejected_oracle"] for g in kept])),
    }
