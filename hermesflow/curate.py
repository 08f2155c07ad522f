"""Homologous preference curation (paper §3.1): the model judges its own captions and images.

For each homologous record (image x, caption y, questions):
- understanding: the model samples n captions of x; each is scored by sentence similarity to y
  (or, with `caption_score="drawn"`, by the self-VQA accuracy on the record's questions of one image
  the model draws from it, so captions that say the same thing tie); best -> chosen y_w, worst ->
  rejected y_l;
  With `und_pairs="answers"` no captions are sampled: the pair is the record's right answer over
  the model's strongest wrong choice to the question about x it is least sure of (`answer_pairs`),
  re-derived from the policy every round;
- generation: the model draws n images for y; it answers the record's questions about each image
  itself (self-VQA); a score ranks them; best -> chosen x_w (kept only if its self-VQA accuracy is
  above the threshold), worst -> rejected x_l. The score (`image_score`) is the hard accuracy, or
  the graded self-score: the mean over the questions of the probability the model's own
  multiple-choice scores (a softmax over the choices' log-likelihoods) give the correct answer, which
  orders images of equal accuracy. When the records carry world scenes, the exact oracle's accuracy
  of each image is stored beside it, to measure how often the model's own judgement agrees with the
  truth; other data is curated by the self-judge alone.
- two options change where pairs come from. `pair_source="oracle"` ranks the images by the oracle's
  accuracy instead (a control that is NOT self-curated; the pairs and the manifest say so).
  `rejected_from="perturbed"` draws the rejected image for the caption with one attribute swapped
  (`World.perturbed`, never a prompt the world holds out), so chosen and rejected differ in what the
  caption names; a record whose every swap is held out drops its image pair; it is judged on
  the true caption's questions and pairs with the best sample in every round (see
  `selfplay.contrast_pair`). Both refuse, before any work, data they cannot serve
  (`check_curation_data`): records without scenes, captions the world's prompt parser does not read.
Sampled captions the model cannot score (`Backbone.fit_problems`) do not compete; a record left with
none drops its caption pair as "unscorable". Sampled captions that name a prompt the world holds out
of post-training (`World.holds_out`) are left out everywhere (not paired, not stored, counted), so
generation on those prompts is measured on text no training data contains. From round 1 on, pairs follow the paper's Eq. 10
(`hermesflow.selfplay`). Each record becomes one `prefs.Preference`.

Work is split into fixed batches whose seeds depend only on (seed, round, batch index). Rows are
appended to one shard per process and flushed per batch; a restarted run skips the batches whose
rows are all present, so a killed and resumed curation writes the same file as an uninterrupted
one. Shards are merged in input order into `prefs.jsonl`, with a `manifest.json` of the counts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from hermesflow.backbones import Backbone, GenerationConfig
from hermesflow.backbones.base import best_choices
from hermesflow.errors import DataError, UsageError
from hermesflow.io import atomic_write_json, atomic_write_text
from hermesflow.judges import NOT_SELF_CURATED, World, self_judge_agreement, self_vqa
from hermesflow.options import CurationOptions
from hermesflow.prefs import PREFS, AnswerPair, CaptionPair, Dropped, ImagePair, Preference, read_lines, to_line
from hermesflow.records import HomologousData, Record
from hermesflow.selfplay import Pair, Sample, contrast_pair, initial_pair, update_pair
from hermesflow.stages import say

MANIFEST = "manifest.json"
UNSCORABLE = "unscorable"  # every sampled caption is one the model cannot score
HELD_OUT = "held_out_captions"  # every sampled caption names a prompt held out of post-training
NO_SEEN_PERTURBATION = "no_seen_perturbation"  # every one-attribute swap of the caption is held out
NO_QUESTION = "no_question"  # answer pairs: the record has no question with two or more choices
RANKED_BY = {("self", "hard"): "self_accuracy", ("self", "graded"): "self_graded", ("oracle", "hard"): "oracle"}


@dataclass
class CurationSettings(CurationOptions):
    """The sampling and judging options of one curation, with its precision, round and seed. `round`
    counts from 0 here and in prefs.jsonl (it enters the seeds); people see it counted from 1, as in
    round-N folders."""

    dtype: str = "fp32"
    round: int = 0
    seed: int = 0
    # sampled and perturbed captions naming held-out prompts are left out (rounds curated before
    # they were have no such key, so they are redone rather than reused)
    held_out_filter: bool = True


# ----- where pairs come from ----------------------------------------------------------------------

def check_curation_data(data: HomologousData, s: CurationOptions, world: World | None = None, limit: int = 20) -> None:
    """Refuse, before any work, options the data (and the `world` that knows it, if any) cannot
    serve, naming the records."""
    if s.und_pairs == "answers" and s.caption_score != "similarity":
        raise UsageError("--caption-score ranks sampled captions; --und-pairs answers samples none: choose one")
    if s.pair_source == "oracle" and s.image_score != "hard":
        raise UsageError("--pair-source oracle ranks images by the oracle's accuracy; --image-score graded ranks by the "
                         "model's own scores: choose one (--image-score hard with the oracle)")
    problems = []
    if s.pair_source == "oracle":
        problems += [f"{data.where(r)}: no world scene, so the oracle cannot rank its images"
                     for r in data.records if world is None or not world.knows(r)]
    if s.rejected_from == "perturbed":
        problems += [f"{data.where(r)}: caption {r.caption!r} is not one the world's prompt parser reads, so it cannot be "
                     "perturbed" for r in data.records if world is None or not world.reads(r.caption)]
    if problems:
        option = " and ".join(o for o, on in (("--pair-source oracle", s.pair_source == "oracle"),
                                              ("--rejected-from perturbed", s.rejected_from == "perturbed")) if on)
        shown = problems[:limit] + ([f"... and {len(problems) - limit} more"] if len(problems) > limit else [])
        plural = "s" * (len(problems) > 1)
        header = f"{data.path}: {len(problems)} problem{plural} for {option}, which needs world data (nothing was run)"
        raise DataError([header, *shown])


def curate_batch(backbone: Backbone, similarity, records: list[Record], previous: dict[str, Preference],
                 s: CurationSettings, batch_seed: int, world: World | None = None, judge: Backbone | None = None) -> list[Preference]:
    """Preference records for one batch of records (see the module docstring); `world`, where the
    data has one, judges the images too and perturbs captions; `judge` (default: `backbone`) is the
    model whose answers rank the images."""
    inputs = backbone.prepare_images([r.load_image() for r in records])
    image_gen = GenerationConfig(guidance=s.guidance, temperature=s.image_temperature, steps=s.steps, seed=batch_seed)
    judge = judge or backbone
    qa = tuple(r.qa for r in records)
    if s.und_pairs == "answers":
        understanding = [(pair, (), 0) for pair in answer_pairs(backbone, inputs, qa, s.choice_score)]
    else:
        understanding = caption_pairs(backbone, similarity, inputs, records, previous, s, batch_seed, image_gen, judge, world)

    tokens = backbone.generate([r.caption for r in records], s.n_images, image_gen).cpu()
    perturbed = [world.perturbed(r.caption, f"{s.seed}/{s.round}/{r.id}") for r in records] \
        if s.rejected_from == "perturbed" else None
    if perturbed is not None:  # one image per record for its perturbed caption (if it has one), on seeds of its own
        drawn = [i for i, p in enumerate(perturbed) if p is not None]
        other = dict(zip(drawn, backbone.generate([perturbed[i] for i in drawn], 1, GenerationConfig(
            guidance=s.guidance, temperature=s.image_temperature, steps=s.steps, seed=batch_seed + 7_919)).cpu()))
    # Each record's candidates: its n new images, then either the image of its perturbed caption or
    # (from round 1 on) the previous pair, which is judged again by this round's judge so that
    # Eq. 10 compares scores of one judge.
    candidates = []
    for i, record in enumerate(records):
        prev = previous.get(record.id) if s.pair_update == "eq10" else None  # redraw: the previous pair is not used
        if perturbed is not None:
            extra = [other[i].tolist()] if i in other else []
        else:
            extra = [list(prev.gen.chosen), list(prev.gen.rejected)] if prev is not None and prev.has("gen") else []
        candidates.append(tokens[i * s.n_images : (i + 1) * s.n_images].tolist() + extra)
    owners = [i for i, c in enumerate(candidates) for _ in c]
    all_tokens = torch.tensor([t for c in candidates for t in c])
    scores = self_vqa(judge, judge.prepare_generated(all_tokens), qa, owners, s.choice_score)
    self_acc, graded = scores.accuracy.tolist(), scores.graded.tolist()
    # the oracle judges only data it knows (the world's scenes): to measure the self-judge, or to
    # rank the images itself in the oracle control
    judged = world is not None and all(world.knows(r) for r in records)
    true_acc = world.accuracy(backbone.decode(all_tokens), qa, owners).tolist() if judged else None
    ranked_by = RANKED_BY[(s.pair_source, s.image_score)]
    if ranked_by == "oracle" and not judged:
        raise DataError([f"record {r.id!r}: no world scene, so the oracle cannot rank its images"
                         for r in records if world is None or not world.knows(r)])

    def sample(j: int, own: slice) -> Sample:
        """Candidate j of a record as the pairing rules see it: ranked by the chosen score, gated by accuracy."""
        k = own.start + j
        if ranked_by == "oracle":
            return Sample(j, true_acc[k])
        if ranked_by == "self_graded":
            return Sample(j, graded[k], accuracy=self_acc[k])
        return Sample(j, self_acc[k])

    out, offset = [], 0
    for i, record in enumerate(records):
        n = s.n_images
        own = slice(offset, offset + len(candidates[i]))
        offset += len(candidates[i])
        new_samples = [sample(j, own) for j in range(n)]
        if perturbed is not None and perturbed[i] is None:
            gen_pair, gen_reason = None, NO_SEEN_PERTURBATION
        elif perturbed is not None:
            gen_pair, gen_reason = contrast_pair(new_samples, sample(n, own), s.min_chosen_accuracy)
        else:
            gen_prev = Pair(sample(n, own), sample(n + 1, own)) if len(candidates[i]) > n else None
            gen_pair, gen_reason = _choose(gen_prev, new_samples, s.min_chosen_accuracy, s.round)
        if gen_pair is None:
            gen = Dropped(gen_reason)
        else:
            c, r = own.start + gen_pair.chosen.key, own.start + gen_pair.rejected.key
            gen = ImagePair(tuple(candidates[i][gen_pair.chosen.key]), tuple(candidates[i][gen_pair.rejected.key]),
                            self_acc[c], self_acc[r], gen_reason,
                            true_acc[c] if judged else None, true_acc[r] if judged else None,
                            graded[c], graded[r], ranked_by, perturbed[i] if perturbed is not None else None)
        und, mine, held = understanding[i]
        first = slice(own.start, own.start + n)
        out.append(Preference(record.id, s.round, record.caption, und, gen, mine, tuple(self_acc[first]),
                              tuple(true_acc[first]) if judged else None, tuple(graded[first]), held_out_samples=held))
    return out


def caption_pairs(backbone: Backbone, similarity, inputs: torch.Tensor, records: list[Record], previous: dict[str, Preference],
                  s: CurationSettings, batch_seed: int, image_gen: GenerationConfig, judge: Backbone,
                  world: World | None) -> list[tuple[CaptionPair | Dropped, tuple[str, ...], int]]:
    """Each record's caption pair (best against worst of the captions the model samples of its
    image, by Eq. 10 from round 1 on), the sampled captions kept, and how many were left out for
    naming a held-out prompt."""
    captions = backbone.sample_captions(inputs, s.n_captions, GenerationConfig(
        temperature=s.caption_temperature, top_k=s.caption_top_k, seed=batch_seed))
    # Eq. 10's previous caption pairs keep their scores, unless captions are scored by drawing: then
    # they are drawn and judged again with this round's model, as the previous image pairs are.
    before = {i: p.und for i, p in ((i, previous.get(r.id)) for i, r in enumerate(records))
              if s.pair_update == "eq10" and p is not None and p.has("und")}
    if s.caption_score == "drawn":
        texts = [list(cs) + ([before[i].chosen, before[i].rejected] if i in before else []) for i, cs in enumerate(captions)]
        drawn = drawn_scores(backbone, judge, texts, tuple(r.qa for r in records), s, replace(image_gen, seed=batch_seed + 15_485_863))
        cap_scores = [x for xs in drawn for x in xs[: s.n_captions]]
        before_scores = {i: tuple(drawn[i][s.n_captions :]) for i in before}
    else:
        flat = [c for cs in captions for c in cs]
        cap_scores = similarity.similarity(flat, [r.caption for r in records for _ in range(s.n_captions)]).tolist()
        before_scores = {i: (u.chosen_score, u.rejected_score) for i, u in before.items()}
    out = []
    for i in range(len(records)):
        # a caption naming a held-out prompt is left out; one the model cannot score (no words, too long) does not compete
        scored = [(c, x) for c, x in zip(captions[i], cap_scores[i * s.n_captions : (i + 1) * s.n_captions])
                  if world is None or not world.holds_out(c)]
        samples = [Sample(c, float(x)) for c, x in scored if x is not None and c.strip() and not backbone.fit_problems(None, [c])]
        if not scored:
            pair, reason = None, HELD_OUT
        elif samples:
            known = i in before and None not in before_scores[i]  # a previous caption it cannot draw: no previous pair
            prev = Pair(Sample(before[i].chosen, before_scores[i][0]), Sample(before[i].rejected, before_scores[i][1])) \
                if known else None
            pair, reason = _choose(prev, samples, None, s.round)
        else:
            pair, reason = None, UNSCORABLE
        und = Dropped(reason) if pair is None else CaptionPair(pair.chosen.key, pair.rejected.key, pair.chosen.score,
                                                               pair.rejected.score, reason)
        out.append((und, tuple(c for c, _ in scored), len(captions[i]) - len(scored)))
    return out


def answer_pairs(backbone: Backbone, inputs: torch.Tensor, qa: tuple, score: str) -> list[AnswerPair | Dropped]:
    """Each record's answer pair: of its questions about its own image, the one the model is least
    sure of (the smallest probability of the right answer above its strongest wrong choice, a softmax
    over its `choice_logps`), with the right answer chosen over that wrong choice; "answered_wrong"
    where the wrong one wins. A record without a question of two or more choices has none."""
    asked = [(i, q) for i, questions in enumerate(qa) for q in questions if len(q.choices) > 1]
    logps = backbone.choice_logps(inputs[[i for i, _ in asked]], [q.question for _, q in asked],
                                  [q.choices for _, q in asked], score) if asked else []
    least: dict[int, tuple[float, AnswerPair]] = {}
    for (i, q), row in zip(asked, logps):
        p = torch.tensor(row).softmax(-1).tolist()
        right = q.choices.index(q.answer)
        wrong = max((k for k in range(len(q.choices)) if k != right), key=lambda k: p[k])
        gap = p[right] - p[wrong]
        if i not in least or gap < least[i][0]:
            reason = "answered_wrong" if best_choices([row], [q.choices])[0] != q.answer else "answered_right"
            least[i] = (gap, AnswerPair(q.question, q.answer, q.choices[wrong], p[right], p[wrong], reason))
    return [least[i][1] if i in least else Dropped(NO_QUESTION) for i in range(len(qa))]


def drawn_scores(backbone: Backbone, judge: Backbone, texts: list[list[str]], qa: tuple, s: CurationSettings,
                 gen: GenerationConfig) -> list[list[float | None]]:
    """Each record's texts scored by drawing one image from each with the policy and answering the
    record's questions about it with the judge: its self-VQA accuracy (the graded self-score with
    `image_score` graded). None for a text the model cannot take as a prompt."""
    drawable = [(i, j) for i, ts in enumerate(texts) for j, t in enumerate(ts) if t.strip() and not backbone.prompt_problems([t])]
    out: list[list[float | None]] = [[None] * len(ts) for ts in texts]
    if not drawable:
        return out
    tokens = backbone.generate([texts[i][j] for i, j in drawable], 1, gen).cpu()
    scores = self_vqa(judge, judge.prepare_generated(tokens), qa, [i for i, _ in drawable], s.choice_score)
    values = (scores.graded if s.image_score == "graded" else scores.accuracy).tolist()
    for (i, j), x in zip(drawable, values):
        out[i][j] = x
    return out


def _choose(previous: Pair | None, samples: list[Sample], threshold: float | None, round_index: int) -> tuple[Pair | None, str]:
    if round_index == 0:
        return initial_pair(samples, min_chosen_score=threshold)
    return update_pair(previous, samples, min_chosen_score=threshold)


def curate(backbone: Backbone, similarity, data: HomologousData, out: Path, s: CurationSettings,
           previous: dict[str, Preference], rank: int = 0, processes: int = 1, world: World | None = None,
           judge: Backbone | None = None) -> None:
    """Curate this process's share of the batches into its shard (resumable); `world` and `judge` as in
    `curate_batch`."""
    check_curation_data(data, s, world)
    if rank == 0 and s.pair_source == "oracle":
        say(f"pair source: the world's oracle ranks the images ({NOT_SELF_CURATED})")
    out.mkdir(parents=True, exist_ok=True)
    shard = out / "shards" / f"shard-{rank}-of-{processes}.jsonl"
    shard.parent.mkdir(exist_ok=True)
    done_prefs = read_lines(shard)
    atomic_write_text(shard, "".join(to_line(p) for p in done_prefs))  # drop a cut line, if any
    done = {p.id for p in done_prefs}
    records = data.records
    if rank == 0:
        finished = sum(len(read_lines(f)) for f in shard.parent.glob(f"shard-*-of-{processes}.jsonl"))
        if finished:
            say(f"resuming: {finished} of {len(records)} records curated in {out}")
    batches = [records[i : i + s.curate_batch_size] for i in range(0, len(records), s.curate_batch_size)]
    mine = [(b, batch) for b, batch in enumerate(batches) if b % processes == rank]
    todo = [(b, batch) for b, batch in mine if not all(r.id in done for r in batch)]
    total = sum(len(batch) for _, batch in mine)
    # counts records; starts at those done before, so its rate and estimate come from this process's work
    bar = tqdm(total=total, initial=total - sum(len(batch) for _, batch in todo), desc=f"curate round {s.round + 1}", unit="record",
               disable=rank != 0, dynamic_ncols=True)
    with open(shard, "a", encoding="utf-8") as f, bar:
        for b, batch in todo:
            seed = s.seed * 1_000_003 + s.round * 10_007 + b
            new = [p for p in curate_batch(backbone, similarity, batch, previous, s, seed, world, judge) if p.id not in done]
            f.write("".join(to_line(p) for p in new))
            f.flush()
            bar.update(len(batch))


def merge(out: Path, data: HomologousData, processes: int, extra_manifest: dict) -> dict:
    """Join the shards by id in input order into prefs.jsonl and write the manifest."""
    by_id: dict[str, Preference] = {}
    for rank in range(processes):
        for pref in read_lines(out / "shards" / f"shard-{rank}-of-{processes}.jsonl"):
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
    counts["held_out_captions"] = sum(p.held_out_samples for p in prefs)  # sampled, named a held-out prompt, left out
    for b in ("und", "gen"):
        counts[f"{b}_dropped"] = dict(Counter(getattr(p, b).reason for p in prefs if not p.has(b)))
    for b in ("und", "gen"):
        counts[f"{b}_kept_by"] = dict(Counter(getattr(p, b).reason for p in prefs if p.has(b)))
    ranked_by = Counter(p.gen.ranked_by for p in prefs if p.has("gen"))
    counts["gen_ranked_by"] = dict(ranked_by)
    self_curated = "oracle" not in ranked_by
    manifest = {**extra_manifest, "self_curated": self_curated, **({} if self_curated else {"pairs": NOT_SELF_CURATED}),
                "counts": counts, "self_judge": self_judge_agreement(p.gen for p in prefs if p.has("gen"))}
    atomic_write_json(out / MANIFEST, manifest)
    return manifest
