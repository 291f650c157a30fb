"""HD95 and the average symmetric surface distance of the evaluations, in px and mm, on cases computed by
hand: a 21 x 21 square against the same square eroded by 2 px on every side."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.training.evaluate import _mask_scores, roi_summary
from sonograde.evaluation.runner import segmentation_scores

# Outer outline: 80 pixels; 68 are 2 px from the inner outline, the 8 next to a corner sqrt(5), the 4
# corners sqrt(8). Inner outline: 64 pixels, all 2 px from the outer one.
ASD_PX = (64 * 2 + 68 * 2 + 8 * math.sqrt(5) + 4 * math.sqrt(8)) / (64 + 80)
# 95th percentile (linear) of the 80 outer distances sorted: index 0.95 * 79 = 75.05, between the last
# sqrt(5) (index 75) and the first sqrt(8) (index 76)
HD95_PX = math.sqrt(5) + 0.05 * (math.sqrt(8) - math.sqrt(5))
DSC = 2 * 17 * 17 / (21 * 21 + 17 * 17)


def _squares() -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((40, 50), bool)
    truth[5:26, 10:31] = True
    pred = np.zeros_like(truth)
    pred[7:24, 12:29] = True
    return pred, truth


def test_model_evaluation_distances_in_px_and_mm() -> None:
    pred, truth = _squares()
    row = _mask_scores(pred, truth, 0.1, "native")
    assert row["dice_full_native"] == pytest.approx(DSC)
    assert row["hd95_full_native_px"] == pytest.approx(HD95_PX)
    assert row["asd_full_native_px"] == pytest.approx(ASD_PX)
    assert row["hd95_full_native_mm"] == pytest.approx(0.1 * HD95_PX)
    assert row["asd_full_native_mm"] == pytest.approx(0.1 * ASD_PX)
    no_size = _mask_scores(pred, truth, None, "native")
    assert "hd95_full_native_mm" not in no_size and "asd_full_native_mm" not in no_size


def test_summary_averages_mm_only_over_images_with_a_pixel_size() -> None:
    pred, truth = _squares()
    with_size = {"id": "a", **_mask_scores(pred, truth, 0.2, "raw")}
    without = {"id": "b", **_mask_scores(pred, truth, None, "raw")}
    missed = {"id": "c", **_mask_scores(np.zeros_like(truth), truth, 0.2, "raw")}
    summary = roi_summary([with_size, without, missed])
    assert summary["hd95_full_raw_mm"]["n"] == 2 and summary["hd95_full_raw_mm"]["missed"] == 1
    assert summary["hd95_full_raw_mm"]["mean"] == pytest.approx(0.2 * HD95_PX)
    assert summary["hd95_full_raw_px"]["mean"] == pytest.approx(HD95_PX)
    assert summary["dice_full_raw"]["mean"] == pytest.approx(2 * DSC / 3)


def test_pipeline_evaluation_distances_in_px_and_mm() -> None:
    pred, truth = _squares()
    scores = segmentation_scores(pred, truth, 0.25)
    assert scores.dsc == pytest.approx(DSC)
    assert scores.hd95 == pytest.approx(HD95_PX) and scores.hd95_mm == pytest.approx(0.25 * HD95_PX)
    assert scores.avg_dist == pytest.approx(ASD_PX) and scores.avg_dist_mm == pytest.approx(0.25 * ASD_PX)
    assert segmentation_scores(pred, truth, None).hd95_mm is None
