"""Area filtering of the ROI-CNN probability map (paper, "The refinement", step 1).

Threshold the map, label 8-connected components, drop the components smaller than ``min_fraction``
(40 %) of the largest, and keep the one whose centroid is nearest the image centre.
"""

from __future__ import annotations

import cv2
import numpy as np

from refine._validate import as_finite_float


def _as_probability_map(prob: object) -> np.ndarray:
    if not isinstance(prob, np.ndarray):
        raise ValueError(f"prob must be a numpy array, got {type(prob).__name__}")
    if prob.ndim != 2:
        raise ValueError(f"prob must be a 2-D (H, W) probability map, got shape {prob.shape}")
    if prob.size == 0:
        raise ValueError(f"prob is empty (shape {prob.shape})")
    kind = prob.dtype
    if not (kind == np.bool_ or np.issubdtype(kind, np.integer) or np.issubdtype(kind, np.floating)):
        raise ValueError(f"prob has dtype {kind}; expected float probabilities (or a bool/integer mask)")
    if np.issubdtype(prob.dtype, np.floating) and not np.isfinite(prob).all():
        raise ValueError("prob contains NaN or infinite values")
    return prob


def area_filter(prob: np.ndarray, threshold: float = 0.5, min_fraction: float = 0.4) -> np.ndarray:
    """Keep the one lesion candidate the paper keeps; returns a bool (H, W) mask.

    prob: (H, W) probabilities in [0, 1] (any float dtype; bool/integer masks are accepted as 0/1).
    threshold: a pixel is foreground when ``prob > threshold`` (default 0.5).
    min_fraction: components whose pixel count is below ``min_fraction`` x the largest component's are
        dropped (default 0.4, the paper's 40 %); 0 keeps all, 1 keeps only the largest (and ties).
    Components are 8-connected. Among the survivors the one whose centroid (mean pixel position) is
    nearest the image centre ((W-1)/2, (H-1)/2) wins; ties go to the larger component, then to the
    first in OpenCV's label order (raster order of each component's first pixel).
    The mask is empty (all False) when no pixel exceeds the threshold.
    """
    prob = _as_probability_map(prob)
    threshold = as_finite_float(threshold, "threshold")
    min_fraction = as_finite_float(min_fraction, "min_fraction", minimum=0.0)
    if min_fraction > 1.0:
        raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}")
    fg = (prob > threshold).astype(np.uint8)
    h, w = fg.shape
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(fg, connectivity=8, ltype=cv2.CV_32S)
    if n <= 1:  # label 0 is the background
        return np.zeros((h, w), dtype=bool)
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.int64)
    keep = areas >= min_fraction * areas.max()
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    dist2 = (centroids[1:, 0] - cx) ** 2 + (centroids[1:, 1] - cy) ** 2
    candidates = np.flatnonzero(keep)
    # nearest first, then larger area, then lower label
    order = np.lexsort((candidates, -areas[candidates], dist2[candidates]))
    chosen = int(candidates[order[0]]) + 1
    return labels == chosen
