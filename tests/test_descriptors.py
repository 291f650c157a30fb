"""The explained assessment: features, the shipped descriptor model, training helpers, the grader's result."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.descriptors import (
    DEFAULT_MODEL_PATH,
    DESCRIPTOR_ORDER,
    DESCRIPTOR_VALUES,
    FEATURE_NAMES,
    MARGIN_SUBTYPES,
    DescriptorModel,
    absent,
    gcnn_suspicion,
    lesion_features,
)
from refine.measure import SIZE_KEYS

UNIFORM = np.full(5, 0.2)


def _frame(rng: np.random.Generator, shape=(300, 400), centre=(200, 120), axes=(60, 30),
           lesion_gray=40, posterior: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Speckled tissue, a dark elliptical lesion, and below it a band brightened (enhancement, > 0) or
    darkened (shadowing, < 0) by ``posterior`` gray levels."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy = centre
    ax, ay = axes
    mask = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1
    img = rng.normal(120, 20, shape)
    below = (yy > cy + ay) & (np.abs(xx - cx) < ax * 0.9)
    img[below] += posterior
    img[mask] = rng.normal(lesion_gray, 8, int(mask.sum()))
    return np.clip(img, 0, 255).astype(np.uint8), mask


def _feature(values: np.ndarray, name: str) -> float:
    return float(values[FEATURE_NAMES.index(name)])


def test_features_see_the_posterior_band_and_the_contrast(rng):
    shadow = lesion_features(*_frame(rng, posterior=-60), UNIFORM)
    plain = lesion_features(*_frame(rng, posterior=0), UNIFORM)
    enhance = lesion_features(*_frame(rng, posterior=60), UNIFORM)
    assert shadow.shape == (len(FEATURE_NAMES),) and np.isfinite(shadow).all()
    post = [_feature(v, "posterior_vs_beside") for v in (shadow, plain, enhance)]
    assert post[0] < -0.5 < post[1] < 0.5 < post[2]
    assert _feature(plain, "contrast") > 1.0  # dark lesion in brighter tissue
    assert _feature(plain, "log_height_width") == pytest.approx(math.log(61 / 121), abs=0.05)
    assert _feature(plain, "solidity") > 0.95 and _feature(plain, "circularity") > 0.6


def test_features_are_scale_free(rng):
    small_img, small_mask = _frame(rng, shape=(300, 400), centre=(200, 120), axes=(60, 30))
    import cv2

    big_img = cv2.resize(small_img, (800, 600), interpolation=cv2.INTER_LINEAR)
    big_mask = cv2.resize(small_mask.astype(np.uint8), (800, 600), interpolation=cv2.INTER_NEAREST) > 0
    a = lesion_features(small_img, small_mask, UNIFORM)
    b = lesion_features(big_img, big_mask, UNIFORM)
    for name in ("log_area_fraction", "width_fraction", "height_fraction", "log_height_width", "solidity",
                 "axis_ratio", "inside_mean", "ring_mean"):
        assert _feature(a, name) == pytest.approx(_feature(b, name), abs=0.05), name


@pytest.mark.parametrize("where", ["corner", "bottom", "tiny"])
def test_features_finite_at_the_edges(rng, where):
    img = rng.integers(0, 255, (200, 260), dtype=np.uint8)
    mask = np.zeros_like(img, dtype=bool)
    if where == "corner":
        mask[:30, :40] = True
    elif where == "bottom":
        mask[170:, 100:180] = True  # no room for a posterior band
    else:
        mask[100, 100] = True
    values = lesion_features(img, mask, None)
    assert np.isfinite(values).all()
    assert _feature(values, "gcnn_suspicion") == 0.0


def test_feature_input_errors():
    img = np.zeros((50, 50), np.uint8)
    with pytest.raises(ValueError, match="empty"):
        lesion_features(img, np.zeros((50, 50), bool), None)
    with pytest.raises(ValueError, match="shape"):
        lesion_features(img, np.ones((40, 50), bool), None)
    with pytest.raises(ValueError, match="5 numbers"):
        gcnn_suspicion(np.ones(4) / 4)
    assert gcnn_suspicion(np.array([0, 0, 0, 0, 1.0])) > gcnn_suspicion(np.array([1.0, 0, 0, 0, 0]))


# ----------------------------------------------------------------------------- the shipped model


@pytest.fixture(scope="module")
def model() -> DescriptorModel:
    if not DEFAULT_MODEL_PATH.is_file():
        pytest.skip("models/descriptors.json not shipped")
    return DescriptorModel.load()


def test_shipped_model_assessment_has_the_issue_keys(model, rng):
    img, mask = _frame(rng)
    out = model.assess(img, mask, UNIFORM)
    assert list(out["descriptors"]) == list(DESCRIPTOR_ORDER)
    d = out["descriptors"]
    for name, values in DESCRIPTOR_VALUES.items():
        entry = d[name]
        if entry["value"] is None:  # a descriptor the model could not learn says why
            assert entry["reason"]
            continue
        assert list(entry["probabilities"]) == list(values)
        assert entry["value"] == max(entry["probabilities"], key=entry["probabilities"].get)
        assert sum(entry["probabilities"].values()) == pytest.approx(1, abs=1e-3)
    assert set(d["margin"]["subtypes"]) <= set(MARGIN_SUBTYPES)
    assert all(0 <= p <= d["margin"]["probabilities"]["not circumscribed"] + 1e-4
               for p in d["margin"]["subtypes"].values())
    assert d["orientation"]["value"] == "parallel" and abs(d["orientation"]["angle_deg"]) < 5
    assert tuple(out["size"]) == SIZE_KEYS and out["size"]["unit"] == "px"
    assert out["size"]["width"] == 121 and out["size"]["height"] == 61
    assert 0 < out["malignancy_probability"] < 1
    for driver in out["drivers"]:
        assert driver["descriptor"] in DESCRIPTOR_ORDER
        assert driver["direction"] == ("up" if driver["contribution"] > 0 else "down")
    json.dumps(out)  # JSON-ready


def test_size_in_mm_only_with_a_pixel_size(model, rng):
    img, mask = _frame(rng)
    out = model.assess(img, mask, UNIFORM, pixel_size_mm=0.1, pixel_size_source="manifest")
    assert out["size"]["unit"] == "mm" and out["size"]["width"] == pytest.approx(12.1)
    assert out["size"]["pixel_size_source"] == "manifest"
    with pytest.raises(ValueError, match="pixel_size_source"):
        model.assess(img, mask, UNIFORM, pixel_size_mm=0.1)


def test_malignancy_follows_the_grader_suspicion(model, rng):
    img, mask = _frame(rng)
    low = model.assess(img, mask, np.array([0.9, 0.05, 0.03, 0.01, 0.01]))["malignancy_probability"]
    high = model.assess(img, mask, np.array([0.01, 0.01, 0.03, 0.05, 0.9]))["malignancy_probability"]
    assert high > low


def test_absent_says_why():
    out = absent("no lesion found")
    assert out["descriptors"] is None and out["size"] is None and out["malignancy_probability"] is None
    assert out["assessment_absent_reason"] == "no lesion found"


def test_damaged_models_are_refused(tmp_path, model):
    data = json.loads(DEFAULT_MODEL_PATH.read_text())
    bad = tmp_path / "d.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not readable JSON"):
        DescriptorModel.load(bad)
    with pytest.raises(ValueError, match="not found"):
        DescriptorModel.load(tmp_path / "missing.json")
    for change, message in [
        (lambda d: d.update(format="other"), "not a descriptor model"),
        (lambda d: d.update(feature_names=d["feature_names"][:-1]), "retrain"),
        (lambda d: d["heads"]["shape"].update(coef=[[0.0]]), "shape"),
        (lambda d: d.pop("malignancy"), "lacks"),
        (lambda d: d["heads"]["shape"].update(intercept=[float("nan")] * 3), "non-finite"),
    ]:
        broken = json.loads(json.dumps(data))
        change(broken)
        bad.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=message):
            DescriptorModel.load(bad)


# ----------------------------------------------------------------------------- the grader's result


def test_grader_result_carries_the_assessment(tmp_path, rng, model):
    from engine.backends.dev_models import make_grader_model, make_roi_model, synthetic_frame
    from engine.grader import TwoStageGrader

    make_roi_model(tmp_path / "roi_cnn.onnx")
    make_grader_model(tmp_path / "g_cnn.onnx", size=64, channels=2)
    shutil.copy(DEFAULT_MODEL_PATH, tmp_path / "descriptors.json")
    grader = TwoStageGrader.from_models_dir(tmp_path)
    assert grader.model_ids["descriptors"] == model.model_id
    image, _ = synthetic_frame(rng, 260, 340)
    result = grader.grade(image, pixel_size_mm=0.08, pixel_size_source="cli")
    assert result.lesion_found
    summary = result.as_dict()
    assert summary["size"]["unit"] == "mm" and summary["size"]["pixel_size_source"] == "cli"
    assert list(summary["descriptors"]) == list(DESCRIPTOR_ORDER)
    assert 0 < summary["malignancy_probability"] < 1
    empty = grader.grade(np.full((200, 300), 90, np.uint8)).as_dict()
    assert empty["lesion_found"] is False and empty["descriptors"] is None and empty["size"] is None
    assert empty["assessment_absent_reason"] == "no lesion found"
    # without the model file the result is the category alone, as before
    (tmp_path / "descriptors.json").unlink()
    plain = TwoStageGrader.from_models_dir(tmp_path).grade(image).as_dict()
    assert "descriptors" not in plain and plain["lesion_found"]
    (tmp_path / "descriptors.json").write_text("{}")
    from engine.backends import ModelLoadError

    with pytest.raises(ModelLoadError, match="descriptor model"):
        TwoStageGrader.from_models_dir(tmp_path)


# ----------------------------------------------------------------------------- training helpers


def test_logistic_fit_recovers_a_known_model(rng):
    from engine.training.descriptors import fit_logistic, predict_logistic

    x = rng.normal(size=(4000, 3))
    w = np.array([[1.5, -2.0, 0.0]])
    y = (rng.random(4000) < 1 / (1 + np.exp(-(x @ w.T + 0.5)[:, 0]))).astype(int)
    coef, b = fit_logistic(x, y, 2, lam=1e-3)
    np.testing.assert_allclose(coef, w, atol=0.2)
    assert b[0] == pytest.approx(0.5, abs=0.15)
    p = predict_logistic(x, coef, b, 2)
    assert p.shape == (4000, 2) and np.allclose(p.sum(1), 1)
    labels = rng.integers(0, 3, 600)
    x3 = np.eye(3)[labels] * 3 + rng.normal(size=(600, 3))
    coef3, b3 = fit_logistic(x3, labels, 3)
    assert (predict_logistic(x3, coef3, b3, 3).argmax(1) == labels).mean() > 0.9


def test_metrics_match_hand_computed_values():
    from engine.training.descriptors import auc, cohen_kappa, expected_calibration_error

    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 1, 1, 1, 2, 0])
    # observed agreement 4/6; expected (2*2 + 2*3 + 2*1) / 36 = 12/36
    assert cohen_kappa(y, p, 3) == pytest.approx((4 / 6 - 1 / 3) / (1 - 1 / 3))
    assert cohen_kappa(y, y, 3) == 1.0
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert expected_calibration_error(np.array([0, 1]), np.array([0.05, 0.95])) == pytest.approx(0.05)


def test_manifest_labels_parse():
    from engine.data.manifest import ManifestRecord
    from engine.training.descriptors import descriptor_labels

    extra = {"shape": "irregular", "margin": "not circumscribed - spiculated&angular&indistinct",
             "echogenicity": "complex cystic/solid", "posterior_features": "combined",
             "calcifications": "in a mass"}
    record = ManifestRecord("breast_lesions_usg", "c1", Path("x.png"), None, extra=extra)
    labels = descriptor_labels(record)
    assert labels["shape"] == "irregular" and labels["margin"] == "not circumscribed"
    assert labels["subtype:spiculated"] == "yes" and labels["subtype:microlobulated"] == "no"
    assert labels["echo_pattern"] == "complex cystic and solid"
    assert labels["posterior_features"] == "combined pattern"
    assert labels["calcifications"] == "calcifications in a mass"
    extra = {"margin": "circumscribed", "calcifications": "indefinable"}
    plain = descriptor_labels(ManifestRecord("busbra", "b", Path("x.png"), None, extra=extra))
    assert plain["margin"] == "circumscribed" and plain["subtype:angular"] is None
    assert plain["shape"] is None and plain["calcifications"] is None  # missing is never a negative
