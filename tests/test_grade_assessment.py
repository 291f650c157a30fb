"""`sonograde grade` with the descriptor model: the explained fields, the pixel size and its source."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.backends.dev_models import make_grader_model, make_roi_model, synthetic_frame
from engine.descriptors import DEFAULT_MODEL_PATH, DESCRIPTOR_ORDER
from refine.measure import SIZE_KEYS
from sonograde.commands import grade as grade_command

pytestmark = pytest.mark.skipif(not DEFAULT_MODEL_PATH.is_file(), reason="no models/descriptors.json")


@pytest.fixture
def models_dir(tmp_path):
    directory = tmp_path / "models"
    directory.mkdir()
    make_roi_model(directory / "roi_cnn.onnx")
    make_grader_model(directory / "g_cnn.onnx", size=64, channels=2)
    shutil.copy(DEFAULT_MODEL_PATH, directory / "descriptors.json")
    return directory


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sonograde grade")
    grade_command.add_arguments(parser)
    return grade_command.run(parser.parse_args(argv))


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _dicom(path: Path, gray: np.ndarray, *, spacing: float | None = None,
           region_cm: float | None = None) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, generate_uid(), "US"
    ds.Rows, ds.Columns = gray.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    if spacing is not None:
        ds.PixelSpacing = [spacing, spacing]
    if region_cm is not None:
        region = Dataset()
        region.PhysicalUnitsXDirection = 3
        region.PhysicalUnitsYDirection = 3
        region.PhysicalDeltaX = region_cm
        region.PhysicalDeltaY = region_cm
        ds.SequenceOfUltrasoundRegions = Sequence([region])
    ds.PixelData = np.ascontiguousarray(gray, np.uint8).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def test_manifest_folder_uses_its_pixel_sizes(models_dir, tmp_path, rng, capsys):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    rows = ["id,image,mask,pixel_size_mm"]
    for i, size in enumerate(["0.07", ""]):
        image, _ = synthetic_frame(rng, 260, 340)
        cv2.imwrite(str(data / "images" / f"c{i}.png"), image)
        rows.append(f"c{i},images/c{i}.png,,{size}")
    cv2.imwrite(str(data / "images" / "not_listed.png"), image)
    (data / "manifest.csv").write_text("\n".join(rows) + "\n")
    assert main([str(data), "--models", str(models_dir), "--json"]) == 0
    out = lines(capsys.readouterr().out)
    assert [Path(line["image"]).name for line in out] == ["c0.png", "c1.png"]  # the manifest's images only
    for line in out:
        assert line["lesion_found"]
        assert list(line["descriptors"]) == list(DESCRIPTOR_ORDER)
        assert tuple(line["size"]) == SIZE_KEYS
        assert 0 < line["malignancy_probability"] < 1
    assert out[0]["size"]["unit"] == "mm" and out[0]["size"]["pixel_size_mm"] == 0.07
    assert out[0]["size"]["pixel_size_source"] == "manifest"
    assert out[1]["size"]["unit"] == "px" and out[1]["size"]["pixel_size_mm"] is None  # never a guessed mm
    ratio = out[0]["size"]["width"] / out[1]["size"]["width"]
    assert 0.02 < ratio < 0.2  # the two synthetic lesions differ, but mm are ~0.07 px


def test_cli_pixel_size_and_dicom_sources(models_dir, tmp_path, rng, capsys):
    image, _ = synthetic_frame(rng, 260, 340)
    cv2.imwrite(str(tmp_path / "plain.png"), image)
    _dicom(tmp_path / "spacing.dcm", image, spacing=0.1)
    _dicom(tmp_path / "regions.dcm", image, spacing=0.1, region_cm=0.005)
    paths = [str(tmp_path / n) for n in ("plain.png", "spacing.dcm", "regions.dcm")]
    assert main([*paths, "--models", str(models_dir), "--json"]) == 0
    plain, spacing, regions = lines(capsys.readouterr().out)
    assert plain["size"]["unit"] == "px"
    assert spacing["size"]["pixel_size_source"] == "dicom_pixel_spacing"
    assert spacing["size"]["width"] == pytest.approx(plain["size"]["width"] * 0.1, abs=0.02)
    assert regions["size"]["pixel_size_source"] == "dicom_ultrasound_regions"
    assert regions["size"]["pixel_size_mm"] == pytest.approx(0.05)
    assert main([*paths, "--models", str(models_dir), "--json", "--pixel-size-mm", "0.2"]) == 0
    for line in lines(capsys.readouterr().out):
        assert line["size"]["pixel_size_source"] == "cli" and line["size"]["pixel_size_mm"] == 0.2


def test_no_lesion_and_bad_pixel_size(models_dir, tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "flat.png"), np.full((200, 300), 90, np.uint8))
    assert main([str(tmp_path / "flat.png"), "--models", str(models_dir), "--json"]) == 0
    (line,) = lines(capsys.readouterr().out)
    assert line["lesion_found"] is False and line["descriptors"] is None and line["size"] is None
    # a flat image is not gradeable (engine.gradeability): the assessment is absent with that reason
    assert line["malignancy_probability"] is None
    assert line["assessment_absent_reason"] == f"not gradeable: {line['not_gradeable']}"
    assert main([str(tmp_path / "flat.png"), "--models", str(models_dir), "--pixel-size-mm", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--pixel-size-mm" in err and "Traceback" not in err


def test_table_shows_the_assessment(models_dir, tmp_path, rng, capsys):
    image, _ = synthetic_frame(rng, 260, 340)
    cv2.imwrite(str(tmp_path / "scan.png"), image)
    assert main([str(tmp_path / "scan.png"), "--models", str(models_dir), "--pixel-size-mm", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "malignancy" in out and " mm (longest" in out and "shape:" in out
