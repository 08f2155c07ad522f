"""Bad homologous data: each malformed record is refused with one line that names the file, line,
id and reason, by the real `hermesflow` command (exit code 2, no traceback) and by the reader, which
lists every bad record and, with `skip_bad`, goes on without them. No verb writes output from bad data.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from hermesflow.data import Columns, read_homologous
from hermesflow.errors import DataError, UsageError
from hermesflow.world.build import write_world

N_RECORDS = 6


def _id(line: int) -> str:
    """The id write_world gives the record on a line of the good world."""
    return f"train-0-{line - 1:06d}"


@pytest.fixture(scope="module")
def good_world(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("world") / "good"
    write_world(folder, n=N_RECORDS, seed=0, split="train")
    return folder


@pytest.fixture
def bad(good_world: Path, tmp_path: Path) -> Path:
    """A fresh copy of the good world, for one test to corrupt."""
    return Path(shutil.copytree(good_world, tmp_path / "bad"))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hermesflow", *args], capture_output=True, text=True, timeout=60)


# ---- ways to corrupt one record of a world folder ------------------------------------------------


def _lines(folder: Path) -> list[bytes]:
    return (folder / "data.jsonl").read_bytes().split(b"\n")


def _write_lines(folder: Path, lines: list[bytes]) -> None:
    (folder / "data.jsonl").write_bytes(b"\n".join(lines))


def _set_line(folder: Path, line: int, raw: bytes) -> None:
    lines = _lines(folder)
    lines[line - 1] = raw
    _write_lines(folder, lines)


def _record(folder: Path, line: int) -> dict:
    return json.loads(_lines(folder)[line - 1])


def _edit(folder: Path, line: int, change: Callable[[dict], None]) -> None:
    record = _record(folder, line)
    change(record)
    _set_line(folder, line, json.dumps(record).encode())


def _image(folder: Path, line: int) -> Path:
    return folder / _record(folder, line)["image"]


def _set_fields(line: int, **fields) -> Callable[[Path], None]:
    return lambda folder: _edit(folder, line, lambda r: r.update(fields))


def _drop_field(line: int, key: str) -> Callable[[Path], None]:
    return lambda folder: _edit(folder, line, lambda r: r.pop(key))


def _set_qa(line: int, **fields) -> Callable[[Path], None]:
    return lambda folder: _edit(folder, line, lambda r: r["qa"][0].update(fields))


def _replace_line(line: int, raw: bytes) -> Callable[[Path], None]:
    return lambda folder: _set_line(folder, line, raw)


def missing_image(folder: Path, line: int = 3) -> None:
    _image(folder, line).unlink()


def random_bytes_png(folder: Path) -> None:
    _image(folder, 3).write_bytes(bytes(range(256)) * 4)


def truncated_png(folder: Path) -> None:
    path = _image(folder, 3)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _resave(line: int, change: Callable[[Image.Image], Image.Image], **save) -> Callable[[Path], None]:
    def corrupt(folder: Path) -> None:
        path = _image(folder, line)
        with Image.open(path) as img:
            changed = change(img.convert("RGB"))
        changed.save(path, **save)

    return corrupt


def huge_declared_size(folder: Path) -> None:
    """A decompression bomb: a valid PNG whose header claims 20000x20000 pixels."""
    path = _image(folder, 3)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", 20000, 20000)  # IHDR width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # the IHDR chunk's CRC
    path.write_bytes(bytes(data))


def over_the_pixel_limit(folder: Path) -> None:
    """12000x12000 (144 million pixels): past PIL's limit (89.5 M), short of the 2x at which PIL itself
    refuses; it used to pass with a raw DecompressionBombWarning on stderr."""
    path = _image(folder, 3)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", 12000, 12000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def duplicate_id(folder: Path) -> None:
    _edit(folder, 5, lambda r: r.update(id=_id(2)))


def invalid_json(folder: Path) -> None:
    raw = _lines(folder)[3]
    _set_line(folder, 4, raw[: len(raw) // 2])


def non_utf8(folder: Path) -> None:
    raw = _lines(folder)[2]
    _set_line(folder, 3, raw.replace(b'"caption": "', b'"caption": "\xff\xfe', 1))


def escaping_path(folder: Path) -> None:
    shutil.copy(_image(folder, 3), folder.parent / "x.png")  # the file exists: only its place is wrong
    _edit(folder, 3, lambda r: r.update(image="../x.png"))


def absolute_path(folder: Path) -> None:
    _edit(folder, 3, lambda r: r.update(image=str(_image(folder, 3).resolve())))


def blank_line_before_bad_record(folder: Path) -> None:
    """Blank lines are skipped but counted, so the bad record is reported on line 4 of the file."""
    missing_image(folder, 3)
    lines = _lines(folder)
    _write_lines(folder, [lines[0], b"", *lines[1:]])


def odd_id_missing_image(record_id: str) -> Callable[[Path], None]:
    """An id holding line breaks, on a record with another fault: the report must stay one line."""

    def corrupt(folder: Path) -> None:
        missing_image(folder, 3)
        _edit(folder, 3, lambda r: r.update(id=record_id))

    return corrupt


# (corrupt the folder, line reported, id reported or None for `unknown`, a word of the reason)
CASES = [
    pytest.param(missing_image, 3, _id(3), "not found", id="missing-image-file"),
    pytest.param(_set_fields(3, image="images"), 3, _id(3), "not found", id="image-is-a-folder"),
    pytest.param(random_bytes_png, 3, _id(3), "cannot be read", id="corrupt-png"),
    pytest.param(truncated_png, 3, _id(3), "cannot be read", id="truncated-png"),
    pytest.param(huge_declared_size, 3, _id(3), "cannot be read", id="decompression-bomb"),
    pytest.param(over_the_pixel_limit, 3, _id(3), "144,000,000 pixels, more than --max-pixels 89,478,485", id="past-the-pixel-limit"),
    pytest.param(_resave(3, lambda im: im.resize((16, 16))), 3, _id(3), "16x16", id="wrong-size"),
    pytest.param(_resave(3, lambda im: im, format="BMP"), 3, _id(3), "is BMP", id="bmp-named-png"),
    pytest.param(_set_fields(3, image="images/a\0.png"), 3, _id(3), "NUL", id="nul-in-image-path"),
    pytest.param(_set_fields(3, image="a" * 300 + ".png"), 3, _id(3), "too long", id="image-name-too-long"),
    pytest.param(escaping_path, 3, _id(3), "outside the data folder", id="image-path-escapes-folder"),
    pytest.param(absolute_path, 3, _id(3), "absolute path", id="absolute-image-path"),
    pytest.param(_set_fields(3, caption=""), 3, _id(3), '"caption" must be a non-empty string', id="empty-caption"),
    pytest.param(_set_fields(3, caption="  "), 3, _id(3), '"caption" must be a non-empty string', id="blank-caption"),
    pytest.param(_drop_field(3, "caption"), 3, _id(3), 'missing field "caption"', id="missing-caption"),
    pytest.param(_drop_field(3, "image"), 3, _id(3), 'missing field "image"', id="missing-image-field"),
    pytest.param(_drop_field(3, "id"), 3, None, 'missing field "id"', id="missing-id"),
    pytest.param(_set_fields(3, id=["a"]), 3, None, '"id" must be a non-empty string', id="id-is-a-list"),
    pytest.param(_set_fields(3, id=True), 3, None, '"id" must be a non-empty string', id="id-is-a-boolean"),
    pytest.param(duplicate_id, 5, _id(2), "duplicate id (first used on line 2)", id="duplicate-id"),
    pytest.param(_set_qa(3, answer="maybe"), 3, _id(3), "not among the choices", id="answer-not-a-choice"),
    pytest.param(_set_qa(3, choices=["yes"], answer="yes"), 3, _id(3), "at least two", id="one-choice"),
    pytest.param(_set_qa(3, choices=["no", "no"], answer="no"), 3, _id(3), "choices repeat", id="repeated-choices"),
    pytest.param(_set_fields(3, qa={"q": 1}), 3, _id(3), '"qa" must be a list', id="qa-not-a-list"),
    pytest.param(_set_fields(3, scene={"a": 1}), 3, _id(3), '"scene" must be a list', id="scene-not-a-list"),
    pytest.param(_set_fields(3, scene=[{"shape": "blob", "color": "red", "row": 0, "col": 0}]), 3, _id(3), "not a valid scene",
                 id="scene-unknown-shape"),
    pytest.param(invalid_json, 4, None, "invalid JSON", id="invalid-json"),
    pytest.param(_replace_line(4, b"[" * 100_000 + b"]" * 100_000), 4, None, "nested too deeply", id="deep-json"),
    pytest.param(_replace_line(4, b'{"id": ' + b"7" * 5000 + b"}"), 4, None, "digits", id="huge-number"),
    pytest.param(non_utf8, 3, None, "not valid UTF-8", id="non-utf8-bytes"),
    pytest.param(_replace_line(2, b'["a", "b"]'), 2, None, "must be a JSON object", id="record-is-an-array"),
    pytest.param(_replace_line(2, b"null"), 2, None, "must be a JSON object", id="record-is-null"),
    pytest.param(blank_line_before_bad_record, 4, _id(3), "not found", id="line-counts-blank-lines"),
    pytest.param(odd_id_missing_image("a\nb"), 3, "a\nb", "not found", id="id-with-newline"),
    pytest.param(odd_id_missing_image("a\u2028b"), 3, "a\u2028b", "not found", id="id-with-line-separator"),
]


@pytest.mark.parametrize("corrupt, line, record_id, reason", CASES)
def test_validate_refuses_bad_record_in_one_line(bad: Path, corrupt, line: int, record_id: str | None, reason: str):
    corrupt(bad)
    result = run_cli("validate", str(bad), "--image-size", "32")

    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    shown = json.dumps(record_id) if record_id is not None else "unknown"
    prefix = f"error: data.jsonl line {line} (id {shown}): "
    message = result.stderr.rstrip("\n")
    assert message.startswith(prefix), message
    assert reason in message[len(prefix) :], message


@pytest.mark.parametrize(
    "rewrite",
    [
        pytest.param(lambda raw: b"\xef\xbb\xbf" + raw, id="byte-order-mark"),
        pytest.param(lambda raw: raw.replace(b"\n", b"\r\n"), id="crlf-line-ends"),
        pytest.param(lambda raw: raw + b"\n\n  \n", id="trailing-blank-lines"),
    ],
)
def test_harmless_file_quirks_are_accepted(bad: Path, rewrite):
    path = bad / "data.jsonl"
    path.write_bytes(rewrite(path.read_bytes()))
    assert len(read_homologous(bad).records) == N_RECORDS


def test_integer_ids_are_accepted(bad: Path):
    _edit(bad, 2, lambda r: r.update(id=17))
    assert read_homologous(bad).records[1].id == "17"


# ---- several bad records: all are reported, or skipped on request --------------------------------

BAD_LINES = (2, 4, 6)


def _three_bad(folder: Path) -> None:
    missing_image(folder, 2)
    _set_fields(4, caption="")(folder)
    _set_qa(6, answer="maybe")(folder)


def test_every_bad_record_is_listed(bad: Path):
    _three_bad(bad)
    with pytest.raises(DataError) as caught:
        read_homologous(bad)
    problems = caught.value.problems
    assert [p.split(": ")[0] for p in problems] == [f'data.jsonl line {n} (id "{_id(n)}")' for n in BAD_LINES]


def test_skip_bad_keeps_the_good_records_and_lists_the_rest(bad: Path):
    _three_bad(bad)
    data = read_homologous(bad, skip_bad=True)
    assert [r.id for r in data.records] == [_id(n) for n in (1, 3, 5)]
    assert [r.line for r in data.records] == [1, 3, 5]
    assert len(data.skipped) == len(BAD_LINES)
    assert all(f"line {n} " in s for s, n in zip(data.skipped, BAD_LINES))


def test_skip_bad_with_nothing_left_still_says_why(bad: Path):
    for line in range(1, N_RECORDS + 1):
        missing_image(bad, line)
    with pytest.raises(DataError) as caught:
        read_homologous(bad, skip_bad=True)
    problems = caught.value.problems
    assert len(problems) == N_RECORDS + 1
    assert all("not found" in p for p in problems[:-1])
    assert problems[-1].endswith("no usable records")


def test_cli_lists_every_bad_record(bad: Path):
    _three_bad(bad)
    result = run_cli("validate", str(bad))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert [line.split(" (id")[0] for line in lines] == [f"error: data.jsonl line {n}" for n in BAD_LINES]


def test_cli_skip_bad_goes_on(bad: Path):
    _three_bad(bad)
    result = run_cli("validate", "--skip-bad", str(bad))
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert [line.split(" (id")[0] for line in lines] == [f"skipped: data.jsonl line {n}" for n in BAD_LINES]
    assert "Traceback" not in result.stderr
    assert any(line.split() == ["records", "3"] for line in result.stdout.splitlines()), result.stdout


# ---- no output from bad data ---------------------------------------------------------------------

# Every verb that reads homologous data, with its arguments given the data folder and an output
# folder: each must check all the data before it writes anything. Add new verbs here.
DATA_VERBS = [
    pytest.param(lambda data, out: ["validate", str(data)], id="validate"),
]


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.parametrize("verb_args", DATA_VERBS)
def test_bad_data_writes_nothing(bad: Path, tmp_path: Path, verb_args):
    missing_image(bad, 3)
    out = tmp_path / "out"
    before = _listing(bad)

    result = run_cli(*verb_args(bad, out))

    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f'error: data.jsonl line 3 (id "{_id(3)}")'), result.stderr
    assert _listing(bad) == before
    assert not out.exists() or not any(out.iterdir())


def test_no_nesting_depth_crashes_the_reader(bad: Path):
    """json.loads gives up near Python's recursion limit; a record nested just under it must be
    reported like any other bad record, and showing it in the message must not crash either."""
    depths = range(800, 1100)
    _write_lines(bad, [_lines(bad)[0], *(b"[" * d + b"]" * d for d in depths)])
    data = read_homologous(bad, skip_bad=True)
    assert len(data.skipped) == len(depths)
    assert all("must be a JSON object" in s or "nested too deeply" in s for s in data.skipped)


def test_data_the_model_cannot_represent_is_refused_before_any_work(tmp_path: Path):
    """A third-party set of 64x64 photos-like images with words the built-in model does not know:
    `curate` names every problem by line and id and creates nothing, instead of scoring blank grids."""
    from hermesflow.testbed.model import UnifiedConfig, UnifiedModel

    UnifiedModel(UnifiedConfig(d_model=32, n_layers=1, n_heads=2)).save_pretrained(tmp_path / "model")
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i, caption in enumerate(["a red circle", "a hexagon on a table"]):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(data / "images" / f"{i}.png")
        qa = [{"question": "is there a circle?", "choices": ["yes", "no"], "answer": "yes", "type": "object"}]
        lines.append(json.dumps({"id": f"r{i}", "image": f"images/{i}.png", "caption": caption, "qa": qa}))
    (data / "data.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"

    result = run_cli("curate", "--model", str(tmp_path / "model"), "--data", str(data), "--out", str(out))

    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "3 problems for the hermesflow-unified model" in result.stderr
    assert 'data.jsonl line 1 (id "r0"): the built-in image tokenizer cannot represent this image' in result.stderr
    assert "line 2 (id \"r1\"): text 'a hexagon on a table' has words the built-in model does not know: ['hexagon', 'on', 'table']" in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(  # and the way to real images
        "for your own photos and captions, give --model a Janus, Janus-Pro or Show-o folder (docs/models.md)")
    assert not out.exists()


def test_own_photos_hear_which_flag_names_their_caption_and_how_to_get_questions(tmp_path: Path):
    """A folder of photos whose captions sit under "text" and that have no questions."""
    data = tmp_path / "photos"
    (data / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(data / "images" / "0.png")
    (data / "data.jsonl").write_text(json.dumps({"id": "p0", "image": "images/0.png", "text": "a red circle"}) + "\n")
    said = run_cli("validate", str(data)).stderr
    assert 'missing field "caption" (its fields: "id", "image", "text"; --caption-column names the one to use)' in said
    from hermesflow.evaluate import data_eval_items

    with pytest.raises(UsageError, match="no record has qa; evaluation needs questions: `hermesflow questions --data DATA"):
        data_eval_items(read_homologous(data, columns=Columns(caption="text")), 10)


def test_skip_bad_works_on_every_verb_that_reads_data(bad: Path, tmp_path: Path):
    from hermesflow import config
    from hermesflow.cli import VERBS, build_parser
    from hermesflow.testbed.model import UnifiedConfig, UnifiedModel

    for verb in ("validate", "eval", "curate", "train", "run"):
        assert "skip_bad" in config.leaves(VERBS[verb][0]), verb
    args = build_parser().parse_args(["curate", "--model", "m", "--data", "d", "--out", "o", "--skip-bad"])
    assert config.resolve(VERBS["curate"][0], args).reading.skip_bad
    _three_bad(bad)
    UnifiedModel(UnifiedConfig(d_model=32, n_layers=1, n_heads=2)).save_pretrained(tmp_path / "model")
    result = run_cli("eval", "--model", str(tmp_path / "model"), "--data", str(bad), "--skip-bad", "--n", "2", "--steps", "2",
                     "--out", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr
    skipped = [line.split(" (id")[0] for line in result.stderr.splitlines() if line.startswith("skipped: ")]
    assert skipped == [f"skipped: data.jsonl line {n}" for n in BAD_LINES]
    assert (tmp_path / "eval" / "metrics.json").exists()


def test_write_clean_keeps_the_good_records_lines(bad: Path, tmp_path: Path):
    _three_bad(bad)
    clean = bad / "clean.jsonl"
    result = run_cli("validate", str(bad), "--skip-bad", "--write-clean", str(clean))
    assert result.returncode == 0, result.stderr
    assert "3 good records written to" in result.stderr
    good = [line for n, line in enumerate(_lines(bad), start=1) if line.strip() and n not in BAD_LINES]
    assert clean.read_bytes() == b"".join(line + b"\n" for line in good)
    again = run_cli("validate", str(clean))  # the clean file reads without a problem, its images found
    assert again.returncode == 0 and again.stderr == "", again.stderr
    elsewhere = run_cli("validate", str(bad), "--skip-bad", "--write-clean", str(tmp_path / "clean.jsonl"))
    assert elsewhere.returncode == 2 and "so its image paths still resolve" in elsewhere.stderr


def test_max_pixels_moves_the_limit(bad: Path):
    over_the_pixel_limit(bad)  # its header says 12000x12000; its pixel data is a 32x32 image's
    lifted = run_cli("validate", str(bad), "--max-pixels", "0")
    assert lifted.returncode == 2 and "--max-pixels" not in lifted.stderr and "cannot be read (" in lifted.stderr  # decoded, found short
    lower = run_cli("validate", str(bad), "--max-pixels", "1000")  # every 32x32 image (1,024 pixels) is past it, each named
    assert lower.returncode == 2 and lower.stderr.count("more than --max-pixels 1,000") == len(lower.stderr.splitlines()) == N_RECORDS


def test_validate_with_a_model_refuses_what_the_model_cannot_read_or_skips_it(bad: Path):
    from hermesflow.backbones import BASE_MODEL

    _set_fields(3, caption="a zebra above a circle")(bad)  # a word the built-in model does not know
    refused = run_cli("validate", str(bad), "--model", str(BASE_MODEL))
    assert refused.returncode == 2 and f'data.jsonl line 3 (id "{_id(3)}"): text' in refused.stderr and "zebra" in refused.stderr
    assert run_cli("validate", str(bad)).returncode == 0  # without a model the record is well formed
    skipped = run_cli("validate", str(bad), "--model", str(BASE_MODEL), "--skip-bad")
    assert skipped.returncode == 0 and skipped.stderr.startswith(f'skipped: data.jsonl line 3 (id "{_id(3)}")')
    assert re.search(r"records\s+5\n", skipped.stdout) and re.search(r"skipped\s+1\n", skipped.stdout)
