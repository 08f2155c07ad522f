"""Questions for captions that have none, in TIFA's format (`hermesflow.tifa`), three ways:

- `scene`: from the record's scene graph (the shapes world), answered exactly;
- a user's TIFA-format file: give it to any verb as `--questions FILE` (nothing to generate);
- `llm`: from a language model behind an OpenAI-compatible chat endpoint, with the prompt below.

The LLM is asked for JSON that follows `REPLY_SCHEMA`; a reply is accepted only if every question
has at least two distinct choices, its answer among them, and no question repeats. Accepted
replies are cached by (prompt version, model, caption): a rerun, or a run killed half way and
started again, asks the endpoint nothing it already answered, and a record whose reply stayed
unusable is never written. The TIFA file is written only when every record has its questions.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from hermesflow.api import BadReply, ChatClient, ReplyCache, cache_key, in_order, parse_json_object
from hermesflow.errors import DataError
from hermesflow.judges import World
from hermesflow.records import QA, HomologousData, Record
from hermesflow.tifa import tifa_entries, write_tifa

# TIFA's element types, as its question files spell them (tifa_v1.0, sample/sample_question_answers.json)
ELEMENT_TYPES = ("object", "animal/human", "attribute", "activity", "spatial", "location", "color", "counting", "food",
                 "material", "shape", "other")

PROMPT_VERSION = "tifa-qg-2"  # part of the cache key: a new prompt asks again
SYSTEM_PROMPT = """You write multiple-choice questions that check whether an image matches its caption, \
in the style of TIFA (Hu et al., 2023).
For each element the caption states (objects, people, animals, counts, colors, materials, shapes, \
spatial relations, actions, locations), write one question whose answer follows from the caption alone.
Each question has 2 to 4 short choices (yes/no questions have the choices "yes" and "no"), the answer \
is exactly one of the choices, and no two questions are the same.
Reply with JSON only: {"questions": [{"question": ..., "choices": [...], "answer": ..., \
"element": the words of the caption the question is about, "element_type": one of """ + ", ".join(ELEMENT_TYPES) + "}]}"

REPLY_SCHEMA = {
    "type": "object",
    "properties": {
        "questions": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "question": {"type": "string"},
                    "choices": {"type": "array", "items": {"type": "string"}, "minItems": 2},
                    "answer": {"type": "string"},
                    "element": {"type": "string"},
                    "element_type": {"type": "string", "enum": list(ELEMENT_TYPES)},
                },
                "required": ["question", "choices", "answer", "element", "element_type"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["questions"],
    "additionalProperties": False,
}


def parse_questions(content: str) -> list[dict]:
    """The questions of a reply, checked (BadReply says what is wrong)."""
    items = parse_json_object(content).get("questions")
    if not isinstance(items, list) or not items:
        raise BadReply('"questions" must be a non-empty list')
    seen, out = set(), []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise BadReply(f"question {i + 1} is not an object")
        question, answer = item.get("question"), item.get("answer")
        choices = item.get("choices")
        if not isinstance(question, str) or not question.strip():
            raise BadReply(f"question {i + 1} has no text")
        if not isinstance(choices, list) or not all(isinstance(c, str) and c.strip() for c in choices):
            raise BadReply(f"question {i + 1} ({question!r}): choices must be a list of strings")
        choices = [c.strip() for c in choices]
        if len(set(choices)) < 2 or len(set(choices)) != len(choices):
            raise BadReply(f"question {i + 1} ({question!r}): needs at least two distinct choices, got {choices}")
        if not isinstance(answer, str) or answer.strip() not in choices:
            raise BadReply(f"question {i + 1} ({question!r}): answer {answer!r} is not among the choices {choices}")
        key = " ".join(question.lower().split())
        if key in seen:
            raise BadReply(f"question {i + 1} repeats {question!r}")
        seen.add(key)
        kind = item.get("element_type")
        kind = "animal/human" if kind in ("animal", "human") else kind  # as TIFA's own generator folds them
        out.append({"question": question.strip(), "choices": choices, "answer": answer.strip(),
                    "element": str(item.get("element") or ""), "type": kind if kind in ELEMENT_TYPES else "other"})
    return out


def llm_questions(client: ChatClient, cache: ReplyCache, record: Record, where: str) -> tuple[list[QA], list[str]]:
    """A record's questions from the LLM (or the cache), and the element each is about."""
    key = cache_key("questions", PROMPT_VERSION, client.model, record.caption)
    items = cache.get(key)
    if items is None:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": f"Caption: {record.caption}"}]
        items = client.ask(messages, parse_questions, what=where, schema=REPLY_SCHEMA)
        cache.put(key, items)
    else:
        client.count(cached=1)
    return [QA(q["question"], tuple(q["choices"]), q["answer"], q["type"]) for q in items], [q["element"] for q in items]


def scene_questions(world: World | None, record: Record, where: str, seed: int = 0) -> list[QA]:
    """The world's exact questions for a record with a scene graph and a world caption."""
    qas = world.questions(record, seed) if world is not None else None
    if qas is None:
        raise DataError([f"{where}: no scene graph and world caption to derive questions from; use --source llm"])
    return qas


def generate_questions(data: HomologousData, out: Path, source: str, client: ChatClient | None = None,
                       cache: ReplyCache | None = None, redo: bool = False, workers: int = 1, world: World | None = None) -> dict:
    """Questions for every record without any (all records with `redo`), written to `out` in TIFA's
    format: from the `world`'s scene graphs (source "scene") or an LLM asked `workers` requests at a time."""
    todo = [r for r in data.records if redo or not r.qa]
    if source == "scene":
        results = ((scene_questions(world, r, data.where(r)), None) for r in tqdm(todo, desc="questions (scene)", unit="caption"))
    else:
        results = in_order(lambda r: llm_questions(client, cache, r, data.where(r)), todo, workers, "questions (llm)", client)
    entries = []
    for record, (qas, elements) in zip(todo, results):
        entries += tifa_entries(record.id, record.caption, qas, elements)
    write_tifa(out, entries)
    return {"records": len(data.records), "asked_for": len(todo), "questions": len(entries), "written": str(out)}
