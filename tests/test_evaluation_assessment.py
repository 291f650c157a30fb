"""Evaluation of the explained assessment: kappa, intervals and calibration with known answers, the
summary over cases (labels a case lacks skipped, never negatives), and `sonograde evaluate` end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.agreement import (
    calibration_bins,
    cohen_kappa,
    expected_calibration_error,
    kappa_from_matrix,
    kappa_with_ci,
)
from engine.lexicon import DESCRIPTORS, manifest_descriptor_labels
from sonograde.assessment import NO_DESCRIPTOR_MODEL
from sonograde.cli import main
from sonograde.evaluation.assessment import summarize_assessment, write_assessment_report
from sonograde.evaluation.summary import CaseResult


def test_kappa_known_answers():
    # Observed agreement 0.7, chance agreement 0.5 -> kappa 0.4.
    assert kappa_from_matrix(np.array([[20, 5], [10, 15]])) == pytest.approx(0.4)
    assert cohen_kappa([0, 1, 2, 2], [0, 1, 2, 2], 3) == pytest.approx(1.0)
    assert kappa_from_matrix(np.array([[5, 0], [0, 0]])) is None  # one class only: undefined
    # Quadratic weights: an off-by-one error costs a quarter of an off-by-two one (3 classes).
    truth, near, far = [0, 1, 2, 0, 1, 2], [1, 1, 2, 0, 1, 2], [2, 1, 2, 0, 1, 2]
    assert cohen_kappa(truth, near, 3, "quadratic") > cohen_kappa(truth, far, 3, "quadratic")
    # Hand-computed: truth [0, 1, 2], predicted [0, 2, 2]; w = ((i-j)/2)^2
    # observed weighted disagreement 0.25/3; expected from marginals (1,1,1) x (1,0,2)/3: 1.25/3 -> 0.8
    assert cohen_kappa([0, 1, 2], [0, 2, 2], 3, "quadratic") == pytest.approx(0.8)
    with pytest.raises(ValueError):
        cohen_kappa([0], [0], 2, "linear-ish")


def test_bootstrap_interval_is_seeded_and_contains_the_estimate(rng):
    truth = rng.integers(0, 3, 120)
    predicted = np.where(rng.random(120) < 0.6, truth, rng.integers(0, 3, 120))
    first = kappa_with_ci(truth, predicted, 3, replicates=500, seed=3)
    again = kappa_with_ci(truth, predicted, 3, replicates=500, seed=3)
    assert first.ci95 == again.ci95
    assert first.ci95[0] < first.kappa < first.ci95[1]
    assert first.agreement == pytest.approx(float(np.mean(truth == predicted)))
    assert first.confusion.sum() == 120
    assert kappa_with_ci([1], [1], 2).ci95 is None


def test_expected_calibration_error_known_answer():
    labels, probabilities = [False, True, True, True], [0.05, 0.05, 0.95, 0.95]
    # bin 0: mean 0.05, half positive -> 0.45; bin 9: mean 0.95, all positive -> 0.05; each half the cases
    assert expected_calibration_error(labels, probabilities) == pytest.approx(0.25)
    bins = calibration_bins(labels, probabilities)
    assert [b.n for b in bins] == [2, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    assert calibration_bins([True], [1.0])[-1].n == 1  # 1.0 falls in the last, closed bin
    assert expected_calibration_error([], []) is None
    with pytest.raises(ValueError):
        calibration_bins([True], [1.5])


def _case(case_id: str, row: dict, predicted: dict | None, size: dict | None, truth_size: dict | None,
          pathology: str | None = None, malignancy: float | None = None, birads: str | None = None,
          probabilities=None) -> CaseResult:
    assessment: dict = {"absent": {}}
    if predicted is not None:
        assessment["descriptors"] = {k: {"value": v} for k, v in predicted.items()}
    if size is not None:
        assessment["size"] = size
    if malignancy is not None:
        assessment["malignancy_probability"] = malignancy
    case = CaseResult(dataset="d", id=case_id, image_path="", shape=(10, 10), pixel_size_mm=0.1,
                      birads=birads, label=birads, pathology=pathology,
                      has_lesion_mask=truth_size is not None)
    case.assessment = assessment
    case.descriptor_truth = manifest_descriptor_labels(row)
    case.truth_size = truth_size
    case.lesion_found["refined"] = size is not None
    if probabilities is not None:
        case.probabilities["refined"] = probabilities
    return case


def _size(width: float, height: float, unit: str = "mm") -> dict:
    return {"unit": unit, "width": width, "height": height, "longest": max(width, height),
            "pixel_size_mm": 0.1 if unit == "mm" else None,
            "pixel_size_source": "manifest" if unit == "mm" else None}


def test_summary_skips_missing_labels_and_counts_missed_predictions():
    one_hot = {"3": (1, 0, 0, 0, 0), "4B": (0, 0, 1, 0, 0), "5": (0, 0, 0, 0, 1)}
    cases = [
        _case("a", {"shape": "oval", "margin": "circumscribed"}, {"shape": "oval", "margin": "circumscribed"},
              _size(10, 5), _size(10, 4), "benign", 0.1, "3", one_hot["3"]),
        _case("b", {"shape": "irregular", "margin": "not circumscribed - spiculated"},
              {"shape": "irregular", "margin": "circumscribed"}, _size(12, 6), _size(10, 6), "malignant", 0.9,
              "5", one_hot["5"]),
        _case("c", {"shape": "round"}, {"shape": "oval", "margin": "not circumscribed"}, _size(8, 8),
              _size(8, 10), "benign", 0.3, "4B", one_hot["3"]),
        # BUS-BRA-like: no descriptor columns at all -> contributes to nothing but size/malignancy
        _case("d", {}, {"shape": "round", "margin": "circumscribed"}, _size(20, 10, "px"),
              _size(25, 10, "px"), "malignant", 0.7),
        # lesion missed: labelled but no prediction
        _case("e", {"shape": "oval"}, None, None, _size(9, 9), "benign", None, "3"),
    ]
    summary = summarize_assessment(cases, replicates=200, seed=1)
    shape = summary["descriptors"]["shape"]
    assert shape["n_labelled"] == 4 and shape["n"] == 3 and shape["n_no_prediction"] == 1
    assert shape["labels"] == list(DESCRIPTORS["shape"])
    assert np.array(shape["confusion"]).sum() == 3 and shape["agreement"] == pytest.approx(2 / 3, abs=1e-3)
    assert shape["published_reader_kappa"] == [0.42, 0.66]
    margin = summary["descriptors"]["margin"]
    assert margin["n_labelled"] == 2  # c and d carry no margin label: skipped, not "circumscribed"
    assert "calcifications" not in summary["descriptors"]  # no case has that label
    size = summary["size"]
    assert size["n"] == 4 and size["n_no_prediction"] == 1
    # width relative errors 0, 0.2, 0, 0.2 -> median 0.1; height 0.25, 0, 0.2, 0 -> median 0.1
    assert size["width_median_relative_error"] == pytest.approx(0.1)
    assert size["height_median_relative_error"] == pytest.approx(0.1)
    assert size["n_mm"] == 3 and size["width_median_abs_error_mm"] == pytest.approx(0.0)
    malignancy = summary["malignancy"]
    assert malignancy["source"] == "model malignancy_probability"
    assert malignancy["n"] == 4 and malignancy["n_no_prediction"] == 1 and malignancy["auc"] == 1.0
    five = summary["five_way"]
    assert five["n"] == 4 and five["n_no_lesion"] == 1 and five["accuracy"] == pytest.approx(0.5)
    assert five["quadratic_weighted_kappa"] is not None


def test_summary_without_descriptor_predictions_says_why(tmp_path):
    case = _case("a", {"shape": "oval"}, None, _size(5, 5), _size(5, 5), "benign", None, "3",
                 (1, 0, 0, 0, 0))
    case.assessment["absent"] = {"descriptors": NO_DESCRIPTOR_MODEL}
    summary = summarize_assessment([case], replicates=50)
    assert "descriptors" not in summary and summary["descriptors_absent"] == [NO_DESCRIPTOR_MODEL]
    assert summary["malignancy"]["source"].startswith("category likelihood")
    assert "five_way" not in summary  # only a "3" label: no 4A/4B/4C, no five-way block
    files = write_assessment_report(tmp_path, summary)
    assert files[0].name == "assessment.md" and NO_DESCRIPTOR_MODEL in files[0].read_text()


def test_evaluate_reports_the_assessment_end_to_end(tmp_path, capsys):
    """Dev models on a BrEaST-style manifest (descriptor columns, pixel sizes, pathology)."""
    from engine.backends.dev_models import make_grader_model, make_roi_model, synthetic_frame

    models = tmp_path / "models"
    models.mkdir()
    make_roi_model(models / "roi_cnn.onnx")
    make_grader_model(models / "g_cnn.onnx", size=32)
    data = tmp_path / "breast_like"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.default_rng(int(np.random.randint(1 << 30)))
    rows = []
    for i, (birads, pathology, shape, margin) in enumerate([
            ("3", "benign", "oval", "circumscribed"),
            ("4b", "malignant", "irregular", "not circumscribed - angular"),
            ("5", "malignant", "irregular", "not circumscribed - spiculated&indistinct"),
            ("4a", "benign", "round", "circumscribed")]):
        image, mask = synthetic_frame(rng, 240, 320)
        cv2.imwrite(str(data / "images" / f"{i}.png"), image)
        cv2.imwrite(str(data / "masks" / f"{i}.png"), mask.astype(np.uint8) * 255)
        rows.append({"id": str(i), "image": f"images/{i}.png", "mask": f"masks/{i}.png", "birads": birads,
                     "pathology": pathology, "pixel_size_mm": "0.1", "shape": shape, "margin": margin,
                     "echogenicity": "hypoechoic", "posterior_features": "no", "halo": "no",
                     "calcifications": "no"})
    with (data / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "report"
    assert main(["evaluate", "--data", str(data), "--models", str(models), "--skip-no-roi", "--json",
                 "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assessment = result["assessment"]
    assert assessment["descriptors_absent"] == [NO_DESCRIPTOR_MODEL]  # the dev grader has no heads
    size = assessment["size"]
    assert size["n"] + size["n_no_prediction"] == 4 and size["n_mm"] == size["n"]
    # The dev ROI model snaps to the drawn ellipses: sizes within a few percent of the masks'.
    assert size["width_median_relative_error"] < 0.15 and size["height_median_relative_error"] < 0.15
    assert assessment["malignancy"]["n"] == 4 and 0.0 <= assessment["malignancy"]["ece"] <= 1.0
    assert assessment["five_way"]["n"] == 4
    assert (out / "reliability.png").stat().st_size > 0
    assert "research use only" in (out / "assessment.md").read_text().lower()


def test_every_breast_descriptor_is_summarized_on_real_labels(shared_data):
    """Real BrEaST-Lesions_USG labels through the summary (predictions = the labels themselves, so the
    kappas must be exactly 1): proves every lexicon column is read and mapped."""
    path = Path(shared_data) / "breast_lesions_usg" / "manifest.csv"
    if not path.exists():
        pytest.skip("BrEaST-Lesions_USG not present")
    cases = []
    for row in csv.DictReader(path.open(newline="", encoding="utf-8")):
        labels = manifest_descriptor_labels(row)
        predicted = {k: v for k, v in labels.values.items() if v is not None}
        cases.append(_case(row["id"], row, predicted, None, None))
    summary = summarize_assessment(cases, replicates=50)
    for name in ("shape", "margin", "echo_pattern", "posterior_features", "calcifications"):
        block = summary["descriptors"][name]
        assert block["kappa"] == pytest.approx(1.0) and block["n"] > 140, name


def test_a_descriptor_the_model_does_not_give_is_reported_with_its_reason():
    case = _case("a", {"shape": "oval", "calcifications": "no"}, {"shape": "oval"}, _size(5, 5), _size(5, 5))
    case.assessment["descriptors"]["calcifications"] = {"value": None, "reason": "too few positives"}
    block = summarize_assessment([case], replicates=20)["descriptors"]["calcifications"]
    assert block["n"] == 0 and block["n_no_prediction"] == 1
    assert block["not_predicted"] == ["too few positives"]
