"""Segmentation metrics against independent reference computations on fresh random masks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_erosion, gaussian_filter
from scipy.spatial.distance import cdist, directed_hausdorff

from refine.metrics import (
    SegmentationMetrics,
    average_boundary_distance,
    boundary,
    dice,
    hausdorff,
    segmentation_metrics,
)


def _random_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Blobby random mask (smoothed noise above a random level), never empty."""
    field = gaussian_filter(rng.normal(size=shape), sigma=rng.uniform(2.0, 5.0))
    mask = field > np.quantile(field, rng.uniform(0.4, 0.85))
    return mask


def _outline_points(mask: np.ndarray) -> np.ndarray:
    """Reference outline: mask minus its 4-connected erosion (outside the image counts as background)."""
    inner = binary_erosion(mask, structure=np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]]), border_value=0)
    return np.argwhere(mask & ~inner).astype(float)


def _pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    shape = (int(rng.integers(30, 70)), int(rng.integers(30, 70)))
    return _random_mask(rng, shape), _random_mask(rng, shape)


@pytest.mark.parametrize("case", range(4))
def test_against_reference_in_pixels_and_mm(rng: np.random.Generator, case: int) -> None:
    pred, truth = _pair(rng)
    pp, tp = _outline_points(pred), _outline_points(truth)
    np.testing.assert_array_equal(np.argwhere(boundary(pred)), pp.astype(int))

    hd_ref = max(directed_hausdorff(pp, tp)[0], directed_hausdorff(tp, pp)[0])
    d = cdist(pp, tp)
    d_pt, d_tp = d.min(axis=1), d.min(axis=0)
    hd95_ref = max(np.percentile(d_pt, 95), np.percentile(d_tp, 95))
    avg_ref = (d_pt.sum() + d_tp.sum()) / (len(d_pt) + len(d_tp))
    dsc_ref = 2 * np.logical_and(pred, truth).sum() / (pred.sum() + truth.sum())

    assert dice(pred, truth) == pytest.approx(dsc_ref, abs=1e-12)
    assert hausdorff(pred, truth) == pytest.approx(hd_ref, abs=1e-9)
    assert hausdorff(pred, truth, percentile=95) == pytest.approx(hd95_ref, abs=1e-9)
    assert average_boundary_distance(pred, truth) == pytest.approx(avg_ref, abs=1e-9)

    size = float(rng.uniform(0.05, 0.3))
    m = segmentation_metrics(pred, truth, pixel_size_mm=size)
    assert m.dsc == pytest.approx(dsc_ref, abs=1e-12)
    assert (m.hd_max, m.hd95, m.avg_dist) == pytest.approx((hd_ref, hd95_ref, avg_ref), abs=1e-9)
    assert (m.hd_max_mm, m.hd95_mm, m.avg_dist_mm) == pytest.approx(
        (hd_ref * size, hd95_ref * size, avg_ref * size), abs=1e-9
    )
    assert hausdorff(pred, truth, pixel_size_mm=size) == pytest.approx(hd_ref * size, abs=1e-9)
    assert average_boundary_distance(pred, truth, pixel_size_mm=size) == pytest.approx(avg_ref * size)


def test_symmetric_and_zero_for_identical_masks(rng: np.random.Generator) -> None:
    pred, truth = _pair(rng)
    assert hausdorff(pred, truth) == pytest.approx(hausdorff(truth, pred))
    assert average_boundary_distance(pred, truth) == pytest.approx(average_boundary_distance(truth, pred))
    m = segmentation_metrics(pred, pred)
    assert (m.dsc, m.hd_max, m.hd95, m.avg_dist) == (1.0, 0.0, 0.0, 0.0)
    assert m.hd_max_mm is None and m.hd95_mm is None and m.avg_dist_mm is None


def test_known_shift() -> None:
    a = np.zeros((40, 40), dtype=bool)
    a[10:20, 10:20] = True
    b = np.roll(a, 3, axis=1)
    assert hausdorff(a, b) == pytest.approx(3.0)
    assert dice(a, b) == pytest.approx(2 * 70 / 200)


def test_empty_mask_conventions(rng: np.random.Generator) -> None:
    empty = np.zeros((20, 30), dtype=bool)
    some = _random_mask(rng, (20, 30))
    both = segmentation_metrics(empty, empty, pixel_size_mm=0.1)
    assert both == SegmentationMetrics(1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    for pred, truth in ((empty, some), (some, empty)):
        m = segmentation_metrics(pred, truth, pixel_size_mm=0.1)
        assert m.dsc == 0.0
        assert np.isinf([m.hd_max, m.hd95, m.avg_dist, m.hd_max_mm, m.hd95_mm, m.avg_dist_mm]).all()
        assert dice(pred, truth) == 0.0
        assert hausdorff(pred, truth) == float("inf")
        assert hausdorff(pred, truth, percentile=95) == float("inf")
        assert average_boundary_distance(pred, truth) == float("inf")
    assert dice(empty, empty) == 1.0 and hausdorff(empty, empty) == 0.0


def test_integer_masks_are_accepted(rng: np.random.Generator) -> None:
    pred, truth = _pair(rng)
    assert dice(pred.astype(np.uint8) * 255, truth.astype(np.int32)) == pytest.approx(dice(pred, truth))


def test_to_dict_has_all_fields(rng: np.random.Generator) -> None:
    pred, truth = _pair(rng)
    d = segmentation_metrics(pred, truth, pixel_size_mm=0.2).to_dict()
    assert set(d) == {"dsc", "hd_max", "hd95", "avg_dist", "hd_max_mm", "hd95_mm", "avg_dist_mm"}


@pytest.mark.parametrize(
    ("pred", "truth", "kwargs", "message"),
    [
        (np.zeros((5, 5), bool), np.zeros((5, 6), bool), {}, "shape"),
        (np.zeros((5, 5)), np.zeros((5, 5), bool), {}, "dtype"),
        (np.zeros((5, 5, 2), bool), np.zeros((5, 5, 2), bool), {}, "2-D"),
        (np.zeros((0, 5), bool), np.zeros((0, 5), bool), {}, "empty"),
        (np.ones((5, 5), bool), np.ones((5, 5), bool), {"pixel_size_mm": -1.0}, "pixel_size_mm"),
        (np.ones((5, 5), bool), np.ones((5, 5), bool), {"pixel_size_mm": float("nan")}, "pixel_size_mm"),
    ],
)
def test_bad_input_raises(pred: np.ndarray, truth: np.ndarray, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        segmentation_metrics(pred, truth, **kwargs)


def test_bad_percentile_raises() -> None:
    m = np.ones((5, 5), bool)
    with pytest.raises(ValueError, match="percentile"):
        hausdorff(m, m, percentile=101)
