"""Contours: polygon of the largest component, round trip through fillPoly, scaling between sizes."""

from __future__ import annotations

import numpy as np
import pytest

from refine.contours import mask_to_polygon, polygon_to_mask, scale_polygon


def _ellipse(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    ry, rx = rng.uniform(0.1, 0.3) * h + 2, rng.uniform(0.1, 0.3) * w + 2
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def test_round_trip_reproduces_a_hole_free_mask(rng: np.random.Generator) -> None:
    shape = (int(rng.integers(40, 120)), int(rng.integers(40, 120)))
    mask = _ellipse(rng, shape)
    poly = mask_to_polygon(mask)
    assert poly.dtype == np.int32 and poly.ndim == 2 and poly.shape[1] == 2 and len(poly) >= 4
    xs, ys = poly[:, 0], poly[:, 1]
    assert mask[ys, xs].all()  # vertices are (x, y) pixels on the mask
    np.testing.assert_array_equal(polygon_to_mask(poly, shape), mask)


def test_largest_component_is_returned() -> None:
    mask = np.zeros((50, 50), dtype=bool)
    mask[5:10, 5:10] = True
    mask[20:40, 25:45] = True
    poly = mask_to_polygon(mask)
    assert poly[:, 0].min() == 25 and poly[:, 0].max() == 44
    assert poly[:, 1].min() == 20 and poly[:, 1].max() == 39


def test_empty_mask_gives_empty_polygon() -> None:
    poly = mask_to_polygon(np.zeros((10, 12), dtype=bool))
    assert poly.shape == (0, 2) and poly.dtype == np.int32
    assert not polygon_to_mask(poly, (10, 12)).any()
    assert scale_polygon(poly, (10, 12), (20, 24)).shape == (0, 2)


def test_scale_polygon(rng: np.random.Generator) -> None:
    poly = np.stack([rng.integers(0, 288, 30), rng.integers(0, 288, 30)], axis=1).astype(np.int32)
    np.testing.assert_array_equal(scale_polygon(poly, (288, 288), (288, 288)), poly)
    up = scale_polygon(poly, (288, 288), (576, 864))  # y x2, x x3
    np.testing.assert_array_equal(up[:, 0], np.round((poly[:, 0] + 0.5) * 3 - 0.5).astype(np.int32))
    np.testing.assert_array_equal(up[:, 1], np.round((poly[:, 1] + 0.5) * 2 - 0.5).astype(np.int32))
    back = scale_polygon(up, (576, 864), (288, 288))
    np.testing.assert_array_equal(back, poly)
    corner = scale_polygon(np.array([[0, 0], [287, 287]]), (288, 288), (100, 50))
    assert corner.min() >= 0 and corner[1, 0] <= 49 and corner[1, 1] <= 99


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="dtype"):
        mask_to_polygon(np.zeros((5, 5)))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        scale_polygon(np.zeros((4, 3)), (5, 5), (10, 10))
    with pytest.raises(ValueError, match="NaN"):
        polygon_to_mask(np.array([[np.nan, 1.0]]), (5, 5))
    with pytest.raises(ValueError, match="positive"):
        polygon_to_mask(np.zeros((0, 2)), (0, 5))
