"""Reading homologous data: records of {id, image, caption, qa?, category?, scene?}.

The records come from our JSON Lines file, a Hugging Face `datasets` folder (save_to_disk), Parquet
files or an imagefolder with `metadata.jsonl` (`hermesflow.sources` reads those rows), under any
column names (`Columns`). Every record is checked before any work starts, and every bad one is
reported with its file, line (or row index), id and reason (`data.jsonl line 14 (id "a17"): image
"x.png" not found`). By default any bad record stops the job with a DataError; with `skip_bad` the
bad records are reported and left out.

Images are paths relative to the data file, or bytes inside the rows; any size and mode (RGBA,
grayscale, 16-bit, palette) is read as RGB. A path written in the data may not be absolute nor climb
out with `..`; one that leaves the folder through a symbolic link (a dataset cache) is refused
unless the user opts in with `follow_symlinks`.
"""

from __future__ import annotations

import codecs
import io
import json
import os
import sys
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from hermesflow.errors import DataError, UsageError
from hermesflow.io import atomic_write_bytes
from hermesflow.options import DataOptions
from hermesflow.records import (
    BadRecord,
    HomologousData,
    Record,
    check_id,
    check_qa,
    check_text,
    quote,
    to_rgb,
)
from hermesflow.sources import locate, rows

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
# what `datasets` stores images inside rows as (it keeps 16-bit, palette and CMYK images as TIFF)
EMBEDDED_FORMATS = IMAGE_FORMATS + ("TIFF", "BMP", "GIF")


@dataclass(frozen=True)
class Columns:
    """Which field of a row holds what, for data whose schema uses other names."""

    id: str = "id"
    image: str = "image"
    caption: str = "caption"
    qa: str = "qa"


def _check_image(root: Path, rel: str, image_size: int | None, follow_symlinks: bool = False) -> Path:
    shown = quote(rel)
    if Path(rel).is_absolute() or rel.startswith(("/", "\\")):
        raise BadRecord(f"image {shown} is an absolute path; use a path relative to the data file")
    if "\0" in rel:
        raise BadRecord(f"image {shown} is not a valid path (it holds a NUL character)")
    if os.path.normpath(rel.replace("\\", "/")).split(os.sep)[0] == "..":
        raise BadRecord(f"image {shown} points outside the data folder {root}")
    path = (root / rel).resolve()
    if not follow_symlinks and not path.is_relative_to(root.resolve()):
        raise BadRecord(f"image {shown} points outside the data folder {root} through a symbolic link; "
                   "pass --follow-symlinks to follow it")
    _check_pixels(path, shown, image_size)
    return path


def _check_pixels(source: Path | io.BytesIO, shown: str, image_size: int | None,
                  formats: tuple[str, ...] = IMAGE_FORMATS) -> None:
    limit = Image.MAX_IMAGE_PIXELS  # --max-pixels (read_data sets it; PIL's own by default)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, in one line of our own
            img = Image.open(source)
        with img:
            # the header first, so that a wrong or huge image is refused before its pixels are decoded
            if img.format not in formats:
                raise BadRecord(f'image {shown} is {img.format}; expected one of {"/".join(formats)}')
            width, height = img.size
            if limit and width * height > limit:
                raise BadRecord(f"image {shown} cannot be read: {width}x{height} is {width * height:,} pixels, more than "
                                f"--max-pixels {limit:,} (a guard against decompression bombs; --max-pixels 0 lifts it)")
            if image_size is not None and img.size != (image_size, image_size):
                raise BadRecord(f"image {shown} is {width}x{height}; expected {image_size}x{image_size}")
            to_rgb(img)  # decoding the pixels is what finds truncated and corrupt files (and odd modes)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise BadRecord(f"image {shown} not found") from None
    except UnidentifiedImageError:
        raise BadRecord(f"image {shown} cannot be read (not a {' or '.join(formats)} file)") from None
    except Image.DecompressionBombError as e:  # past twice the limit PIL refuses at opening, in its own words
        raise BadRecord(f"image {shown} cannot be read: {e.args[0].split(' exceeds')[0].lower()}, more than --max-pixels "
                        f"{limit:,} (a guard against decompression bombs; --max-pixels 0 lifts it)") from None
    except (OSError, SyntaxError, ValueError, TypeError) as e:
        reason = getattr(e, "strerror", None) or e  # strerror leaves out the (long) file name
        raise BadRecord(f"image {shown} cannot be read ({type(e).__name__}: {reason})") from None


def _image_value(obj: dict, key: str, root: Path, image_size: int | None, follow_symlinks: bool) -> tuple[Path, bytes | None]:
    """A row's image: a path relative to the data, raw bytes, or `datasets`' {bytes, path} struct."""
    if key not in obj:
        raise BadRecord(f'missing field "{key}"')
    value = obj[key]
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        if value.get("bytes"):
            value = value["bytes"]
        elif isinstance(value.get("path"), str) and value["path"].strip():
            value = value["path"]
        else:
            raise BadRecord(f'field "{key}" holds neither image bytes nor a path')
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
        _check_pixels(io.BytesIO(data), f'in field "{key}"', image_size, EMBEDDED_FORMATS)
        return root / f"<{key} bytes>", data
    if not isinstance(value, str) or not value.strip():
        raise BadRecord(f'field "{key}" must be a non-empty string, got {quote(value)}')
    return _check_image(root, value, image_size, follow_symlinks), None


def _check_scene(items: object) -> list[dict]:
    """A record's scene graph, kept as read: a list of objects. It is opaque to the method; the world
    that knows such scenes reads them (`hermesflow.world.judge.ShapesWorld.read_data`)."""
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise BadRecord('field "scene" must be a list of {shape, color, row, col} objects')
    return items


def require_column(obj: dict, key: str, flag: str) -> None:
    """A missing column is named with the record's own fields and the flag that picks another."""
    if key not in obj:
        fields = sorted(map(str, obj))
        shown = ", ".join(f'"{f}"' for f in fields[:8]) + (", ..." if len(fields) > 8 else "")
        raise BadRecord(f'missing field "{key}" (its fields: {shown or "none"}; {flag} names the one to use)')


def _check_record(obj: dict, record_id: str, root: Path, image_size: int | None, columns: Columns = Columns(),
                  follow_symlinks: bool = False) -> Record:
    require_column(obj, columns.image, "--image-column")
    require_column(obj, columns.caption, "--caption-column")
    caption = check_text(obj, columns.caption)
    path, image_bytes = _image_value(obj, columns.image, root, image_size, follow_symlinks)
    qa_value = obj.get(columns.qa)
    if isinstance(qa_value, str) and qa_value.strip().startswith("["):  # a column holding JSON text
        try:
            qa_value = json.loads(qa_value)
        except json.JSONDecodeError as e:
            raise BadRecord(f'field "{columns.qa}" is not valid JSON ({e.msg})') from None
    qa = check_qa(qa_value) if qa_value is not None else ()
    category = check_text(obj, "category", required=False)
    scene = _check_scene(obj["scene"]) if obj.get("scene") is not None else None
    return Record(record_id, path, caption, qa, category, scene, image_bytes=image_bytes)


def read_homologous(path: str | Path, *, image_size: int | None = None, skip_bad: bool = False,
                    columns: Columns = Columns(), follow_symlinks: bool = False,
                    questions: str | Path | None = None) -> HomologousData:
    """Read and check homologous data: a JSON Lines file (or a folder holding `data.jsonl`), a
    `datasets` folder, Parquet files or an imagefolder (`hermesflow.sources`).

    Raises DataError listing every bad record unless `skip_bad`, in which case they are listed in
    `HomologousData.skipped`. `image_size=None` (the default) accepts images of any size: whether a
    backbone can read them is `check_fit`'s question. `questions`, a TIFA-format file, gives
    questions to the records that have none (matched by id).
    """
    source = locate(path)
    unit = "line" if source.by_line else "index"
    name = source.path.name
    records: list[Record] = []
    problems: list[str] = []
    first_seen: dict[str, int] = {}
    image_key = columns.image
    for number, obj in rows(source):
        record_id = None
        try:
            if isinstance(obj, str):
                raise BadRecord(obj)
            if not isinstance(obj, dict):
                raise BadRecord(f"a record must be a JSON object, got {quote(obj)}")
            if source.format == "imagefolder" and image_key == "image" and "image" not in obj and "file_name" in obj:
                obj = {**obj, "image": obj["file_name"]}  # the imagefolder convention
            if source.format != "jsonl" and columns.id not in obj:  # tables without ids: the file name or the index
                fallback = obj.get(columns.image) if source.format == "imagefolder" else None
                obj = {**obj, columns.id: fallback if isinstance(fallback, str) else number}
            require_column(obj, columns.id, "--id-column")
            record_id = check_id(obj, columns.id)
            if record_id in first_seen:
                raise BadRecord(f"duplicate id (first used on {unit} {first_seen[record_id]})")
            first_seen[record_id] = number
            record = _check_record(obj, record_id, source.root, image_size, columns, follow_symlinks)
            records.append(replace(record, line=number))
        except BadRecord as e:
            shown = quote(record_id) if record_id is not None else "unknown"
            problems.append(f"{name} {unit} {number} (id {shown}): {e}")
    if problems and not skip_bad:
        raise DataError(problems)
    if not records:  # with skip_bad, say why each record went, or "no usable records" explains nothing
        raise DataError([*problems, f"{source.path}: no usable records"])
    data = HomologousData(source.path, records, problems, source.format)
    if questions is not None:
        from hermesflow.tifa import attach_questions

        data = attach_questions(data, questions)
    return data


def check_fit(backbone, data: HomologousData, limit: int = 20, skip_bad: bool = False) -> HomologousData:
    """Refuse, before any work, data the backbone cannot represent (unknown words, over-long texts,
    images its tokenizer cannot read): every record's problems, by line and id, at once. With
    `skip_bad`, such records are left out instead, each listed on stderr and counted as skipped."""
    problems, unfit = [], set()
    for r in data.records:
        texts = [r.caption] + [t for q in r.qa for t in (q.question, *q.choices)]
        for problem in backbone.fit_problems(r.load_image(), texts):
            problems.append(f"{data.where(r)}: {problem}")
            unfit.add(r.id)
    if problems and skip_bad and len(unfit) < len(data.records):
        for problem in problems:
            print(f"skipped: {problem}", file=sys.stderr)
        return replace(data, records=[r for r in data.records if r.id not in unfit], skipped=data.skipped + problems)
    if problems:
        shown = problems[:limit] + ([f"... and {len(problems) - limit} more"] if len(problems) > limit else [])
        hint = getattr(backbone, "fit_hint", None)  # what the model reads, when it is narrow
        raise DataError([f"{data.path}: {len(problems)} problems for the {backbone.model_type} model "
                         f"(it cannot represent this data; nothing was run)", *shown, *([hint] if hint else [])])
    return data


def write_clean(data: HomologousData, path: str | Path) -> int:
    """Write the good records' own lines, in order, to a new JSON Lines file beside the data file (image
    paths are relative to it); returns how many. Only JSON Lines data has lines to copy."""
    path = Path(path)
    if data.format != "jsonl":
        raise UsageError(f"--write-clean {path}: only JSON Lines data can be copied line by line ({data.path.name} is {data.format})")
    if path.resolve().parent != data.path.resolve().parent:
        raise UsageError(f"--write-clean {path}: write it in {data.path.parent}, beside {data.path.name}, so its image paths still resolve")
    if path.resolve() == data.path.resolve():
        raise UsageError(f"--write-clean {path}: that is the data file itself; choose a new name")
    lines = data.path.read_bytes().split(b"\n")
    atomic_write_bytes(path, b"".join(lines[r.line - 1].removeprefix(codecs.BOM_UTF8).rstrip(b"\r") + b"\n" for r in data.records))
    return len(data.records)


def read_data(path: str | Path, options: DataOptions, **kwargs) -> HomologousData:
    """`read_homologous` with the data options a verb was given (the column map, --follow-symlinks,
    --questions, --skip-bad). Records left out by --skip-bad are listed on stderr, one line each."""
    columns = Columns(options.id_column, options.image_column, options.caption_column, options.qa_column)
    Image.MAX_IMAGE_PIXELS = options.max_pixels or None  # for the process: what is read here is loaded again later
    kwargs.setdefault("skip_bad", options.skip_bad)
    data = read_homologous(path, columns=columns, follow_symlinks=options.follow_symlinks, questions=options.questions, **kwargs)
    for problem in data.skipped:
        print(f"skipped: {problem}", file=sys.stderr)
    return data
