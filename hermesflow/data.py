"""Reading homologous data: JSON Lines of {id, image, caption, qa?, category?, scene?}.

Every record is checked before any work starts, and every bad one is reported with its file, line,
id and reason (`data.jsonl line 14 (id "a17"): image "x.png" not found`). By default any bad record
stops the job with a DataError; with `skip_bad` the bad records are reported and left out.
Images are paths relative to the data file and may not leave its folder.
"""

from __future__ import annotations

import codecs
import json
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from hermesflow.errors import DataError, UsageError
from hermesflow.world.questions import QA
from hermesflow.world.scenes import Scene

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


def _quote(value: object, limit: int = 80) -> str:
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


def _text(obj: dict, key: str, *, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if key not in obj:
        raise _Bad(f'missing field "{key}"')
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f'field "{key}" must be a non-empty string, got {_quote(value)}')
    return value


def _record_id(obj: dict) -> str:
    if "id" not in obj:
        raise _Bad('missing field "id"')
    value = obj["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise _Bad(f'field "id" must be a non-empty string or an integer, got {_quote(value)}')
    return str(value)


def _check_image(root: Path, rel: str, image_size: int | None) -> Path:
    shown = _quote(rel)
    if Path(rel).is_absolute() or rel.startswith(("/", "\\")):
        raise _Bad(f"image {shown} is an absolute path; use a path relative to the data file")
    if "\0" in rel:
        raise _Bad(f"image {shown} is not a valid path (it holds a NUL character)")
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise _Bad(f"image {shown} points outside the data folder {root}")
    try:
        with Image.open(path) as img:
            # the header first, so that a wrong or huge image is refused before its pixels are decoded
            if img.format not in IMAGE_FORMATS:
                raise _Bad(f'image {shown} is {img.format}; expected one of {"/".join(IMAGE_FORMATS)}')
            if img.mode != "RGB":
                raise _Bad(f"image {shown} has mode {img.mode}; expected RGB (convert it first)")
            if image_size is not None and img.size != (image_size, image_size):
                width, height = img.size
                raise _Bad(f"image {shown} is {width}x{height}; expected {image_size}x{image_size}")
            img.load()  # decoding the pixels is what finds truncated and corrupt files
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise _Bad(f"image {shown} not found") from None
    except UnidentifiedImageError:
        raise _Bad(f"image {shown} cannot be read (not a {' or '.join(IMAGE_FORMATS)} file)") from None
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        reason = getattr(e, "strerror", None) or e  # strerror leaves out the (long) file name
        raise _Bad(f"image {shown} cannot be read ({type(e).__name__}: {reason})") from None
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
            raise _Bad(f"qa[{i}]: choices repeat: {_quote(choices)}")
        if answer not in choices:
            raise _Bad(f"qa[{i}]: answer {_quote(answer)} is not among the choices {_quote(choices)}")
        qas.append(QA(question, tuple(choices), answer, kind))
    return tuple(qas)


def _check_scene(items: object) -> Scene:
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise _Bad('field "scene" must be a list of {shape, color, row, col} objects')
    try:
        return Scene.from_json(items)
    except KeyError as e:
        raise _Bad(f'field "scene" is not a valid scene (an object has no {e})') from None
    except (TypeError, ValueError) as e:
        raise _Bad(f'field "scene" is not a valid scene ({e})') from None


def _check_record(obj: dict, record_id: str, root: Path, image_size: int | None) -> Record:
    rel = _text(obj, "image")
    caption = _text(obj, "caption")
    path = _check_image(root, rel, image_size)
    qa = _check_qa(obj["qa"]) if obj.get("qa") is not None else ()
    category = _text(obj, "category", required=False)
    scene = _check_scene(obj["scene"]) if obj.get("scene") is not None else None
    return Record(record_id, path, caption, qa, category, scene)


def read_homologous(path: str | Path, *, image_size: int | None = None, skip_bad: bool = False) -> HomologousData:
    """Read and check a homologous data file (or a folder holding `data.jsonl`).

    Raises DataError listing every bad record unless `skip_bad`, in which case they are listed in
    `HomologousData.skipped`. `image_size=None` (the default) accepts images of any size: whether a
    backbone can read them is `check_fit`'s question.
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
            if number == 1:  # a byte-order mark, as some editors write, is allowed at the start
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _Bad(f"not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})") from None
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                reason = e.msg.removesuffix(" starting at")  # "Unterminated string starting at"
                raise _Bad(f"invalid JSON ({reason} at column {e.colno})") from None
            except ValueError:  # the one other thing json.loads refuses: Python's limit on int digits
                raise _Bad(f"invalid JSON (a number longer than {sys.get_int_max_str_digits()} digits)") from None
            except RecursionError:
                raise _Bad("invalid JSON (nested too deeply)") from None
            if not isinstance(obj, dict):
                raise _Bad(f"a record must be a JSON object, got {_quote(obj)}")
            record_id = _record_id(obj)
            if record_id in first_line:
                raise _Bad(f"duplicate id (first used on line {first_line[record_id]})")
            first_line[record_id] = number
            record = _check_record(obj, record_id, root, image_size)
            records.append(replace(record, line=number))
        except _Bad as e:
            shown = _quote(record_id) if record_id is not None else "unknown"
            problems.append(f"{path.name} line {number} (id {shown}): {e}")
    if problems and not skip_bad:
        raise DataError(problems)
    if not records:  # with skip_bad, say why each record went, or "no usable records" explains nothing
        raise DataError([*problems, f"{path}: no usable records"])
    return HomologousData(path, records, problems)


def check_fit(backbone, data: HomologousData, limit: int = 20) -> None:
    """Refuse, before any work, data the backbone cannot represent (unknown words, over-long texts,
    images its tokenizer cannot read): every record's problems, by line and id, at once."""
    problems = []
    for r in data.records:
        texts = [r.caption] + [t for q in r.qa for t in (q.question, *q.choices)]
        for problem in backbone.fit_problems(r.load_image(), texts):
            problems.append(f"{data.path.name} line {r.line} (id {_quote(r.id)}): {problem}")
    if problems:
        shown = problems[:limit] + ([f"... and {len(problems) - limit} more"] if len(problems) > limit else [])
        raise DataError([f"{data.path}: {len(problems)} problems for the {backbone.model_type} model "
                         f"(it cannot represent this data; nothing was run)", *shown])
