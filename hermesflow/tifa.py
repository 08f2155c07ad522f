"""TIFA's question format (Hu et al. 2023, github.com/Yushi-Hu/tifa): the one file format every
question source writes and `--questions` reads.

A JSON list with one entry per question, the entries of a caption adjacent:

    {"id": "a17", "caption": "a red circle above a blue square", "element": "circle",
     "element_type": "object", "question": "is there a circle?", "choices": ["yes", "no"],
     "answer": "yes"}

`id` is the data record's id (TIFA's own file uses its caption ids the same way). A JSON Lines file
of the same entries is read too. Our records keep `element_type` as the question's `type`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from hermesflow.errors import DataError, UsageError
from hermesflow.io import atomic_write_text
from hermesflow.records import QA, BadRecord, HomologousData, check_qa, quote


def tifa_entries(record_id: str, caption: str, qas: tuple[QA, ...] | list[QA], elements: list[str] | None = None) -> list[dict]:
    """A caption's questions as TIFA entries (`element` is the word a question is about, if known)."""
    return [{"id": record_id, "caption": caption, "element": (elements[i] if elements else ""),
             "element_type": q.type, "question": q.question, "choices": list(q.choices), "answer": q.answer}
            for i, q in enumerate(qas)]


def write_tifa(path: str | Path, entries: list[dict]) -> None:
    atomic_write_text(path, json.dumps(entries, indent=1, ensure_ascii=False) + "\n")


def read_tifa(path: str | Path) -> dict[str, tuple[QA, ...]]:
    """The questions of a TIFA-format file by id; DataError names every bad entry by its number."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"questions file {path} not found")
    text = path.read_text(encoding="utf-8-sig")
    try:
        entries = json.loads(text)
    except json.JSONDecodeError:
        try:
            entries = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise DataError([f"{path.name}: neither a JSON list nor JSON Lines of TIFA entries ({e.msg}, line {e.lineno})"]) from None
    if not isinstance(entries, list):
        raise DataError([f"{path.name}: expected a JSON list of TIFA entries"])
    by_id: dict[str, list[dict]] = defaultdict(list)
    problems = []
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), (str, int)) or isinstance(entry.get("id"), bool):
            problems.append(f"{path.name} entry {number}: must be an object with an \"id\"")
            continue
        item = dict(entry)
        item.setdefault("type", item.get("element_type"))
        by_id[str(entry["id"])].append(item)
    out = {}
    for record_id, items in by_id.items():
        try:
            qas = check_qa(items)
        except BadRecord as e:
            problems.append(f"{path.name} (id {quote(record_id)}): {e}")
            continue
        repeated = {q.question for q in qas if sum(r.question == q.question for r in qas) > 1}
        if repeated:
            problems.append(f"{path.name} (id {quote(record_id)}): question repeats: {quote(min(repeated))}")
            continue
        out[record_id] = qas
    if problems:
        raise DataError(problems)
    return out


def attach_questions(data: HomologousData, path: str | Path) -> HomologousData:
    """Give the records without questions those of a TIFA-format file (records with their own keep them)."""
    questions = read_tifa(path)
    records = [replace(r, qa=questions.get(r.id, ())) if not r.qa else r for r in data.records]
    return replace(data, records=records)
