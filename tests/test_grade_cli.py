"""`sonograde grade`: JSON schema, output files, unreadable images, corrupt models, no torch needed."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.backends.dev_models import make_grader_model, make_roi_model, synthetic_frame
from sonograde import RESEARCH_USE_ONLY
from sonograde.commands import grade as grade_command

REPO_ROOT = Path(__file__).resolve().parents[1]
JSON_KEYS = ["image", "lesion_found", "category", "probabilities", "bbox", "area_px", "timings_ms",
             "not_gradeable"]


@pytest.fixture
def models_dir(tmp_path):
    directory = tmp_path / "models"
    directory.mkdir()
    make_roi_model(directory / "roi_cnn.onnx")
    make_grader_model(directory / "g_cnn.onnx", size=64, channels=2)
    return directory


@pytest.fixture
def images(tmp_path, rng):
    """Images of different sizes and formats, gray and colour, one without a lesion."""
    directory = tmp_path / "images"
    directory.mkdir()
    made = {}
    for name, (h, w), colour in [("gray.png", (250, 330), False), ("colour.jpg", (610, 797), True),
                                 ("small.bmp", (140, 181), False)]:
        image, _ = synthetic_frame(rng, h, w, colour=colour)
        cv2.imwrite(str(directory / name), image)
        made[name] = (h, w)
    cv2.imwrite(str(directory / "flat.png"), np.full((200, 300), 90, np.uint8))
    made["flat.png"] = (200, 300)
    return directory, made


def main(argv: list[str]) -> int:
    """`sonograde grade ...` through the command module itself (the full CLI is tested in a subprocess)."""
    assert argv[0] == "grade"
    parser = argparse.ArgumentParser(prog="sonograde grade")
    grade_command.add_arguments(parser)
    return grade_command.run(parser.parse_args(argv[1:]))


def parse_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_schema(models_dir, images, capsys):
    directory, made = images
    paths = [str(directory / name) for name in made]
    assert main(["grade", *paths, "--models", str(models_dir), "--json"]) == 0
    lines = parse_lines(capsys.readouterr().out)
    assert [line["image"] for line in lines] == paths
    for line in lines:
        assert list(line) == JSON_KEYS
        h, w = made[Path(line["image"]).name]
        if Path(line["image"]).name == "flat.png":  # uniform grey: no tissue, not graded
            assert line["lesion_found"] is False
            assert line["category"] is None and line["probabilities"] is None and line["bbox"] is None
            assert line["area_px"] == 0 and "no tissue" in line["not_gradeable"]
            continue
        assert line["lesion_found"] is True and line["not_gradeable"] is None
        assert list(line["probabilities"]) == ["3", "4A", "4B", "4C", "5"]
        assert line["category"] == max(line["probabilities"], key=line["probabilities"].get)
        assert abs(sum(line["probabilities"].values()) - 1) < 1e-4
        x, y, bw, bh = line["bbox"]
        assert x >= 0 and y >= 0 and x + bw <= w and y + bh <= h and bw > 0 and bh > 0
        assert 0 < line["area_px"] <= bw * bh
        assert set(line["timings_ms"]) == {"roi_cnn", "refine", "g_cnn", "total"}


def test_folder_argument_and_table(models_dir, images, capsys):
    directory, made = images
    assert main(["grade", str(directory), "--models", str(models_dir)]) == 0
    out = capsys.readouterr().out
    assert RESEARCH_USE_ONLY in out
    for name in made:
        assert name in out
    assert "NOT GRADEABLE: no tissue" in out


def test_out_files(models_dir, images, tmp_path, capsys):
    directory, made = images
    out_dir = tmp_path / "results"
    assert main(["grade", str(directory), "--models", str(models_dir), "--out", str(out_dir), "--json"]) == 0
    lines = {Path(line["image"]).name: line for line in parse_lines(capsys.readouterr().out)}
    for name, (h, w) in made.items():
        stem = Path(name).stem
        mask = cv2.imread(str(out_dir / f"{stem}_mask.png"), cv2.IMREAD_UNCHANGED)
        overlay = cv2.imread(str(out_dir / f"{stem}_overlay.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (h, w) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        assert int(np.count_nonzero(mask)) == lines[name]["area_px"]
        factor = overlay.shape[0] // h  # small images are enlarged by a whole factor for legible text
        assert overlay.shape == (h * factor, w * factor, 3) and (factor == 1) == (min(h, w) >= 360)
        if name == "flat.png":
            assert not mask.any()
        else:
            ys, xs = np.nonzero(mask)
            assert [int(xs.min()), int(ys.min())] == lines[name]["bbox"][:2]
            # the refined contour is drawn in red, the ROI-CNN contour in blue
            red = (overlay[..., 2] > 200) & (overlay[..., 1] < 60) & (overlay[..., 0] < 60)
            assert red.any()
    assert len(list(out_dir.iterdir())) == 2 * len(made)


def test_writes_nothing_without_out(models_dir, images, tmp_path, capsys, monkeypatch):
    directory, _ = images
    monkeypatch.chdir(tmp_path)
    before = sorted(p for p in tmp_path.rglob("*") if "__pycache__" not in p.parts)
    assert main(["grade", str(directory), "--models", str(models_dir), "--json"]) == 0
    after = sorted(p for p in tmp_path.rglob("*") if "__pycache__" not in p.parts)
    assert before == after


def test_same_stem_does_not_overwrite(models_dir, tmp_path, rng, capsys):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        cv2.imwrite(str(tmp_path / sub / "scan.png"), synthetic_frame(rng, 200, 220)[0])
    out_dir = tmp_path / "out"
    assert main(["grade", str(tmp_path / "a" / "scan.png"), str(tmp_path / "b" / "scan.png"),
                 "--models", str(models_dir), "--out", str(out_dir), "--json"]) == 0
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["scan_2_mask.png", "scan_2_overlay.png", "scan_mask.png", "scan_overlay.png"]


def test_unreadable_images_are_named_and_skipped(models_dir, images, tmp_path, rng, capsys):
    directory, _ = images
    broken = tmp_path / "broken.png"
    broken.write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.png"
    good = directory / "gray.png"
    code = main(["grade", str(broken), str(good), str(empty), str(missing), "--models", str(models_dir),
                 "--json"])
    captured = capsys.readouterr()
    assert code == 1
    assert [line["image"] for line in parse_lines(captured.out)] == [str(good)]
    for bad in (broken, empty, missing):
        assert str(bad) in captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_corrupt_model_exits_2(models_dir, images, capsys, damage):
    directory, _ = images
    target = models_dir / "g_cnn.onnx"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 3])
    elif damage == "garbage":
        target.write_bytes(b"this is not a model" * 20)
    else:
        target.unlink()
    code = main(["grade", str(directory / "gray.png"), "--models", str(models_dir), "--json"])
    captured = capsys.readouterr()
    assert code == 2
    assert "g_cnn.onnx" in captured.err and "Traceback" not in captured.err
    assert captured.out == ""


def test_runs_without_torch(models_dir, images, tmp_path):
    """`sonograde grade` must work on an install without the train extra: block torch and run it."""
    directory, made = images
    script = (
        "import sys; sys.modules['torch'] = None  # any import torch now raises ImportError\n"
        "from sonograde.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "sys.exit(code)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", script, "grade", str(directory), "--models", str(models_dir), "--json",
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    lines = parse_lines(proc.stdout)
    assert len(lines) == len(made)
    assert sum(line["lesion_found"] for line in lines) == len(made) - 1


def _write_dicom(path: Path, gray: np.ndarray) -> Path:
    """A single-frame uncompressed 8-bit MONOCHROME2 ultrasound DICOM."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"  # ultrasound image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, generate_uid(), "US"
    ds.Rows, ds.Columns = gray.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = np.ascontiguousarray(gray, np.uint8).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def test_sixteen_bit_png_and_dicom(models_dir, tmp_path, rng, capsys):
    """A 16-bit PNG and a DICOM of the same picture grade like the 8-bit image."""
    image, _ = synthetic_frame(rng, 260, 350)
    cv2.imwrite(str(tmp_path / "eight.png"), image)
    cv2.imwrite(str(tmp_path / "sixteen.png"), image.astype(np.uint16) * 257)
    _write_dicom(tmp_path / "scan.dcm", image)
    paths = [str(tmp_path / name) for name in ("eight.png", "sixteen.png", "scan.dcm")]
    assert main(["grade", *paths, "--models", str(models_dir), "--json"]) == 0
    lines = parse_lines(capsys.readouterr().out)
    assert len(lines) == 3 and lines[0]["lesion_found"]
    for line in lines[1:]:
        assert line["bbox"] == lines[0]["bbox"] and line["probabilities"] == lines[0]["probabilities"]


@pytest.mark.realdata
def test_shipped_models_on_real_images(shared_data, tmp_path, rng, capsys):
    """The shipped models on real images of three datasets (different sizes); outputs only under tmp_path."""
    from engine.grader import DEFAULT_MODELS_DIR

    if not (DEFAULT_MODELS_DIR / "roi_cnn.onnx").exists() or not (DEFAULT_MODELS_DIR / "g_cnn.onnx").exists():
        pytest.skip(f"shipped models not in {DEFAULT_MODELS_DIR} yet")
    import csv

    paths = []
    for dataset in ("busi", "busbra", "breast_lesions_usg"):
        with (shared_data / dataset / "manifest.csv").open() as handle:
            rows = [row for row in csv.DictReader(handle) if row.get("mask")]
        row = rows[int(rng.integers(len(rows)))]
        paths.append(shared_data / dataset / row["image"])
    out_dir = tmp_path / "out"
    assert main(["grade", *map(str, paths), "--out", str(out_dir), "--json"]) == 0
    lines = parse_lines(capsys.readouterr().out)
    assert [line["image"] for line in lines] == list(map(str, paths))
    for path, line in zip(paths, lines, strict=True):
        shape = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).shape
        mask = cv2.imread(str(out_dir / f"{path.stem}_mask.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == shape
        assert int(np.count_nonzero(mask)) == line["area_px"]
        assert (line["category"] is None) == (not line["lesion_found"])
