"""Real data in: any image mode and size, JSON Lines / Parquet / datasets folder / imagefolder, a
column map, symbolic links only when asked, records without questions counted."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hermesflow.cli import main
from hermesflow.data import Columns, read_homologous
from hermesflow.errors import DataError

CAPTIONS = ["a red circle", "two blue squares", "a green triangle", "a yellow circle", "a red square", "a blue triangle"]


def mixed_images() -> list[tuple[str, Image.Image]]:
    """JPEG and PNG files of mixed sizes and modes: RGB, RGBA, grey, 16-bit grey, palette, CMYK."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 255, (64, 64, 4), dtype=np.uint8), "RGBA")
    grey = Image.fromarray(rng.integers(0, 255, (100, 30), dtype=np.uint8), "L")
    grey16 = Image.fromarray(np.full((40, 40), 32768, dtype=np.uint16))  # mid grey at 16 bits
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return [("a.jpg", rgb), ("b.png", rgba), ("c.png", grey), ("d.png", grey16), ("e.png", palette),
            ("f.jpg", rgb.convert("CMYK").resize((33, 17)))]


def write_mixed(folder: Path, with_ids: bool = True) -> Path:
    (folder / "images").mkdir(parents=True)
    lines = []
    for i, ((name, img), caption) in enumerate(zip(mixed_images(), CAPTIONS)):
        img.save(folder / "images" / name)
        lines.append(json.dumps({**({"id": f"r{i}"} if with_ids else {}), "image": f"images/{name}", "caption": caption}))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_images_of_any_mode_and_size_are_read_as_rgb(tmp_path):
    data = read_homologous(write_mixed(tmp_path))
    images = [r.load_image() for r in data.records]
    assert all(im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3 for im in images)
    assert [im.shape[:2] for im in images] == [(48, 80), (64, 64), (100, 30), (40, 40), (48, 80), (17, 33)]
    assert np.all(np.abs(images[3].astype(int) - 128) <= 1)  # 16-bit scaled, not clipped to white


def test_transparent_pixels_are_laid_on_white(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "images" / "t.png")
    (tmp_path / "data.jsonl").write_text(json.dumps({"id": 1, "image": "images/t.png", "caption": "x"}) + "\n")
    assert np.all(read_homologous(tmp_path).records[0].load_image() == 255)


def test_validate_counts_records_without_questions(tmp_path, capsys):
    assert main(["validate", str(write_mixed(tmp_path))]) == 0
    captured = capsys.readouterr()
    assert "without_qa        6" in captured.out and "format            jsonl" in captured.out
    assert "note: 6 of 6 records have no questions, which curation needs; `hermesflow questions` writes them" in captured.err


def _png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_parquet_with_other_column_names_and_embedded_images(tmp_path, capsys):
    rows = [{"picture": {"bytes": _png_bytes(img, "JPEG" if img.mode == "CMYK" else "PNG"), "path": None}, "text": c}
            for (_, img), c in zip(mixed_images(), CAPTIONS)]
    path = write_parquet(tmp_path / "train.parquet", rows)
    with pytest.raises(DataError, match=r'train.parquet index 0 \(id "0"\): missing field "image"'):
        read_homologous(path)
    data = read_homologous(path, columns=Columns(image="picture", caption="text"))
    assert data.format == "parquet" and [r.id for r in data.records] == [str(i) for i in range(6)]
    assert data.records[1].load_image().shape == (64, 64, 3)
    assert main(["validate", str(path), "--image-column", "picture", "--caption-column", "text"]) == 0
    assert "format            parquet" in capsys.readouterr().out


def test_parquet_given_to_validate_is_named_not_read_as_json_lines(tmp_path, capsys):
    path = write_parquet(tmp_path / "data.jsonl.bin", [{"id": "a", "image": {"bytes": b"not an image", "path": None},
                                                        "caption": "a red circle"}])
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "invalid JSON" not in err
    assert err.strip() == ('error: data.jsonl.bin index 0 (id "a"): image in field "image" cannot be read '
                           "(not a PNG or JPEG or WEBP or TIFF or BMP or GIF file)")


def test_datasets_folder_saved_with_save_to_disk(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    images = [img for _, img in mixed_images()]
    ds = datasets.Dataset.from_dict({"image": images, "prompt": CAPTIONS, "key": [f"k{i}" for i in range(6)]})
    ds.save_to_disk(str(tmp_path / "ds"))
    data = read_homologous(tmp_path / "ds", columns=Columns(id="key", caption="prompt"))
    assert data.format == "datasets" and [r.id for r in data.records] == [f"k{i}" for i in range(6)]
    assert data.records[3].load_image().shape == (40, 40, 3)
    assert main(["validate", str(tmp_path / "ds"), "--id-column", "key", "--caption-column", "prompt"]) == 0
    assert "format            datasets" in capsys.readouterr().out


def test_imagefolder_with_metadata_jsonl(tmp_path):
    for name, img in mixed_images():
        img.save(tmp_path / name)
    lines = [json.dumps({"file_name": name, "caption": c}) for (name, _), c in zip(mixed_images(), CAPTIONS)]
    lines.insert(2, json.dumps({"file_name": "missing.png", "caption": "a red circle"}))
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        read_homologous(tmp_path)
    assert err.value.problems == ['metadata.jsonl line 3 (id "missing.png"): image "missing.png" not found']
    data = read_homologous(tmp_path, skip_bad=True)
    assert data.format == "imagefolder" and data.records[0].id == "a.jpg" and len(data.records) == 6


def test_symlinked_image_folder_needs_follow_symlinks(tmp_path, capsys):
    cache = write_mixed(tmp_path / "cache")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    os.symlink(cache / "images", data_dir / "images")
    (data_dir / "data.jsonl").write_text((cache / "data.jsonl").read_text())
    assert main(["validate", str(data_dir)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 6 and "through a symbolic link; pass --follow-symlinks to follow it" in err[0]
    assert main(["validate", str(data_dir), "--follow-symlinks"]) == 0
    capsys.readouterr()
    # paths written in the data may still not climb out, with or without the flag
    (data_dir / "data.jsonl").write_text(json.dumps({"id": 1, "image": "../cache/images/a.jpg", "caption": "x"}) + "\n")
    assert main(["validate", str(data_dir), "--follow-symlinks"]) == 2
    assert "points outside the data folder" in capsys.readouterr().err
