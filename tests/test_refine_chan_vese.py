"""Chan–Vese: equal to scikit-image on fresh random inputs, the two entry points, and bad inputs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt
from skimage.segmentation import chan_vese as sk_chan_vese

from refine.chan_vese import (
    ChanVeseResult,
    chan_vese,
    checkerboard_level_set,
    crop_box,
    mask_to_level_set,
    refine_roi,
    segment_image,
    warm_up,
)
from refine.metrics import dice


def _skimage(image, phi0, *, mu1=1.0, mu2=1.0, alpha=1.0, iterations=50, tol=0.0):
    seg, phi, energies = sk_chan_vese(
        image, mu=alpha, lambda1=mu1, lambda2=mu2, tol=tol, max_num_iter=iterations, dt=0.5,
        init_level_set=phi0, extended_output=True,
    )
    return seg, phi, len(energies)


def _random_image(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    if rng.random() < 0.3:
        return rng.integers(0, 256, shape).astype(np.uint8)
    return rng.random(shape) * rng.uniform(0.01, 500.0) + rng.uniform(-100, 100)


def _blob(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    ry, rx = rng.uniform(0.1, 0.3) * h + 1, rng.uniform(0.1, 0.3) * w + 1
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def test_warm_up_reports_seconds() -> None:
    seconds = warm_up()
    assert isinstance(seconds, float) and seconds >= 0.0


@pytest.mark.parametrize("case", range(6))
def test_equals_skimage_on_random_inputs(rng: np.random.Generator, case: int) -> None:
    shape = (int(rng.integers(1, 70)), int(rng.integers(1, 70))) if case else (1, int(rng.integers(1, 9)))
    image = _random_image(rng, shape)
    phi0 = rng.normal(size=shape) * rng.uniform(0.1, 5.0)
    mu1, mu2, alpha = rng.uniform(0.1, 2.0, 3)
    iterations = int(rng.integers(1, 80))
    ours = chan_vese(image, phi0, mu1=mu1, mu2=mu2, alpha=alpha, max_iterations=iterations, tol=0.0)
    seg, phi, n = _skimage(image, phi0, mu1=mu1, mu2=mu2, alpha=alpha, iterations=iterations)
    assert ours.mask.dtype == bool and ours.mask.shape == shape
    np.testing.assert_array_equal(ours.mask, seg)
    np.testing.assert_allclose(ours.level_set, phi, rtol=0, atol=1e-12)
    # tol = 0 still stops early if phi stops changing exactly (happens on tiny images), as in skimage
    assert ours.iterations == n <= iterations
    assert ours.converged == (ours.final_change == 0.0)
    assert ours.converged or n == iterations


def test_same_stopping_point_as_skimage_with_tolerance(rng: np.random.Generator) -> None:
    shape = (int(rng.integers(20, 60)), int(rng.integers(20, 60)))
    image = rng.random(shape)
    image[_blob(rng, shape)] += 1.0
    phi0 = rng.normal(size=shape)
    ours = chan_vese(image, phi0, max_iterations=400, tol=1e-3)
    seg, _, n = _skimage(image, phi0, iterations=400, tol=1e-3)
    np.testing.assert_array_equal(ours.mask, seg)
    assert ours.iterations == n
    assert ours.converged == (n < 400)
    assert ours.converged is (ours.final_change <= 1e-3)


def test_segment_image_is_skimage_checkerboard(rng: np.random.Generator) -> None:
    shape = (int(rng.integers(10, 60)), int(rng.integers(10, 60)))
    image = _random_image(rng, shape)
    ours = segment_image(image, max_iterations=40, tol=0.0)
    seg = sk_chan_vese(image, mu=1.0, tol=0.0, max_num_iter=40, init_level_set="checkerboard")
    np.testing.assert_array_equal(ours.mask, seg)
    assert ours.iterations == 40 and ours.box == (0, shape[0], 0, shape[1])


def test_refine_roi_is_skimage_on_the_crop(rng: np.random.Generator) -> None:
    shape = (int(rng.integers(40, 90)), int(rng.integers(40, 90)))
    image = _random_image(rng, shape)
    roi = _blob(rng, shape)
    margin = int(rng.integers(0, 20))
    ours = refine_roi(image, roi, margin=margin, max_iterations=30, tol=0.0)
    ys, xs = np.nonzero(roi)
    y0, y1 = max(0, ys.min() - margin), min(shape[0], ys.max() + 1 + margin)
    x0, x1 = max(0, xs.min() - margin), min(shape[1], xs.max() + 1 + margin)
    assert ours.box == (y0, y1, x0, x1)
    seg, _, _ = _skimage(image[y0:y1, x0:x1], mask_to_level_set(roi[y0:y1, x0:x1], 8.0), iterations=30)
    np.testing.assert_array_equal(ours.mask[y0:y1, x0:x1], seg)
    outside = np.ones(shape, dtype=bool)
    outside[y0:y1, x0:x1] = False
    assert not ours.mask[outside].any()
    assert ours.mask.shape == shape and ours.iterations == 30


@pytest.mark.parametrize("rough_kind", ["grown", "shifted"])
def test_refine_roi_moves_a_rough_outline_onto_the_lesion(rng: np.random.Generator, rough_kind: str) -> None:
    shape = (120, 120)
    yy, xx = np.mgrid[0:120, 0:120]
    truth = ((yy - 60) / 22.0) ** 2 + ((xx - 58) / 30.0) ** 2 <= 1.0
    # dark lesion in correlated speckle, 8-bit like a scanner frame
    speckle = cv2.GaussianBlur(np.where(truth, 0.3, 1.0) * rng.rayleigh(1.0, shape), (0, 0), 1.5)
    image = np.clip(speckle / speckle.max() * 255, 0, 255).astype(np.uint8)
    if rough_kind == "grown":  # a CNN outline 5 px too large
        rough = distance_transform_edt(~truth) <= 5
    else:  # or 4-5 px off
        rough = np.roll(truth, (4, -5), axis=(0, 1))
    result = refine_roi(image, rough, margin=16)
    assert dice(result.mask, truth) > dice(rough, truth) + 0.03
    assert result.iterations == 50


def test_converges_on_a_clean_image() -> None:
    image = np.zeros((40, 40))
    image[10:30, 12:28] = 1.0
    result = refine_roi(image, image > 0, margin=5, max_iterations=200, tol=1e-3)
    assert result.converged and result.iterations < 200
    np.testing.assert_array_equal(result.mask, image > 0)


def test_empty_roi_gives_empty_result(rng: np.random.Generator) -> None:
    image = rng.random((30, 40))
    result = refine_roi(image, np.zeros((30, 40), dtype=bool))
    assert isinstance(result, ChanVeseResult)
    assert result.mask.shape == (30, 40) and not result.mask.any()
    assert result.iterations == 0 and not result.converged and result.box is None


def test_level_set_helpers(rng: np.random.Generator) -> None:
    mask = _blob(rng, (50, 60))
    phi = mask_to_level_set(mask, scale=1.0)
    np.testing.assert_array_equal(phi > 0, mask)
    assert np.all(np.abs(phi) >= 1.0)
    np.testing.assert_allclose(mask_to_level_set(mask), phi / 8.0)
    assert np.all(mask_to_level_set(np.ones((4, 5), dtype=bool)) > 0)
    board = checkerboard_level_set((12, 17))
    assert board.shape == (12, 17) and board.dtype == np.float64
    assert crop_box(np.zeros((5, 5), dtype=bool), 3) is None
    edge = np.zeros((10, 10), dtype=bool)
    edge[0, 9] = True
    assert crop_box(edge, 4) == (0, 5, 5, 10)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.full((8, 8), np.nan), "NaN"),
        (np.zeros((8, 8, 3)), "2-D"),
        (np.zeros((0, 8)), "empty"),
        (np.zeros((8, 8), dtype=bool), "dtype"),
        (np.zeros((8, 8), dtype=complex), "dtype"),
        ([[1.0, 2.0], [3.0, 4.0]], "numpy array"),
    ],
)
def test_bad_images_raise(image: object, message: str) -> None:
    roi = np.ones((8, 8), dtype=bool)
    with pytest.raises(ValueError, match=message):
        refine_roi(image, roi)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        segment_image(image)  # type: ignore[arg-type]


def test_bad_masks_and_parameters_raise(rng: np.random.Generator) -> None:
    image = rng.random((16, 16))
    roi = np.zeros((16, 16), dtype=bool)
    roi[4:9, 4:9] = True
    with pytest.raises(ValueError, match="shape"):
        refine_roi(image, roi[:10])
    with pytest.raises(ValueError, match="dtype"):
        refine_roi(image, roi.astype(np.float32))
    with pytest.raises(ValueError, match="margin"):
        refine_roi(image, roi, margin=-1)
    with pytest.raises(ValueError, match="max_iterations"):
        refine_roi(image, roi, max_iterations=-5)
    with pytest.raises(ValueError, match="mu1"):
        refine_roi(image, roi, mu1=float("nan"))
    with pytest.raises(ValueError, match="tol"):
        segment_image(image, tol=-1.0)
    with pytest.raises(ValueError, match="init_level_set"):
        chan_vese(image, np.zeros((15, 16)))
    with pytest.raises(ValueError, match="init_level_set"):
        chan_vese(image, np.full((16, 16), np.inf))
