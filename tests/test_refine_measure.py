"""Lesion size and orientation on drawn ellipses whose extents, diameter and angle are known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from refine.contours import mask_to_polygon
from refine.measure import (
    PIXEL_SIZE_SOURCES,
    SIZE_KEYS,
    lesion_orientation,
    lesion_size,
    mask_from_contour,
)


def _ellipse(shape: tuple[int, int], centre: tuple[float, float], a: float, b: float,
             angle_deg: float) -> np.ndarray:
    """Filled ellipse, semi-axes a (long) and b in px, long axis at angle_deg above the horizontal
    on screen (image y points down)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cx, cy = centre
    t = math.radians(angle_deg)
    dx, dy = xx - cx, yy - cy
    u = dx * math.cos(t) - dy * math.sin(t)  # along the long axis (screen-up = -y)
    v = dx * math.sin(t) + dy * math.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _extents(a: float, b: float, angle_deg: float) -> tuple[float, float]:
    t = math.radians(angle_deg)
    width = 2 * math.sqrt((a * math.cos(t)) ** 2 + (b * math.sin(t)) ** 2)
    height = 2 * math.sqrt((a * math.sin(t)) ** 2 + (b * math.cos(t)) ** 2)
    return width, height


@pytest.mark.parametrize("angle", [0.0, 15.0, 30.0, -40.0, 60.0, 90.0])
def test_size_of_a_rotated_ellipse_in_px(angle: float) -> None:
    a, b = 60.0, 25.0
    mask = _ellipse((200, 240), (120.3, 99.7), a, b, angle)
    size = lesion_size(mask)
    assert tuple(size) == SIZE_KEYS
    assert size["unit"] == "px" and size["pixel_size_mm"] is None and size["pixel_size_source"] is None
    width, height = _extents(a, b, angle)
    assert size["width"] == pytest.approx(width, abs=1.5)
    assert size["height"] == pytest.approx(height, abs=1.5)
    assert size["longest"] == pytest.approx(2 * a, abs=1.5)
    assert size["longest"] >= max(size["width"], size["height"])


def test_size_in_mm_scales_by_the_pixel_size(rng: np.random.Generator) -> None:
    a, b = rng.uniform(20, 50), rng.uniform(8, 18)
    angle = rng.uniform(-80, 80)
    mask = _ellipse((160, 180), (90.0, 80.0), a, b, angle)
    px = lesion_size(mask)
    mm = lesion_size(mask, 0.08, "manifest")
    assert mm["unit"] == "mm" and mm["pixel_size_mm"] == 0.08 and mm["pixel_size_source"] == "manifest"
    for key in ("width", "height", "longest"):
        assert mm[key] == pytest.approx(px[key] * 0.08, abs=0.01)


def test_anisotropic_pixels_from_dicom_pixel_spacing() -> None:
    # An axis-aligned rectangle 40 columns x 20 rows; rows 0.2 mm apart, columns 0.1 mm apart.
    mask = np.zeros((60, 80), dtype=bool)
    mask[10:30, 20:60] = True
    size = lesion_size(mask, (0.2, 0.1), "dicom_pixel_spacing")
    assert size["width"] == pytest.approx(4.0) and size["height"] == pytest.approx(4.0)
    assert size["longest"] == pytest.approx(math.hypot(4.0, 4.0), abs=0.01)
    assert size["pixel_size_mm"] == [0.2, 0.1]
    orient = lesion_orientation(mask, (0.2, 0.1))
    assert orient["height_width_ratio"] == pytest.approx(1.0)


def test_single_pixel_and_exact_rectangle_extents() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    mask[4, 6] = True
    size = lesion_size(mask)
    assert (size["width"], size["height"]) == (1.0, 1.0)
    assert size["longest"] == pytest.approx(math.sqrt(2), abs=0.01)
    mask[2:8, 1:9] = True  # 6 rows x 8 columns
    size = lesion_size(mask)
    assert (size["width"], size["height"], size["longest"]) == (8.0, 6.0, 10.0)


@pytest.mark.parametrize("angle", [0.0, 10.0, 25.0, -25.0, 44.0, 70.0, -70.0, 90.0])
def test_orientation_angle_and_value(angle: float) -> None:
    mask = _ellipse((220, 220), (110.0, 110.0), 70.0, 25.0, angle)
    orient = lesion_orientation(mask)
    measured = orient["angle_deg"]
    if abs(angle) == 90.0:
        assert abs(measured) == pytest.approx(90.0, abs=1.0)
    else:
        assert measured == pytest.approx(angle, abs=1.0)
    width, height = _extents(70.0, 25.0, angle)
    assert orient["height_width_ratio"] == pytest.approx(height / width, rel=0.03)
    assert orient["axis_ratio"] == pytest.approx(25 / 70, abs=0.02)
    assert orient["value"] == ("not parallel" if height > width else "parallel")
    assert orient["method"] == "measured"


def test_taller_than_wide_is_not_parallel() -> None:
    tall = _ellipse((120, 120), (60.0, 60.0), 40.0, 20.0, 90.0)
    wide = _ellipse((120, 120), (60.0, 60.0), 40.0, 20.0, 0.0)
    assert lesion_orientation(tall)["value"] == "not parallel"
    assert lesion_orientation(wide)["value"] == "parallel"


def test_contour_round_trip_measures_the_same() -> None:
    mask = _ellipse((150, 150), (75.0, 70.0), 50.0, 20.0, 20.0)
    again = mask_from_contour(mask_to_polygon(mask), mask.shape)
    assert lesion_size(again) == lesion_size(mask)


def test_empty_mask_and_bad_pixel_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="no lesion"):
        lesion_size(np.zeros((10, 10), dtype=bool))
    with pytest.raises(ValueError, match="no lesion"):
        lesion_orientation(np.zeros((10, 10), dtype=bool))
    mask = np.ones((5, 5), dtype=bool)
    for bad in (0.0, -0.1, float("nan"), "x", (0.1, 0.1, 0.1), True):
        with pytest.raises(ValueError, match="pixel_size_mm"):
            lesion_size(mask, bad, "cli")
    with pytest.raises(ValueError, match="pixel_size_source"):
        lesion_size(mask, 0.1)
    with pytest.raises(ValueError, match="pixel_size_source"):
        lesion_size(mask, 0.1, "guess")
    with pytest.raises(ValueError, match="dtype"):
        lesion_size(np.ones((5, 5), dtype=np.float32))
    assert "manifest" in PIXEL_SIZE_SOURCES and "cli" in PIXEL_SIZE_SOURCES
