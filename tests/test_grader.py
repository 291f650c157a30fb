"""The two-stage grader on synthetic frames with dev models, and on phantom frames with the shipped models."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest

from engine.backends import ModelLoadError, load_backend
from engine.backends.dev_models import make_grader_model, make_roi_model, synthetic_frame
from engine.grader import DEFAULT_MODELS_DIR, GraderConfig, TwoStageGrader, model_path
from engine.preprocess import grader_input, roi_input
from engine.results import CATEGORIES

REPO_MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.fixture
def models_dir(tmp_path):
    make_roi_model(tmp_path / "roi_cnn.onnx")
    make_grader_model(tmp_path / "g_cnn.onnx", size=64, channels=2, margin=0.2)
    return tmp_path


@pytest.fixture
def grader(models_dir):
    g = TwoStageGrader.from_models_dir(models_dir)
    g.warm_up()
    return g


def dsc(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def test_default_models_dir_is_the_repos():
    assert DEFAULT_MODELS_DIR == REPO_MODELS


def test_locate_uses_the_shared_preprocessing(grader, rng):
    for shape in [(200, 260), (288, 288), (600, 800), (731, 517)]:
        image, _ = synthetic_frame(rng, *shape)
        roi = grader.locate(image)
        expected = grader.roi.run(roi_input(image)[None])[0, 0]
        np.testing.assert_array_equal(roi.prob, expected)
        assert roi.prob.shape == (288, 288) and roi.prob.dtype == np.float32
        assert roi.raw_mask.shape == (288, 288) and roi.raw_mask.dtype == bool
        assert roi.frame_shape == shape
        assert roi.lesion_found == bool(roi.raw_mask.any())
        # the area-filtered mask only keeps pixels over the threshold
        assert np.all(roi.prob[roi.raw_mask] > 0.5 - 1e-6)


@pytest.mark.parametrize("colour", [False, True])
def test_grade_finds_synthetic_lesion(grader, rng, colour):
    height, width = int(rng.integers(180, 700)), int(rng.integers(180, 900))
    image, truth = synthetic_frame(rng, height, width, colour=colour)
    result = grader.grade(image)
    assert result.lesion_found
    for mask in (result.raw_mask, result.refined_mask):
        assert mask.shape == (height, width) and mask.dtype == bool
    assert dsc(result.refined_mask, truth) > 0.7
    ys, xs = np.nonzero(result.refined_mask)
    assert result.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    assert result.area_px == len(xs)
    for contour in (result.raw_contour, result.refined_contour):
        assert contour.dtype == np.int32 and contour.ndim == 2 and contour.shape[1] == 2 and len(contour) >= 3
        assert contour[:, 0].min() >= 0 and contour[:, 0].max() < width
        assert contour[:, 1].min() >= 0 and contour[:, 1].max() < height
    assert list(result.probabilities) == list(CATEGORIES)
    assert abs(sum(result.probabilities.values()) - 1.0) < 1e-4
    assert result.category == max(result.probabilities, key=result.probabilities.get)
    assert set(result.timings_ms) == {"roi_cnn", "refine", "g_cnn", "total"}
    assert all(v >= 0 for v in result.timings_ms.values())
    assert result.timings_ms["total"] >= result.timings_ms["roi_cnn"]
    assert result.model_ids == {"roi": "dev-roi", "grader": "dev-grader"}
    # the product's refinement (native-threshold) runs no Chan–Vese; the others report its iterations
    expected = 0 if GraderConfig().refinement == "native-threshold" else GraderConfig().cv_max_iterations
    assert 0 <= result.iterations <= expected


def test_no_lesion(grader):
    for image in (np.full((240, 320), 128, np.uint8), np.zeros((500, 400, 3), np.uint8)):
        result = grader.grade(image)
        assert not result.lesion_found
        assert result.category is None and result.probabilities is None and result.bbox is None
        assert result.area_px == 0
        assert result.refined_mask.shape == image.shape[:2] and not result.refined_mask.any()
        assert result.refined_contour.shape == (0, 2)
        assert result.timings_ms["g_cnn"] == 0.0
        assert result.as_dict()["bbox"] is None


def test_stages_compose_to_grade(grader, rng):
    image, _ = synthetic_frame(rng, 333, 444)
    roi = grader.locate(image)
    refined = grader.refine(image, roi)
    classified = grader.classify(image, refined)
    result = grader.grade(image)
    np.testing.assert_array_equal(refined.refined_mask, result.refined_mask)
    np.testing.assert_array_equal(refined.raw_mask, result.raw_mask)
    assert refined.bbox == result.bbox and classified.category == result.category
    np.testing.assert_allclose(list(result.probabilities.values()), classified.probabilities, rtol=1e-6)
    assert refined.refined_mask_288.shape == (288, 288)
    # the G-CNN sees exactly the shared grader_input of the frame and the refined mask
    batch = grader_input(image, refined.refined_mask, size=grader.grader_size, margin=grader.grader_margin,
                         mask_channel=grader.mask_channel)[None]
    expected = grader.grader.run(batch)
    np.testing.assert_array_equal(classified.probabilities, expected[0])
    # a stand-in with another mask (the evaluation grades the raw ROI this way) is graded on that mask
    stand_in = dataclasses.replace(refined, refined_mask=refined.raw_mask)
    batch = grader_input(image, refined.raw_mask, size=grader.grader_size, margin=grader.grader_margin,
                         mask_channel=grader.mask_channel)[None]
    np.testing.assert_array_equal(grader.classify(image, stand_in).probabilities, grader.grader.run(batch)[0])
    assert classified.probability == pytest.approx(result.probabilities[result.category])


def test_stages_run_concurrently_on_different_frames(grader, rng):
    """The pipeline runs stages in threads: no per-frame state may leak between calls."""
    frames = [synthetic_frame(rng, int(rng.integers(200, 500)), int(rng.integers(200, 500)))[0]
              for _ in range(6)]
    expected = [grader.grade(f) for f in frames]
    got: list = [None] * len(frames)

    def work(i: int) -> None:
        got[i] = grader.grade(frames[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(frames))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a.refined_mask, b.refined_mask)
        assert a.probabilities == b.probabilities


def test_one_channel_grader(tmp_path, rng):
    make_roi_model(tmp_path / "roi_cnn.onnx")
    make_grader_model(tmp_path / "g_cnn.onnx", size=48, channels=1, margin=0.25)
    grader = TwoStageGrader.from_models_dir(tmp_path)
    assert not grader.mask_channel and grader.grader_size == 48 and grader.grader_margin == 0.25
    image, _ = synthetic_frame(rng, 300, 300)
    assert grader.grade(image).category in CATEGORIES


def test_frame_view_grader_sees_the_whole_frame(tmp_path, rng, monkeypatch):
    make_roi_model(tmp_path / "roi_cnn.onnx")
    make_grader_model(tmp_path / "g_cnn.onnx", size=72, channels=2, view="frame")
    grader = TwoStageGrader.from_models_dir(tmp_path)
    assert grader.grader_view == "frame"
    height, width = int(rng.integers(200, 400)), int(rng.integers(200, 500))
    image, _ = synthetic_frame(rng, height, width)
    seen = []
    run = grader.grader.run
    monkeypatch.setattr(grader.grader, "run", lambda batch: seen.append(batch) or run(batch))
    result = grader.grade(image)
    assert result.lesion_found and result.category in CATEGORIES
    expected = grader_input(image, result.refined_mask, size=72, mask_channel=True, view="frame")
    np.testing.assert_allclose(seen[0][0], expected, atol=1e-6)
    # the mask channel marks the lesion where it lies in the frame, not a centred crop
    ys, xs = np.nonzero(seen[0][0, 1])
    x, y, w, h = result.bbox
    assert abs(xs.mean() / 72 - (x + w / 2) / width) < 0.05
    assert abs(ys.mean() / 72 - (y + h / 2) / height) < 0.05


def test_unknown_grader_view_is_refused(tmp_path):
    make_roi_model(tmp_path / "roi_cnn.onnx")
    make_grader_model(tmp_path / "g_cnn.onnx", view="panorama")
    with pytest.raises(ValueError, match="grader_view is 'panorama'"):
        TwoStageGrader.from_models_dir(tmp_path)


def test_swapped_models_are_refused(models_dir):
    roi = load_backend(models_dir / "roi_cnn.onnx")
    g = load_backend(models_dir / "g_cnn.onnx")
    with pytest.raises(ValueError, match="swapped"):
        TwoStageGrader(g, roi)


def test_missing_precision_files_name_the_command(models_dir):
    with pytest.raises(ModelLoadError) as info:
        TwoStageGrader.from_models_dir(models_dir, precision="int8")
    assert "roi_cnn.int8.onnx" in str(info.value) and "sonograde calibrate int8" in str(info.value)
    with pytest.raises(ModelLoadError, match="sonograde calibrate fp16"):
        TwoStageGrader.from_models_dir(models_dir, precision="fp16")
    with pytest.raises(ModelLoadError, match="build-engine"):
        TwoStageGrader.from_models_dir(models_dir, backend="tensorrt")
    with pytest.raises(ModelLoadError, match="not found"):
        TwoStageGrader.from_models_dir(models_dir / "empty")
    assert model_path("m", "grader", "fp16").name == "g_cnn.fp16.onnx"
    assert model_path("m", "roi", "int8", "tensorrt").name == "roi_cnn.int8.plan"
    with pytest.raises(ValueError, match="precision"):
        model_path("m", "roi", "int4")


# ------------------------------------------------------------------------------ shipped models, phantom

def test_shipped_models_find_phantom_lesions():
    import engine.grader

    shipped = engine.grader.DEFAULT_MODELS_DIR
    if not (shipped / "roi_cnn.onnx").exists() or not (shipped / "g_cnn.onnx").exists():
        pytest.skip(f"shipped models not in {shipped} yet (roi_cnn.onnx, g_cnn.onnx)")
    phantom = pytest.importorskip("capture.phantom", reason="capture.phantom (PhantomScanner) not available")
    grader = TwoStageGrader.from_models_dir()
    grader.warm_up()
    seed = int(np.random.randint(0, 2**31))
    scores = []
    # The shipped models are trained on real images; on the phantom the refined DSC was > 0.5 on 85 % of
    # 200 random frames (87.5 % on 200 others measured later), so >= 12 of 20 fails by chance
    # about once in 750 runs (>= 6 of 10, the earlier check, about once in 100: it did once).
    for i in range(20):
        sample = phantom.PhantomScanner(seed + i).sample()
        result = grader.grade(sample.image)
        scores.append(dsc(result.refined_mask, np.asarray(sample.mask, bool)) if result.lesion_found else 0.0)
        assert result.refined_mask.shape == sample.image.shape[:2]
    assert sum(s > 0.5 for s in scores) >= 12, f"DSC per phantom frame (seed {seed}): {scores}"


def test_bench_grader_json(models_dir, capsys):
    import argparse
    import json

    from sonograde.benchmarks import grader as bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--models", str(models_dir), "--frames", "2", "--rounds", "1", "--json",
                              "--threads", "1", "2"])
    assert bench.run(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["models"] == {"roi": "dev-roi", "grader": "dev-grader"} and report["frames"] == 2
    assert [row["threads"] for row in report["results"]] == [1, 2]
    for row in report["results"]:
        for stage in ("roi_cnn", "refine", "total"):
            assert row[f"{stage}_cpu_ms"] >= 0 and row[f"{stage}_wall_ms"] > 0


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_shipped_precisions_load_by_name(precision):
    """The calibrated models found by the file-name convention grade like the FP32 ones on a phantom frame
    (refined-mask DSC against FP32 was >= 0.984 on 30 phantom frames for the first INT8 models)."""
    import engine.grader

    shipped = engine.grader.DEFAULT_MODELS_DIR
    names = [model_path(shipped, kind, p) for kind in ("roi", "grader") for p in ("fp32", precision)]
    if not all(path.exists() for path in names):
        pytest.skip(f"{precision} models not shipped in {shipped}")
    phantom = pytest.importorskip("capture.phantom", reason="capture.phantom (PhantomScanner) not available")
    reference_grader = TwoStageGrader.from_models_dir()
    candidate_grader = TwoStageGrader.from_models_dir(precision=precision)
    # Several fresh frames, judged by the median: on about one phantom frame in 60 the area filter keeps
    # another component in one precision than in the other (DSC 0; measured in commit 8a8f879). Eight frames:
    # both precisions find a lesion in fewer than three about once in 10,000 runs.
    agreement = []
    for seed in np.random.randint(0, 2**31, size=8):
        sample = phantom.PhantomScanner(int(seed)).sample()
        reference = reference_grader.grade(sample.image)
        candidate = candidate_grader.grade(sample.image)
        assert candidate.refined_mask.shape == sample.image.shape
        if reference.lesion_found and candidate.lesion_found:
            agreement.append(dsc(candidate.refined_mask, reference.refined_mask))
            assert set(candidate.probabilities) == set(CATEGORIES)
    assert len(agreement) >= 3 and np.median(agreement) > 0.8, agreement
