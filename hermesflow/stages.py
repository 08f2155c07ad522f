"""Safe resume: each stage's folder records the settings that determine its outputs.

A stage (one round's curation, a training, an evaluation, a whole run) writes `<stage>-settings.json`
into its folder before it starts: the settings as plain values and their digest. A rerun with the
same settings resumes from whatever the folder holds; a rerun with other settings is refused, naming
the keys that differ, unless it was asked to `overwrite` (then the stage's outputs are deleted first).
So results are never silently mixed with, or relabelled as, results of other settings.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from hermesflow.errors import UsageError
from hermesflow.io import atomic_write_json


def settings_file(folder: Path, stage: str) -> Path:
    return Path(folder) / f"{stage}-settings.json"


def plain(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings as JSON values (paths as strings), as they are stored."""
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def digest(settings: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(plain(settings), sort_keys=True).encode()).hexdigest()[:12]


def file_digest(path: Path | None) -> str | None:
    """sha1 of a file's bytes (data.jsonl, prefs.jsonl), or of every file of a folder with its name
    (a datasets folder, Parquet shards): a changed input is a changed setting."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir() and (path / "data.jsonl").is_file():
        path = path / "data.jsonl"
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha1()
    for file in files:
        if path.is_dir():
            h.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`key: old -> new` for each key whose value differs."""
    old, new = plain(old), plain(new)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def refusal(what: str, folder: Path, changed: list[str]) -> UsageError:
    return UsageError(
        f"{folder} holds {what} made with other settings:\n  " + "\n  ".join(changed) + "\n"
        "to keep those results, rerun with another --out; to delete them and start again, add --overwrite")


def clear(folder: Path, outputs: tuple[str, ...]) -> None:
    """Delete the named outputs of a stage (files or folders, relative to `folder`)."""
    for name in outputs:
        path = Path(folder) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def claim(folder: Path, stage: str, what: str, settings: dict[str, Any], outputs: tuple[str, ...], overwrite: bool = False) -> bool:
    """Make `folder` the home of a stage run with `settings`. Returns True when it already was (the
    caller resumes or reuses what is there); raises when it holds the stage made with other settings,
    unless `overwrite`, which deletes `outputs` (paths relative to `folder`) and starts afresh."""
    path = settings_file(folder, stage)
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))["settings"]
        changed = differences(saved, settings)
        if not changed:
            return True
        if not overwrite:
            raise refusal(what, Path(folder), changed)
        clear(folder, outputs)
    elif overwrite:
        clear(folder, outputs)
    atomic_write_json(path, {"stage": stage, "digest": digest(settings), "settings": plain(settings)})
    return False


def say(message: str) -> None:
    """A status line (resuming, reusing) on stderr, beside the progress bars."""
    print(message, file=sys.stderr, flush=True)
