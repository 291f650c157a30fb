"""Area filter: the paper's rules (40 % of the largest, nearest the centre), edge cases, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from refine.area_filter import area_filter


def _canvas(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """Background probabilities below 0.5."""
    return rng.uniform(0.0, 0.45, (size, size))


def test_component_below_40_percent_is_dropped_even_at_the_centre(rng: np.random.Generator) -> None:
    prob = _canvas(rng)
    h, w = int(rng.integers(10, 15)), int(rng.integers(10, 15))
    big = h * w
    prob[2 : 2 + h, 2 : 2 + w] = rng.uniform(0.55, 1.0, (h, w))  # big one in a corner
    small = int(np.ceil(0.4 * big)) - 1  # just under 40 %
    x0 = 64 - small // 2
    prob[64, x0 : x0 + small] = 0.9  # a 1-px line through the centre
    out = area_filter(prob)
    assert out.dtype == bool and out.shape == prob.shape
    assert out.sum() == big and out[2, 2] and not out[64, 64]


def test_component_at_40_percent_or_more_survives_and_wins_by_position(rng: np.random.Generator) -> None:
    prob = _canvas(rng)
    prob[2:12, 2:12] = 0.9  # 100 px in a corner
    length = int(rng.integers(40, 60))  # >= 40 % of 100
    x0 = 64 - length // 2
    prob[64, x0 : x0 + length] = 0.9
    out = area_filter(prob)
    assert out.sum() == length and out[64, 64] and not out[2, 2]


def test_min_fraction_parameter(rng: np.random.Generator) -> None:
    prob = _canvas(rng)
    prob[2:12, 2:12] = 0.9  # 100 px, corner
    prob[64, 40:70] = 0.9  # 30 px, centre
    assert area_filter(prob, min_fraction=0.4)[2, 2]
    assert area_filter(prob, min_fraction=0.3)[64, 64]
    assert area_filter(prob, min_fraction=0.0)[64, 64]


def test_nearest_to_centre_among_equal_components(rng: np.random.Generator) -> None:
    size = 128
    prob = _canvas(rng, size)
    # 3x3 blobs on a grid far enough apart not to touch, random subset
    cells = [(y, x) for y in range(8, size - 8, 16) for x in range(8, size - 8, 16)]
    picked = [cells[i] for i in rng.choice(len(cells), 5, replace=False)]
    for y, x in picked:
        prob[y - 1 : y + 2, x - 1 : x + 2] = rng.uniform(0.6, 1.0)
    centre = (size - 1) / 2
    # ties (mirror positions) go to the first component in raster order
    ny, nx = min(picked, key=lambda p: (np.hypot(p[0] - centre, p[1] - centre), p[0], p[1]))
    out = area_filter(prob)
    assert out.sum() == 9 and out[ny, nx]


def test_centroid_not_bounding_box_decides(rng: np.random.Generator) -> None:
    prob = np.zeros((101, 101))
    # an L whose bounding box is centred on the image but whose centroid is far off
    prob[10:91, 10:14] = 1.0
    prob[87:91, 10:91] = 1.0
    # a compact blob nearer the centre than the L's centroid (~27 px away), farther than its box centre
    prob[55:60, 55:60] = 1.0
    out = area_filter(prob, min_fraction=0.0)
    assert out[57, 57] and not out[50, 11]


def test_eight_connectivity_joins_diagonal_neighbours() -> None:
    prob = np.zeros((20, 20))
    prob[5:10, 5:10] = 1.0
    prob[10:15, 10:15] = 1.0  # touches the first only at a corner
    out = area_filter(prob)
    assert out.sum() == 50


def test_empty_and_full_maps(rng: np.random.Generator) -> None:
    shape = (int(rng.integers(5, 50)), int(rng.integers(5, 50)))
    assert not area_filter(np.zeros(shape)).any()
    assert not area_filter(rng.uniform(0, 0.5, shape) * 0.99).any()
    assert area_filter(np.ones(shape)).all()
    assert area_filter(rng.uniform(0.51, 1.0, shape)).all()


def test_threshold_parameter_and_strictness(rng: np.random.Generator) -> None:
    prob = _canvas(rng, 64) * 0.5
    prob[28:36, 28:36] = 0.6  # centre, weaker
    prob[2:20, 2:20] = 0.8  # corner, stronger and larger
    assert area_filter(prob, threshold=0.7)[5, 5]
    assert not area_filter(prob, threshold=0.7)[30, 30]
    assert area_filter(prob, threshold=0.5, min_fraction=0.1)[30, 30]
    # strictly greater than the threshold
    assert not area_filter(np.full((8, 8), 0.5)).any()
    assert area_filter(np.full((8, 8), 0.5), threshold=0.49).all()


def test_bool_and_uint8_masks_are_accepted(rng: np.random.Generator) -> None:
    mask = np.zeros((30, 30), dtype=bool)
    mask[10:20, 12:18] = True
    np.testing.assert_array_equal(area_filter(mask), mask)
    np.testing.assert_array_equal(area_filter(mask.astype(np.uint8) * 255), mask)


@pytest.mark.parametrize(
    ("prob", "kwargs", "message"),
    [
        (np.full((8, 8), np.nan), {}, "NaN"),
        (np.zeros((8, 8, 1)), {}, "2-D"),
        (np.zeros((0, 0)), {}, "empty"),
        (np.zeros((8, 8), dtype=complex), {}, "dtype"),
        (np.zeros((8, 8)), {"min_fraction": 1.5}, "min_fraction"),
        (np.zeros((8, 8)), {"min_fraction": -0.1}, "min_fraction"),
        (np.zeros((8, 8)), {"threshold": float("nan")}, "threshold"),
        ([[0.0]], {}, "numpy array"),
    ],
)
def test_bad_input_raises(prob: object, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        area_filter(prob, **kwargs)  # type: ignore[arg-type]
