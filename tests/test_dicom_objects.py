"""The SR, SEG and SC Sonograde writes, read back with highdicom; grade --dicom-out; frame choice."""

from __future__ import annotations

import json

import numpy as np
import pytest

hd = pytest.importorskip("highdicom")

from dicom_samples import ultrasound_dataset  # noqa: E402

from sonograde import RESEARCH_USE_ONLY  # noqa: E402
from sonograde.dicom import grading, objects  # noqa: E402


@pytest.fixture(scope="module")
def grader():
    from engine.grader import DEFAULT_MODELS_DIR, TwoStageGrader

    if not (DEFAULT_MODELS_DIR / "roi_cnn.onnx").exists():
        pytest.skip("shipped models not present")
    grader = TwoStageGrader.from_models_dir()
    grader.warm_up()
    return grader


@pytest.fixture(scope="module")
def phantom():
    from capture.phantom import PhantomScanner

    return PhantomScanner(11).sample()


def _roundtrip(dataset, tmp_path, name):
    path = tmp_path / name
    dataset.save_as(path, enforce_file_format=True)
    return path


def _texts(item) -> dict[str, list[str]]:
    """TEXT values under a content item by concept code value, depth first."""
    found: dict[str, list[str]] = {}

    def walk(items):
        for child in items:
            if getattr(child, "ValueType", "") == "TEXT":
                code = str(child.ConceptNameCodeSequence[0].CodeValue)
                found.setdefault(code, []).append(str(child.TextValue))
            walk(getattr(child, "ContentSequence", []))

    walk(list(item))  # a highdicom template: a sequence of content items
    return found


def _statement(sr) -> str:
    texts = []

    def walk(items):
        for item in items:
            if getattr(item, "ValueType", "") == "TEXT":
                texts.append(str(item.TextValue))
            walk(getattr(item, "ContentSequence", []))

    walk(sr.ContentSequence)
    return "\n".join(texts)


@pytest.mark.parametrize("with_extras", [False, True], ids=["plain", "descriptors+malignancy"])
def test_report_holds_the_grader_values(grader, phantom, tmp_path, with_extras):
    from refine.measure import lesion_size

    ds = ultrasound_dataset(phantom.image, pixel_size_mm=phantom.pixel_size_mm)
    result = grader.grade(phantom.image)
    assert result.lesion_found
    size = lesion_size(result.refined_mask, phantom.pixel_size_mm, "dicom_ultrasound_regions")
    descriptors = {"shape": "oval", "orientation": {"value": "parallel", "angle_deg": 3.0},
                   "margin": "angular"} if with_extras else None
    assessment = objects.Assessment(
        category=result.category, probabilities=result.probabilities, contour=result.refined_contour,
        mask=result.refined_mask, size=size, model_ids=result.model_ids, descriptors=descriptors,
        malignancy_probability=0.37 if with_extras else None)
    sr = hd.sr.srread(_roundtrip(objects.build_measurement_report(ds, assessment), tmp_path, "sr.dcm"))
    assert sr.PatientName == ds.PatientName and sr.StudyInstanceUID == ds.StudyInstanceUID
    group = sr.content.get_planar_roi_measurement_groups()[0]
    measured = {m.name.meaning: (m.value, m.unit.value) for m in group.get_measurements()}
    expected = {"Width": (size["width"], "mm"), "Height": (size["height"], "mm"),
                "Long axis": (size["longest"], "mm")}
    if with_extras:
        expected["Probability of cancer"] = (0.37, "1")
    assert measured == pytest.approx(expected)
    evaluations = {e.name.meaning: e.value.meaning for e in group.get_qualitative_evaluations()}
    assert evaluations["Assessment Category"].startswith(f"BI-RADS {result.category}:")
    if with_extras:
        assert evaluations["Shape"] == "Ovoid shape"
        assert evaluations["Orientation"] == "Parallel"
        assert evaluations["Margins"] == "angular"  # no DICOM code for it: private scheme, own words
    else:
        assert set(evaluations) == {"Finding category", "Assessment Category"}
    texts = _texts(group)
    assert texts["111001"][0] == objects.MODEL_NAME  # Algorithm Name
    assert texts["111002"][:2] == [f"ROI-CNN {result.model_ids['roi']}",  # Algorithm Parameters
                                   f"G-CNN {result.model_ids['grader']}"]
    assert RESEARCH_USE_ONLY in _statement(sr)
    # the same input and models give the same UIDs (a repeat replaces instead of duplicating)
    again = objects.build_measurement_report(ds, assessment)
    assert again.SOPInstanceUID == sr.SOPInstanceUID and again.SeriesInstanceUID == sr.SeriesInstanceUID


def test_without_pixel_size_no_mm_and_the_report_says_why(grader, phantom, tmp_path):
    ds = ultrasound_dataset(phantom.image, pixel_size_mm=None)
    graded = grading.grade_dataset(ds, grader)
    assert graded.summary["size"]["unit"] == "px"
    sr = hd.sr.srread(_roundtrip(graded.objects["sr"], tmp_path, "sr.dcm"))
    group = sr.content.get_planar_roi_measurement_groups()[0]
    assert [m.name.meaning for m in group.get_measurements() if m.unit.value == "mm"] == []
    assert "Lesion size not reported" in _statement(sr)


def test_no_lesion_gives_a_report_and_no_segmentation(grader, tmp_path):
    ds = ultrasound_dataset(np.full((256, 320), 90, np.uint8), pixel_size_mm=0.1)
    graded = grading.grade_dataset(ds, grader)
    assert not graded.result.lesion_found
    assert set(graded.objects) == {"sr"}
    sr = hd.sr.srread(_roundtrip(graded.objects["sr"], tmp_path, "sr.dcm"))
    assert sr.content.get_planar_roi_measurement_groups() == []
    [group] = sr.content.get_image_measurement_groups()
    assert group.finding_type.value == objects.NO_LESION.value
    with pytest.raises(ValueError, match="no lesion"):
        objects.build_segmentation(ds, graded.assessment)


def test_segmentation_is_the_refined_mask(grader, phantom, tmp_path):
    ds = ultrasound_dataset(phantom.image, pixel_size_mm=phantom.pixel_size_mm)
    graded = grading.grade_dataset(ds, grader)
    seg = hd.seg.segread(_roundtrip(graded.objects["seg"], tmp_path, "seg.dcm"))
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[str(ds.SOPInstanceUID)],
                                               segment_numbers=[1])
    np.testing.assert_array_equal(np.asarray(pixels)[0, :, :, 0] > 0, graded.result.refined_mask)
    assert seg.PatientID == ds.PatientID and seg.StudyInstanceUID == ds.StudyInstanceUID
    description = seg.get_segment_description(1)
    assert description.segmented_property_type.meaning == "Lesion"


def test_multiframe_reports_the_frame_with_the_largest_lesion(grader, tmp_path):
    from capture.phantom import PhantomScanner

    samples = [PhantomScanner(seed).sample() for seed in (11, 12, 13)]
    shape = samples[0].image.shape
    frames = np.stack([s.image[: shape[0], : shape[1]] for s in samples])
    ds = ultrasound_dataset(frames, pixel_size_mm=samples[0].pixel_size_mm,
                            sop_class_uid=grading.US_MULTIFRAME_IMAGE_STORAGE)
    graded = grading.grade_dataset(ds, grader, max_frames=8, overlay=True)
    areas = [grader.grade(f).area_px for f in frames]
    chosen = int(np.argmax(areas)) + 1
    assert graded.summary["graded_frames"] == [1, 2, 3] and graded.summary["reported_frame"] == chosen
    sr = hd.sr.srread(_roundtrip(graded.objects["sr"], tmp_path, "sr.dcm"))
    image_item = sr.content.get_planar_roi_measurement_groups()[0].roi.ContentSequence[0]
    assert int(image_item.ReferencedSOPSequence[0].ReferencedFrameNumber) == chosen
    seg = hd.seg.segread(_roundtrip(graded.objects["seg"], tmp_path, "seg.dcm"))
    assert int(seg.NumberOfFrames) == 1
    [derived] = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence
    assert str(derived.SourceImageSequence[0].ReferencedSOPInstanceUID) == str(ds.SOPInstanceUID)
    assert int(derived.SourceImageSequence[0].ReferencedFrameNumber) == chosen
    np.testing.assert_array_equal(np.asarray(seg.pixel_array).reshape(shape) > 0,
                                  grader.grade(frames[chosen - 1]).refined_mask)
    sc = graded.objects["sc"]
    assert sc.BurnedInAnnotation == "YES" and sc.StudyInstanceUID == ds.StudyInstanceUID
    assert sc.Rows >= shape[0] and sc.SamplesPerPixel == 3


def test_frames_to_grade_spreads_over_the_clip():
    assert grading.frames_to_grade(3, 8) == [0, 1, 2]
    picked = grading.frames_to_grade(100, 8)
    assert len(picked) == 8 and picked[0] == 0 and picked[-1] == 99


def test_grade_dicom_out_writes_the_same_objects(grader, phantom, tmp_path, capsys):
    from sonograde.cli import main

    ds = ultrasound_dataset(phantom.image, pixel_size_mm=phantom.pixel_size_mm)
    source = tmp_path / "scan.dcm"
    ds.save_as(source, enforce_file_format=True)
    out = tmp_path / "dicom"
    assert main(["grade", str(source), "--dicom-out", str(out), "--dicom-overlay", "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    summary = json.loads((out / "scan.json").read_text())
    assert summary["category"] == line["category"] and summary["size"]["unit"] == "mm"
    sr = hd.sr.srread(out / "scan_sr.dcm")
    seg = hd.seg.segread(out / "scan_seg.dcm")
    assert {sr.PatientID, seg.PatientID} == {ds.PatientID}
    assert (out / "scan_sc.dcm").exists()


def test_grade_dicom_out_names_a_non_dicom_input(grader, phantom, tmp_path, capsys):
    import cv2

    from sonograde.cli import main

    png = tmp_path / "scan.png"
    cv2.imwrite(str(png), phantom.image)
    assert main(["grade", str(png), "--dicom-out", str(tmp_path / "out"), "--json"]) == 0
    assert "not a DICOM file" in capsys.readouterr().err


def test_refused_datasets_say_why():
    ds = ultrasound_dataset(np.zeros((64, 64), np.uint8), pixel_size_mm=0.1, modality="CT")
    with pytest.raises(grading.RefusedError, match="modality CT") as caught:
        grading.check_dataset(ds)
    assert caught.value.status == grading.STATUS_NOT_ULTRASOUND


def test_forward_target_parsing():
    from sonograde.dicom.node import ForwardTarget

    assert str(ForwardTarget.parse("PACS@127.0.0.1:4242")) == "PACS@127.0.0.1:4242"
    for bad in ("PACS@127.0.0.1", "127.0.0.1:104", "PACS@host:port", "@h:1", "A" * 17 + "@h:1"):
        with pytest.raises(ValueError, match="AE@HOST:PORT"):
            ForwardTarget.parse(bad)


def test_the_graders_explained_assessment_goes_into_the_report(grader, phantom, tmp_path):
    """With a descriptor model (models/descriptors.json) the grader's descriptors and malignancy
    probability appear in the SR as it gives them."""
    if grader.descriptors is None:
        pytest.skip("no models/descriptors.json: the grader gives no descriptors")
    ds = ultrasound_dataset(phantom.image, pixel_size_mm=phantom.pixel_size_mm)
    graded = grading.grade_dataset(ds, grader)
    explained = graded.result.assessment
    sr = hd.sr.srread(_roundtrip(graded.objects["sr"], tmp_path, "sr.dcm"))
    group = sr.content.get_planar_roi_measurement_groups()[0]
    measured = {m.name.meaning: m.value for m in group.get_measurements()}
    assert measured["Probability of cancer"] == pytest.approx(explained["malignancy_probability"])
    given = [name for name, entry in explained["descriptors"].items() if entry.get("value") is not None]
    evaluations = group.get_qualitative_evaluations()
    assert len(evaluations) == 2 + len(given)  # finding category, assessment category, descriptors
    assert graded.summary["size"] == explained["size"]  # one home for size: the same numbers
    texts = _texts(group)
    assert f"descriptor model {grader.model_ids['descriptors']}" in texts["111002"]
