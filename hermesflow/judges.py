"""The judges: who answers the TIFA questions about an image.

- the self-judge (`self_vqa`): the model's own multiple-choice scores, ranking its images in
  curation (as in the paper) and rewarding them in GRPO;
- a data set's exact judge (`World`, the shapes world's oracle), passed in by recipes;
- `VLMJudge`, for evaluating a model the world oracle cannot judge: it asks a vision-language model
behind an OpenAI-compatible endpoint (the paper's GPT-4o role): the image as a base64 PNG in the chat
message, the question and its choices as text, a JSON reply `{"answer": one of the choices}`.
Replies are checked (an answer not among the choices is asked again), retried and cached exactly as
for question generation (`hermesflow.api`); the cache key holds the model, the image's bytes, the
question and its choices.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from hermesflow.api import BadReply, ChatClient, ReplyCache, api_client, cache_key, in_order, parse_json_object
from hermesflow.options import ApiOptions
from hermesflow.prefs import ImagePair
from hermesflow.results import Evaluation
from hermesflow.stats import mean_by, wilson

NOT_SELF_CURATED = "NOT self-curated: images ranked by the world's exact oracle (a control)"


@dataclass(frozen=True)
class SelfScores:
    """The model's judgement of each image: `accuracy` (hard self-VQA: the share of questions its
    answer gets right) and `graded` (the mean probability its choice scores give the right answers)."""

    accuracy: np.ndarray
    graded: np.ndarray


def vqa_scores(choice_logps: Sequence[Sequence[float]], truth: Sequence[int], owners: Sequence[int], n: int) -> SelfScores:
    """Each image's self-VQA scores, means over its questions: hard, 1 when the highest-scoring
    option (the first among equals, as `answer`) is the correct one; graded, the probability of the
    correct option under the softmax of the option scores. `choice_logps[k]` are question k's option
    scores, `truth[k]` the index of its correct option, `owners[k]` its image (of `n`)."""
    hard = [float(max(range(len(s)), key=lambda k: s[k]) == t) for s, t in zip(choice_logps, truth)]
    graded = [float(torch.tensor(s, dtype=torch.float64).softmax(0)[t]) for s, t in zip(choice_logps, truth)]
    return SelfScores(mean_by(owners, hard, n), mean_by(owners, graded, n))


def self_vqa(backbone, inputs: torch.Tensor, qa: Sequence, owners: Sequence[int], score: str = "sum") -> SelfScores:
    """Acc(x_j) and the graded s(x_j) = mean_q softmax(choice log-likelihoods)[correct answer] of
    each image j: `inputs[j]` are its understanding inputs, `owners[j]` its record, `qa[r]` that
    record's questions. One call to `choice_logps` gives both, so the answer is the argmax of the
    same scores."""
    rows, questions, choices, truth = [], [], [], []
    for j, r in enumerate(owners):
        for q in qa[r]:
            rows.append(j)
            questions.append(q.question)
            choices.append(list(q.choices))
            truth.append(list(q.choices).index(q.answer))
    with torch.no_grad():
        logps = backbone.choice_logps(inputs[rows], questions, choices, score=score)
    return vqa_scores(logps, truth, rows, len(owners))


def self_judge_agreement(pairs: Iterable[ImagePair]) -> dict:
    """How far the model's own ranking of its kept image pairs agrees with the exact oracle's: among
    the pairs the oracle could judge (`pairs`), those where it scores chosen and rejected differently
    (`oracle_differs`), the share where it prefers the chosen image (`agreement`, with a 95% Wilson
    `interval`). A tie says nothing either way, so ties are left out of the share and counted apart
    (`ties`). Pooling several rounds or seeds is this function on their pairs together. The one
    definition of agreement in HermesFlow: the manifest, the report and `ablate` all use it."""
    kept = [g for g in pairs if g.chosen_oracle is not None]
    if not kept:
        return {"pairs": 0}
    differ = [g for g in kept if g.chosen_oracle != g.rejected_oracle]
    agree = sum(g.chosen_oracle > g.rejected_oracle for g in differ)
    ranked = sorted({g.ranked_by for g in kept})
    return {
        # with oracle-ranked pairs (--pair-source oracle) the agreement is by construction, not a measurement of the model
        "ranked_by": ranked if len(ranked) > 1 else ranked[0],
        "self_curated": all(g.self_curated for g in kept),
        **({} if all(g.self_curated for g in kept) else {"note": NOT_SELF_CURATED}),
        "pairs": len(kept), "oracle_differs": len(differ), "agree": agree, "ties": len(kept) - len(differ),
        "agreement": agree / len(differ) if differ else None, "interval": list(wilson(agree, len(differ))) if differ else None,
        "chosen_oracle_accuracy": float(np.mean([g.chosen_oracle for g in kept])),
        "rejected_oracle_accuracy": float(np.mean([g.rejected_oracle for g in kept])),
    }


class World(Protocol):
    """What a data set with exact knowledge of its images (the shapes world, `world.judge.ShapesWorld`)
    gives the components, which never look inside its scenes. Recipes pass it in; without it a
    component judges with the model itself and says so."""

    name: str  # what metrics call its judgement, e.g. "oracle"

    def knows(self, record) -> bool: ...  # whether it can judge images for this record (or EvalItem)

    def answer(self, images: np.ndarray, owners: list[int], questions: list[str], choices: list[list[str]],
               names: list[str] | None = None) -> list[str | None]: ...

    def accuracy(self, images: np.ndarray, qa: tuple, owners: list[int]) -> np.ndarray: ...

    def reads(self, caption: str) -> bool: ...  # whether its prompt grammar reads the caption

    def perturbed(self, caption: str, key: str) -> str | None: ...  # one attribute swapped, drawn from key; never held out

    def holds_out(self, caption: str) -> bool: ...  # a prompt kept out of post-training, to measure generation on

    def true_of(self, caption: str, record) -> bool | None: ...

    def questions(self, record, seed: int = 0) -> list | None: ...

    def metrics(self, items: list, generated: np.ndarray, result: Evaluation) -> Evaluation: ...  # with its own numbers


PROMPT_VERSION = "judge-1"
SYSTEM_PROMPT = ("You answer multiple-choice questions about an image. Look only at the image. Reply with JSON "
                 'only: {"answer": <one of the choices, copied exactly>}.')


def png_data_url(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _answer_parser(choices: Sequence[str]):
    lowered = {c.lower(): c for c in choices}

    def parse(content: str) -> str:
        answer = parse_json_object(content).get("answer")
        if not isinstance(answer, str) or answer.strip().lower() not in lowered:
            raise BadReply(f"answer {answer!r} is not among the choices {list(choices)}")
        return lowered[answer.strip().lower()]

    return parse


def judge_setting(judge: str, api: ApiOptions, questions: Path | None) -> dict:
    """What an evaluation's judge adds to its recorded settings: nothing for the default judges, so
    evaluations made before the option existed keep their digest; the VLM and the questions file else."""
    from hermesflow.stages import file_digest

    out = {}
    if judge == "vlm":
        out["judge"] = f"vlm:{api.api_model}"
    if questions:
        out["questions"] = file_digest(questions)
    return out


def vlm_judge(judge: str, api: ApiOptions, out: Path) -> VLMJudge | None:
    """The VLM judge of `--judge vlm` (None otherwise); its cache sits in `out` unless --api-cache."""
    if judge != "vlm":
        return None
    return VLMJudge(api_client(api), ReplyCache(api.api_cache or Path(out) / "judge_cache.jsonl"), api.workers)


class VLMJudge:
    """Answers questions about images through an OpenAI-compatible vision chat endpoint."""

    def __init__(self, client: ChatClient, cache: ReplyCache, workers: int = 1):
        self.client, self.cache, self.workers = client, cache, workers
        self.name = f"vlm:{client.model}"

    def answer(self, images: Sequence[np.ndarray], owners: Sequence[int], questions: Sequence[str],
               choices: Sequence[Sequence[str]], names: Sequence[str]) -> list[str]:
        """One choice per question; question i is about `images[owners[i]]`, `names[owners[i]]` in errors."""
        urls = {owner: png_data_url(images[owner]) for owner in sorted(set(owners))}
        digests = {owner: hashlib.sha256(url.encode()).hexdigest() for owner, url in urls.items()}

        def ask(i: int) -> str:
            owner, question, options = owners[i], questions[i], list(choices[i])
            key = cache_key("judge", PROMPT_VERSION, self.client.model, digests[owner], question, options)
            answer = self.cache.get(key)
            if answer is not None:
                self.client.count(cached=1)
                return answer
            text = f"Question: {question}\nChoices: {' | '.join(options)}"
            messages = [{"role": "system", "content": SYSTEM_PROMPT},
                        {"role": "user", "content": [{"type": "text", "text": text},
                                                     {"type": "image_url", "image_url": {"url": urls[owner]}}]}]
            schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": options}},
                      "required": ["answer"], "additionalProperties": False}
            answer = self.client.ask(messages, _answer_parser(options), what=f"{names[owner]}, question {question!r}",
                                     schema=schema)
            self.cache.put(key, answer)
            return answer

        return list(in_order(ask, range(len(questions)), self.workers, f"judge {self.name}", self.client))
