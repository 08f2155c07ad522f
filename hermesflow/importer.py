"""Importing the official HermesFlow repository's preference data (`pair_dpo_data.json`).

Format, as written by Gen-Verse/HermesFlow `datasets/journeydb/get_dpo_data.py` (and its round-2
twin `get_dpo_data_iterative.py`), documented in its README, and read by `training/data.py`
(generation: `caption`, `image_win`, `image_lose`) and `llava/llava_data_vq_unified.py`
(understanding: `img_path`, `caption_win`, `caption_lose`): a list of objects

    {"id": 238, "img_path": "datasets/journeydb/initial_images/238.jpg",
     "prompt": "<JourneyDB prompt>", "caption": "<JourneyDB caption y>",
     "caption_win": "<y_w>", "caption_lose": "<y_l>",
     "bert_score_win": 0.95, "bert_score_lose": 0.60,
     "image_win": "datasets/journeydb/generated_images/238/5.png", "image_lose": ".../238/0.png",
     "vqa_score_win": 0.667, "vqa_score_lose": 0.5}

The writer appends `{...},` per record, so its raw output has no brackets and a trailing comma; the
README shows it inside `[...]` with the trailing comma; the trainer `json.load`s a strict array.
All three forms are read. Paths are kept as written (relative to the official repo's working
directory); nothing here opens the images.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from hermesflow.errors import DataError, UsageError
from hermesflow.records import BadRecord, check_id, quote  # the same record checks and quoting as homologous data


@dataclass(frozen=True)
class OfficialPair:
    """One homologous preference tuple (x, y, x_w, x_l, y_w, y_l); each field names its JSON key."""

    id: str                                # "id" (an integer JourneyDB index in the official data)
    image: str                             # "img_path": the homologous image x
    prompt: str                            # "prompt": JourneyDB's generation prompt
    caption: str                           # "caption": y (the official trainer also uses it as the t2i prompt)
    caption_chosen: str                    # "caption_win": y_w
    caption_rejected: str                  # "caption_lose": y_l
    image_chosen: str                      # "image_win": x_w (a generated PNG)
    image_rejected: str                    # "image_lose": x_l
    caption_chosen_score: float | None     # "bert_score_win" (BERT CLS cosine to y), if present
    caption_rejected_score: float | None   # "bert_score_lose"
    image_chosen_score: float | None       # "vqa_score_win" (self-VQA accuracy), if present
    image_rejected_score: float | None     # "vqa_score_lose"

    def tied(self) -> list[str]:
        """The branches ("caption", "image") whose chosen and rejected scores are equal."""
        return [branch for branch, chosen, rejected in (
            ("caption", self.caption_chosen_score, self.caption_rejected_score),
            ("image", self.image_chosen_score, self.image_rejected_score)) if chosen is not None and chosen == rejected]

    def to_json(self) -> dict:
        return dict(vars(self))


_TEXT_KEYS = ("img_path", "prompt", "caption", "caption_win", "caption_lose", "image_win", "image_lose")
_SCORE_PAIRS = (("caption", "bert_score_win", "bert_score_lose"), ("image", "vqa_score_win", "vqa_score_lose"))
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def import_official(path: str | Path) -> list[OfficialPair]:
    """Read and check an official `pair_dpo_data.json`.

    Raises DataError listing every bad record as `<file> record N (id I): reason` (N counts from 1),
    so that one run shows everything to fix; UsageError if the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"official preference file {path} not found")
    name = path.name
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError([f"{name}: not valid UTF-8 (byte {e.object[e.start]:#04x} at offset {e.start})"]) from None
    items = _parse(text, name)
    if not items:
        raise DataError([f"{name}: no records"])
    pairs: list[OfficialPair] = []
    problems: list[str] = []
    first_seen: dict[str, int] = {}
    for number, item in enumerate(items, start=1):
        where = f"{name} record {number}"
        try:
            if not isinstance(item, dict):
                raise BadRecord(f"must be an object, got {type(item).__name__}")
            record_id = check_id(item)
            where += f" (id {record_id})"
            if record_id in first_seen:
                raise BadRecord(f"id repeats record {first_seen[record_id]} (pairs are joined by id)")
            first_seen[record_id] = number
            pairs.append(_check(item, record_id))
        except BadRecord as e:
            problems.append(f"{where}: {e}")
    if problems:
        raise DataError(problems)
    return pairs


def _parse(text: str, name: str) -> list[object]:
    """The records of a strict JSON array, of the README's array with a trailing comma, or of the
    writer's raw `{...},{...},` stream."""
    decoder = json.JSONDecoder()
    pos = _WHITESPACE.match(text, 0).end()
    bracketed = text.startswith("[", pos)
    if bracketed:
        pos = _WHITESPACE.match(text, pos + 1).end()
    items: list[object] = []

    def at_end(p: int) -> bool:
        return p >= len(text) or (bracketed and text[p] == "]")

    while not at_end(pos):
        where = f"{name} record {len(items) + 1}"
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError([f"{where}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg}); "
                             "nothing after it was read"]) from None
        except RecursionError:
            raise DataError([f"{where}: nested too deeply to be a record"]) from None
        except ValueError as e:  # an integer longer than Python converts
            raise DataError([f"{where}: cannot be read ({e})"]) from None
        items.append(item)
        pos = _WHITESPACE.match(text, pos).end()
        if text.startswith(",", pos):
            pos = _WHITESPACE.match(text, pos + 1).end()
        elif not at_end(pos):
            raise DataError([f"{where}: expected ',' after it, found {text[pos:pos + 20]!r}"])
    if bracketed:
        if pos >= len(text):
            raise DataError([f"{name}: the list opened with '[' is never closed"])
        pos = _WHITESPACE.match(text, pos + 1).end()
    if pos < len(text):
        raise DataError([f"{name}: unexpected text after the closing ']': {text[pos:pos + 20]!r}"])
    return items


def _check(item: dict, record_id: str) -> OfficialPair:
    missing = [k for k in _TEXT_KEYS if k not in item]
    if missing:
        raise BadRecord("missing field" + ("s " if len(missing) > 1 else " ") + ", ".join(f'"{k}"' for k in missing))
    for key in _TEXT_KEYS:
        if not isinstance(item[key], str) or not item[key].strip():
            raise BadRecord(f'field "{key}" must be a non-empty string, got {quote(item[key])}')
    scores = {}
    for branch, win, lose in _SCORE_PAIRS:
        chosen, rejected = _score(item, win), _score(item, lose)
        if (chosen is None) != (rejected is None):
            raise BadRecord(f'"{win}" and "{lose}" must be given together')
        # A winner scored below its loser is a broken record. Equal scores are what the official
        # writer produces when all generated images tie or none passes 0.6 (it then reuses the image
        # indices of an earlier record, so the image paths may be wrong too): they are kept, and
        # `tied` lets the caller report and drop them, as training never learns from a tie.
        if chosen is not None and chosen < rejected:
            raise BadRecord(f'{branch} pair is not ordered: "{win}" {chosen} is below "{lose}" {rejected}; '
                       "remove this record")
        scores[branch] = (chosen, rejected)
    return OfficialPair(
        id=record_id, image=item["img_path"], prompt=item["prompt"], caption=item["caption"],
        caption_chosen=item["caption_win"], caption_rejected=item["caption_lose"],
        image_chosen=item["image_win"], image_rejected=item["image_lose"],
        caption_chosen_score=scores["caption"][0], caption_rejected_score=scores["caption"][1],
        image_chosen_score=scores["image"][0], image_rejected_score=scores["image"][1],
    )


def _score(item: dict, key: str) -> float | None:
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRecord(f'field "{key}" must be a number, got {quote(value)}')
    try:
        value = float(value)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise BadRecord(f'field "{key}" must be a finite number, got {quote(item[key])}')
    return value
