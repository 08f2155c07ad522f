"""The records that flow through the method, and their checks.

`QA` (a TIFA-style question), `Record` (one homologous example), `HomologousData` (the good records
of a data file), `EvalItem` (what evaluation asks a model about). The readers (`hermesflow.data`,
`hermesflow.tifa`, `hermesflow.importer`) share the checks here, so a bad value is named the same
way in every format: `BadRecord` carries one record's reason, `quote` shows a value on one line.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# The TIFA element types our question sources write, in the order tables show them.
QUESTION_TYPES = ("object", "count", "color", "shape", "spatial")
# GenEval's six prompt categories (Ghosh et al. 2023), in its order.
GENEVAL_CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


@dataclass(frozen=True)
class QA:
    """One question with its choices and answer, in TIFA's format."""

    question: str
    choices: tuple[str, ...]
    answer: str
    type: str

    def to_json(self) -> dict:
        return {"question": self.question, "choices": list(self.choices), "answer": self.answer, "type": self.type}


@dataclass
class EvalItem:
    """One evaluation example: a true image, its caption (the generation prompt) and questions."""

    id: str
    image: np.ndarray
    caption: str
    qa: tuple[QA, ...]
    scene: object | None = None  # the world's scene graph, known for the world: its oracle can judge generated images


def to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL image as an (H, W, 3) uint8 array: EXIF rotation applied, transparency laid on white,
    16-bit and 32-bit grey scaled down (PIL's own convert("RGB") clips them to white)."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        grey = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or grey.max(initial=0) > 255 else 255.0
        if img.mode == "F" and grey.max(initial=0) <= 1.0:
            top = 1.0
        grey = np.clip(np.round(grey / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info or img.mode in ("PA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    return np.asarray(img.convert("RGB"))


@dataclass(frozen=True)
class Record:
    """One homologous example: an image and its caption, optionally with questions about it."""

    id: str
    image_path: Path
    caption: str
    qa: tuple[QA, ...] = ()
    category: str | None = None
    scene: object | None = None  # the world's scene graph (world.scenes.Scene) where the data has one; opaque here
    line: int = 0  # the line of a JSON Lines file, or the row index of other formats
    image_bytes: bytes | None = field(default=None, repr=False)  # an image stored inside the row

    def load_image(self) -> np.ndarray:
        """The image as an (H, W, 3) uint8 RGB array (it was checked when the data was read)."""
        source = io.BytesIO(self.image_bytes) if self.image_bytes is not None else self.image_path
        with Image.open(source) as img:
            return to_rgb(img)


@dataclass
class HomologousData:
    """The good records of a data file, and one message per bad record that was skipped."""

    path: Path
    records: list[Record]
    skipped: list[str] = field(default_factory=list)
    format: str = "jsonl"  # jsonl, parquet, datasets or imagefolder

    def where(self, record: Record) -> str:
        """`data.jsonl line 14 (id "a17")`, or `train.parquet index 13 (id "a17")`."""
        unit = "line" if self.format in ("jsonl", "imagefolder") else "index"
        return f"{self.path.name} {unit} {record.line} (id {quote(record.id)})"

    def summary(self) -> dict:
        return {
            "path": str(self.path),
            "format": self.format,
            "records": len(self.records),
            "skipped": len(self.skipped),
            "without_qa": sum(not r.qa for r in self.records),
            "categories": dict(sorted(Counter(r.category or "none" for r in self.records).items())),
            "question_types": dict(sorted(Counter(q.type for r in self.records for q in r.qa).items())),
            "questions": sum(len(r.qa) for r in self.records),
        }


class BadRecord(Exception):
    """One record's reason for being rejected (the reader adds where the record is)."""


def quote(value: object, limit: int = 80) -> str:
    """A value from the data as JSON, shortened, with unprintable characters escaped: the data may
    hold any text, and each problem must stay on one line of the report."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except RecursionError:  # nested almost as deeply as json.loads allows
        text = f"{type(value).__name__} nested too deeply to show"
    except ValueError:  # an integer with more digits than Python will print
        text = f"{type(value).__name__} too large to show"
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


QUESTIONS_HINT = ("`hermesflow questions --data DATA --out questions.jsonl` writes TIFA-format questions for captions "
                  "(from an LLM endpoint, or from world scenes), and --questions questions.jsonl attaches them")


def check_text(obj: dict, key: str, *, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if key not in obj:
        raise BadRecord(f'missing field "{key}"')
    if not isinstance(value, str) or not value.strip():
        raise BadRecord(f'field "{key}" must be a non-empty string, got {quote(value)}')
    return value


def check_id(obj: dict, key: str = "id") -> str:
    if key not in obj:
        raise BadRecord(f'missing field "{key}"')
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise BadRecord(f'field "{key}" must be a non-empty string or an integer, got {quote(value)}')
    return str(value)


def check_qa(items: object) -> tuple[QA, ...]:
    if not isinstance(items, list):
        raise BadRecord('field "qa" must be a list of {question, choices, answer, type}')
    qas = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise BadRecord(f"qa[{i}] must be an object")
        try:
            question, answer, kind = (check_text(item, k) for k in ("question", "answer", "type"))
        except BadRecord as e:
            raise BadRecord(f"qa[{i}]: {e}") from None
        choices = item.get("choices")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise BadRecord(f'qa[{i}]: "choices" must be a list of at least two strings')
        if len(set(choices)) != len(choices):
            raise BadRecord(f"qa[{i}]: choices repeat: {quote(choices)}")
        if answer not in choices:
            raise BadRecord(f"qa[{i}]: answer {quote(answer)} is not among the choices {quote(choices)}")
        qas.append(QA(question, tuple(choices), answer, kind))
    return tuple(qas)
