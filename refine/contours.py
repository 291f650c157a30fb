"""Mask outlines as polygons (OpenCV ``findContours``), for drawing and for the published message."""

from __future__ import annotations

import cv2
import numpy as np

from refine._validate import as_mask


def mask_to_polygon(mask: np.ndarray) -> np.ndarray:
    """Largest external contour of a mask as an (N, 2) int32 array of (x, y) pixel coordinates.

    Uses ``cv2.findContours(RETR_EXTERNAL, CHAIN_APPROX_SIMPLE)``: straight runs are reduced to their
    end points. "Largest" is by enclosed area (``cv2.contourArea``), ties by the number of pixels of
    the component. An empty mask gives an empty (0, 2) array.
    """
    m = as_mask(mask, "mask").astype(np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.zeros((0, 2), dtype=np.int32)
    best = max(contours, key=lambda c: (cv2.contourArea(c), len(c)))
    return np.ascontiguousarray(best.reshape(-1, 2), dtype=np.int32)


def polygon_to_mask(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Filled polygon (outline included) as a bool mask of ``shape`` (H, W); empty polygon → empty mask."""
    h, w = (int(v) for v in shape)
    if h <= 0 or w <= 0:
        raise ValueError(f"shape must be positive (H, W), got {shape}")
    poly = _as_polygon(polygon)
    out = np.zeros((h, w), dtype=np.uint8)
    if len(poly):
        cv2.fillPoly(out, [np.round(poly).astype(np.int32).reshape(-1, 1, 2)], 1)
    return out.astype(bool)


def scale_polygon(
    polygon: np.ndarray, from_shape: tuple[int, int], to_shape: tuple[int, int]
) -> np.ndarray:
    """Map (x, y) pixel coordinates from an image of ``from_shape`` (H, W) onto one of ``to_shape``.

    Pixel centres map onto pixel centres (x' = (x + 0.5) * W'/W - 0.5, same for y), matching
    ``cv2.resize``'s geometry; results are rounded and clipped into the target image, int32 (N, 2).
    Typical use: a contour found on the 288x288 network input drawn on the original frame.
    """
    poly = _as_polygon(polygon)
    fh, fw = (int(v) for v in from_shape)
    th, tw = (int(v) for v in to_shape)
    if min(fh, fw, th, tw) <= 0:
        raise ValueError(f"shapes must be positive (H, W), got {from_shape} and {to_shape}")
    if not len(poly):
        return np.zeros((0, 2), dtype=np.int32)
    x = (poly[:, 0] + 0.5) * (tw / fw) - 0.5
    y = (poly[:, 1] + 0.5) * (th / fh) - 0.5
    out = np.stack([np.clip(np.round(x), 0, tw - 1), np.clip(np.round(y), 0, th - 1)], axis=1)
    return out.astype(np.int32)


def _as_polygon(polygon: object) -> np.ndarray:
    if not isinstance(polygon, np.ndarray):
        raise ValueError(f"polygon must be a numpy array, got {type(polygon).__name__}")
    if polygon.size == 0:
        return np.zeros((0, 2), dtype=np.float64)
    if polygon.ndim != 2 or polygon.shape[1] != 2:
        raise ValueError(f"polygon must have shape (N, 2) of (x, y), got {polygon.shape}")
    poly = polygon.astype(np.float64)
    if not np.isfinite(poly).all():
        raise ValueError("polygon contains NaN or infinite coordinates")
    return poly
