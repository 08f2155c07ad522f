"""Judges of generated images for evaluation: who answers the TIFA questions about an image.

The self-judge (the model answering about its own images) stays the default for curation, as in the
paper. For evaluating a model the world oracle cannot judge, `VLMJudge` asks a vision-language model
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
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from hermesflow.api import BadReply, ChatClient, ReplyCache, api_client, cache_key, in_order, parse_json_object

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


def judge_setting(options) -> dict:
    """What an evaluation's judge adds to its recorded settings: nothing for the default judges, so
    evaluations made before the option existed keep their digest; the VLM and the questions file else."""
    from hermesflow.stages import file_digest

    out = {}
    if getattr(options, "judge", "auto") == "vlm":
        out["judge"] = f"vlm:{options.api_model}"
    if getattr(options, "questions", None):
        out["questions"] = file_digest(options.questions)
    return out


def vlm_judge(options, out: Path) -> VLMJudge | None:
    """The VLM judge of `--judge vlm` (None otherwise); its cache sits in `out` unless --api-cache."""
    if getattr(options, "judge", "auto") != "vlm":
        return None
    return VLMJudge(api_client(options), ReplyCache(options.api_cache or Path(out) / "judge_cache.jsonl"), options.workers)


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
