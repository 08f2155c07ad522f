"""Where homologous rows come from, before any check: our JSON Lines file, a Hugging Face `datasets`
folder (`save_to_disk`), Parquet files, or an imagefolder (images beside a `metadata.jsonl` whose
`file_name` column names them, as `datasets`' imagefolder loader reads it).

Each reader yields `(position, row)`: the line of a JSON Lines file or the row index of a table, and
the row as a dict, or a string saying why that line could not be read at all. `hermesflow.data`
checks the rows. A file's format is told by its content (Parquet files start with `PAR1`), never by
trying to read it as JSON Lines.
"""

from __future__ import annotations

import codecs
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hermesflow.errors import DataError, UsageError

PARQUET_MAGIC = b"PAR1"


@dataclass
class Source:
    """A data location and its format: `path` is what errors name, `root` where image paths start."""

    format: str  # jsonl, imagefolder, parquet or datasets
    path: Path
    root: Path
    files: tuple[Path, ...] = ()

    @property
    def by_line(self) -> bool:
        return self.format in ("jsonl", "imagefolder")


def _is_parquet(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == PARQUET_MAGIC


def locate(path: str | Path) -> Source:
    """The format of a file or folder given as `--data`."""
    path = Path(path)
    if path.is_dir():
        if (path / "data.jsonl").is_file():
            return Source("jsonl", path / "data.jsonl", path)
        if any((path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return Source("datasets", path, path)
        if (path / "metadata.jsonl").is_file():
            return Source("imagefolder", path / "metadata.jsonl", path)
        parquet = tuple(sorted(p for p in path.glob("*.parquet") if p.is_file()))
        if parquet:
            return Source("parquet", path, path, parquet)
        raise UsageError(f"{path}: no data here (expected data.jsonl, a datasets folder saved with save_to_disk, "
                         "an imagefolder's metadata.jsonl, or *.parquet files)")
    if not path.is_file():
        raise UsageError(f"data file {path} not found")
    if _is_parquet(path):
        return Source("parquet", path, path.parent, (path,))
    if path.name == "metadata.jsonl":
        return Source("imagefolder", path, path.parent)
    return Source("jsonl", path, path.parent)


def rows(source: Source) -> Iterator[tuple[int, dict | str]]:
    """The rows of a source (see the module docstring)."""
    if source.by_line:
        return _jsonl_rows(source.path)
    if source.format == "parquet":
        return _parquet_rows(source.files)
    return _dataset_rows(source.path)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict | str]]:
    with open(path, "rb") as f:
        raw_lines = f.read().split(b"\n")
    for number, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        if number == 1:  # a byte-order mark, as some editors write, is allowed at the start
            raw = raw.removeprefix(codecs.BOM_UTF8)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield number, f"not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})"
            continue
        try:
            yield number, json.loads(text)
        except json.JSONDecodeError as e:
            reason = e.msg.removesuffix(" starting at")  # "Unterminated string starting at"
            yield number, f"invalid JSON ({reason} at column {e.colno})"
        except ValueError:  # the one other thing json.loads refuses: Python's limit on int digits
            yield number, f"invalid JSON (a number longer than {sys.get_int_max_str_digits()} digits)"
        except RecursionError:
            yield number, "invalid JSON (nested too deeply)"


def _parquet_rows(files: tuple[Path, ...]) -> Iterator[tuple[int, dict]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(f"{files[0]} is Parquet; reading it needs pyarrow (pip install 'hermesflow[datasets]')") from None
    index = 0
    for file in files:
        try:
            table = pq.ParquetFile(file)
            batches = table.iter_batches(batch_size=256)
            for batch in batches:
                for row in batch.to_pylist():
                    yield index, row
                    index += 1
        except (pa.ArrowException, OSError) as e:
            raise DataError([f"{file.name}: not a readable Parquet file ({type(e).__name__}: {e})"]) from None


def _dataset_rows(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        import datasets
    except ImportError:
        raise UsageError(f"{path} is a Hugging Face datasets folder; reading it needs the datasets package "
                         "(pip install 'hermesflow[datasets]')") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise UsageError(f"{path}: not a readable datasets folder ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) != 1 and "train" not in ds:
            raise UsageError(f"{path} holds the splits {sorted(ds)}; give the folder of one split (e.g. {path}/{min(ds)})")
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    for name, feature in ds.features.items():  # keep images as bytes: they are checked and decoded here
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
    yield from enumerate(ds)
