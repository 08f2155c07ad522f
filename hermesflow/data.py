"""Reading homologous data: JSON Lines of {id, image, caption, qa?, category?, scene?}.

Every record is checked before any work starts, and every bad one is reported with its file, line,
id and reason (`data.jsonl line 14 (id "a17"): image "x.png" not found`). By default any bad record
stops the job with a DataError; with `skip_bad` the bad records are reported and left out.
Images are paths relative to the data file and may not leave its folder.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from hermesflow.errors import DataError, UsageError
from hermesflow.world.questions import QA
from hermesflow.world.scenes import IMAGE_SIZE, Scene

IMAGE_FORMATS = ("PNG", "JPEG")


@dataclass(frozen=True)
class Record:
    """One homologous example: an image and its caption, optionally with questions about it."""

    id: str
    image_path: Path
    caption: str
    qa: tuple[QA, ...] = ()
    category: str | None = None
    scene: Scene | None = None
    line: int = 0

    def load_image(self) -> np.ndarray:
        """The image as an (H, W, 3) uint8 array (it was checked when the data was read)."""
        with Image.open(self.image_path) as img:
            return np.asarray(img.convert("RGB"))


@dataclass
class HomologousData:
    """The good records of a data file, and one message per bad record that was skipped."""

    path: Path
    records: list[Record]
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "path": str(self.path),
            "records": len(self.records),
            "skipped": len(self.skipped),
            "categories": dict(sorted(Counter(r.category or "none" for r in self.records).items())),
            "question_types": dict(sorted(Counter(q.type for r in self.records for q in r.qa).items())),
            "questions": sum(len(r.qa) for r in self.records),
        }


class _Bad(Exception):
    """Internal: one record's reason for being rejected."""


def _text(obj: dict, key: str, *, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if key not in obj:
        raise _Bad(f'missing field "{key}"')
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f'field "{key}" must be a non-empty string, got {json.dumps(value)[:60]}')
    return value


def _check_image(root: Path, rel: str, image_size: int | None) -> Path:
    if Path(rel).is_absolute() or rel.startswith(("/", "\\")):
        raise _Bad(f'image "{rel}" is an absolute path; use a path relative to the data file')
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise _Bad(f'image "{rel}" points outside the data folder {root}')
    if not path.is_file():
        raise _Bad(f'image "{rel}" not found')
    try:
        with Image.open(path) as img:
            img.load()
            fmt, mode, size = img.format, img.mode, img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise _Bad(f'image "{rel}" cannot be read ({type(e).__name__}: {e})') from None
    if fmt not in IMAGE_FORMATS:
        raise _Bad(f'image "{rel}" is {fmt}; expected one of {"/".join(IMAGE_FORMATS)}')
    if mode != "RGB":
        raise _Bad(f'image "{rel}" has mode {mode}; expected RGB (convert it first)')
    if image_size is not None and size != (image_size, image_size):
        raise _Bad(f'image "{rel}" is {size[0]}x{size[1]}; expected {image_size}x{image_size}')
    return path


def _check_qa(items: object) -> tuple[QA, ...]:
    if not isinstance(items, list):
        raise _Bad('field "qa" must be a list of {question, choices, answer, type}')
    qas = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise _Bad(f"qa[{i}] must be an object")
        try:
            question, answer, kind = (_text(item, k) for k in ("question", "answer", "type"))
        except _Bad as e:
            raise _Bad(f"qa[{i}]: {e}") from None
        choices = item.get("choices")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise _Bad(f'qa[{i}]: "choices" must be a list of at least two strings')
        if len(set(choices)) != len(choices):
            raise _Bad(f"qa[{i}]: choices repeat: {choices}")
        if answer not in choices:
            raise _Bad(f'qa[{i}]: answer "{answer}" is not among the choices {choices}')
        qas.append(QA(question, tuple(choices), answer, kind))
    return tuple(qas)


def _check_record(obj: object, root: Path, image_size: int | None) -> Record:
    if not isinstance(obj, dict):
        raise _Bad(f"a record must be a JSON object, got {type(obj).__name__}")
    rel = _text(obj, "image")
    caption = _text(obj, "caption")
    path = _check_image(root, rel, image_size)
    qa = _check_qa(obj["qa"]) if obj.get("qa") is not None else ()
    category = _text(obj, "category", required=False)
    scene = None
    if obj.get("scene") is not None:
        try:
            scene = Scene.from_json(obj["scene"])
        except (TypeError, KeyError, ValueError) as e:
            raise _Bad(f'field "scene" is not a valid scene ({e})') from None
    return Record(str(obj["id"]), path, caption, qa, category, scene)


def _record_id(obj: object) -> str | None:
    if isinstance(obj, dict) and isinstance(obj.get("id"), (str, int)) and str(obj["id"]).strip():
        return str(obj["id"])
    return None


def read_homologous(path: str | Path, *, image_size: int | None = IMAGE_SIZE, skip_bad: bool = False) -> HomologousData:
    """Read and check a homologous data file (or a folder holding `data.jsonl`).

    Raises DataError listing every bad record unless `skip_bad`, in which case they are listed in
    `HomologousData.skipped`. `image_size=None` accepts images of any size.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "data.jsonl"
    if not path.is_file():
        raise UsageError(f"data file {path} not found")
    root = path.parent
    records: list[Record] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    with open(path, "rb") as f:
        raw_lines = f.read().split(b"\n")
    for number, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        record_id = None
        try:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _Bad(f"not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})") from None
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise _Bad(f"invalid JSON ({e.msg} at column {e.colno})") from None
            record_id = _record_id(obj)
            if record_id is None:
                raise _Bad('missing or empty field "id"' if isinstance(obj, dict) else "not a JSON object")
            if record_id in first_line:
                raise _Bad(f"duplicate id (first used on line {first_line[record_id]})")
            first_line[record_id] = number
            record = _check_record(obj, root, image_size)
            records.append(replace(record, line=number))
        except _Bad as e:
            shown = f'"{record_id}"' if record_id is not None else "unknown"
            problems.append(f"{path.name} line {number} (id {shown}): {e}")
    if problems and not skip_bad:
        raise DataError(problems)
    if not records:
        raise DataError([f"{path}: no usable records"])
    return HomologousData(path, records, problems)
