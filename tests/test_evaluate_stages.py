"""The model-card evaluation (engine.training.evaluate) runs stages 1-2 exactly as the product's grader:
same parameters (``engine.grader.GraderConfig``), same masks, on the shipped ROI-CNN."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from capture.phantom import PhantomScanner
from engine.grader import GraderConfig, TwoStageGrader
from engine.training import evaluate


def test_evaluation_uses_the_pipeline_configuration() -> None:
    assert GraderConfig() == evaluate.PIPELINE_CONFIG


def test_locate_and_refine_gives_the_two_stage_graders_masks() -> None:
    grader = TwoStageGrader.from_models_dir(threads=1)
    session = ort.InferenceSession(str(grader.roi.path), providers=["CPUExecutionProvider"])
    scanner = PhantomScanner(seed=11)
    found = 0
    for index in range(4):
        gray = scanner.sample_at(index).image
        small, prob, raw, lesion = evaluate.locate_and_refine(session, gray)
        roi = grader.locate(gray)
        stage2 = grader.refine(gray, roi)
        assert np.array_equal(small, roi.image_288)
        np.testing.assert_allclose(prob, roi.prob, atol=1e-5)
        assert np.array_equal(raw, roi.raw_mask)
        if roi.lesion_found:
            found += 1
            assert np.array_equal(lesion.mask_grid, stage2.refined_mask_288)
            assert np.array_equal(lesion.mask, stage2.refined_mask)
            assert np.array_equal(evaluate.pipeline_mask(session, gray), stage2.refined_mask)
    assert found >= 2  # the comparison exercised refinement, not only empty masks
