"""Segmentation metrics of the paper ("The accuracy of the identified tumor"): DSC, HDist, AvgDist.

Definitions used here:

* **DSC** = 2 |P ∩ T| / (|P| + |T|) over mask pixels.
* **Boundary** of a mask: its foreground pixels that have at least one 4-neighbour outside the mask
  (pixels on the image edge count as having one), i.e. the inner one-pixel outline. Distances are
  Euclidean between pixel centres, in px, or in mm when ``pixel_size_mm`` (isotropic, mm per px) is
  given.
* **Hausdorff** at percentile q: max(q-th percentile of d(P→T), q-th percentile of d(T→P)), where
  d(A→B) are the distances from each boundary pixel of A to the nearest boundary pixel of B
  (numpy's linear-interpolation percentile). q = 100 is the classical Hausdorff distance (equal to
  ``max`` of the two ``scipy.spatial.distance.directed_hausdorff``); q = 95 is HD95.
* **Average boundary distance** (average symmetric surface distance) = (sum d(P→T) + sum d(T→P)) /
  (|∂P| + |∂T|).

Empty masks: both empty → DSC 1.0 and every distance 0.0 (perfect agreement that there is no
lesion); exactly one empty → DSC 0.0 and every distance ``inf`` (no boundary to measure to), so a
miss is never averaged in silently — filter with ``np.isfinite`` and count misses separately.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.ndimage import distance_transform_edt

from refine._validate import as_finite_float, as_mask


@dataclass(frozen=True)
class SegmentationMetrics:
    """DSC and boundary distances of one prediction against its ground truth.

    Distances in px; the ``*_mm`` fields are the same in millimetres, None without a pixel size.
    """

    dsc: float
    hd_max: float
    hd95: float
    avg_dist: float
    hd_max_mm: float | None = None
    hd95_mm: float | None = None
    avg_dist_mm: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


def _pair(pred: object, truth: object) -> tuple[np.ndarray, np.ndarray]:
    p = as_mask(pred, "pred")
    t = as_mask(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred has shape {p.shape} but truth has shape {t.shape}")
    return p, t


def _pixel_size(pixel_size_mm: object) -> float | None:
    if pixel_size_mm is None:
        return None
    size = as_finite_float(pixel_size_mm, "pixel_size_mm")
    if size <= 0:
        raise ValueError(f"pixel_size_mm must be > 0, got {pixel_size_mm!r}")
    return size


def boundary(mask: np.ndarray) -> np.ndarray:
    """Inner 4-connected outline of a bool mask (pixels on the image edge are outline pixels)."""
    m = as_mask(mask, "mask")
    padded = np.pad(m, 1, constant_values=False)
    interior = (
        padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    )
    return m & ~interior


def _directed(src_boundary: np.ndarray, dst_boundary: np.ndarray) -> np.ndarray:
    """Distances (px) from every src boundary pixel to the nearest dst boundary pixel (exact EDT)."""
    dist_to_dst = distance_transform_edt(~dst_boundary)
    return dist_to_dst[src_boundary]


def _distances(p: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both directed distance sets d(P→T), d(T→P); both masks must be non-empty."""
    bp, bt = boundary(p), boundary(t)
    return _directed(bp, bt), _directed(bt, bp)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice similarity coefficient in [0, 1]; 1.0 when both masks are empty, 0.0 when only one is."""
    p, t = _pair(pred, truth)
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(p & t)) / total


def _empty_case(p: np.ndarray, t: np.ndarray) -> float | None:
    has_p, has_t = bool(p.any()), bool(t.any())
    if not has_p and not has_t:
        return 0.0
    if has_p != has_t:
        return float("inf")
    return None


def _hd(d_pt: np.ndarray, d_tp: np.ndarray, percentile: float) -> float:
    return float(max(np.percentile(d_pt, percentile), np.percentile(d_tp, percentile)))


def _asd(d_pt: np.ndarray, d_tp: np.ndarray) -> float:
    return float((d_pt.sum() + d_tp.sum()) / (d_pt.size + d_tp.size))


def _check_percentile(percentile: object) -> float:
    q = as_finite_float(percentile, "percentile", minimum=0.0)
    if q > 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile!r}")
    return q


def hausdorff(
    pred: np.ndarray, truth: np.ndarray, percentile: float = 100, pixel_size_mm: float | None = None
) -> float:
    """Symmetric Hausdorff distance between the mask outlines at a percentile (100 = max, 95 = HD95).

    In px, or mm when ``pixel_size_mm`` is given. 0.0 when both masks are empty, inf when one is.
    """
    p, t = _pair(pred, truth)
    q = _check_percentile(percentile)
    scale = _pixel_size(pixel_size_mm) or 1.0
    special = _empty_case(p, t)
    if special is not None:
        return special
    d_pt, d_tp = _distances(p, t)
    return _hd(d_pt, d_tp, q) * scale


def average_boundary_distance(
    pred: np.ndarray, truth: np.ndarray, pixel_size_mm: float | None = None
) -> float:
    """Average symmetric distance between the mask outlines (px, or mm with ``pixel_size_mm``).

    0.0 when both masks are empty, inf when one is.
    """
    p, t = _pair(pred, truth)
    scale = _pixel_size(pixel_size_mm) or 1.0
    special = _empty_case(p, t)
    if special is not None:
        return special
    d_pt, d_tp = _distances(p, t)
    return _asd(d_pt, d_tp) * scale


def segmentation_metrics(
    pred: np.ndarray, truth: np.ndarray, pixel_size_mm: float | None = None
) -> SegmentationMetrics:
    """All metrics at once (one distance transform per outline); ``*_mm`` set when a pixel size is given."""
    p, t = _pair(pred, truth)
    size = _pixel_size(pixel_size_mm)
    dsc = dice(p, t)
    special = _empty_case(p, t)
    if special is not None:
        hd_max = hd95 = avg = special
    else:
        d_pt, d_tp = _distances(p, t)
        hd_max = _hd(d_pt, d_tp, 100.0)
        hd95 = _hd(d_pt, d_tp, 95.0)
        avg = _asd(d_pt, d_tp)
    if size is None:
        return SegmentationMetrics(dsc=dsc, hd_max=hd_max, hd95=hd95, avg_dist=avg)
    return SegmentationMetrics(
        dsc=dsc,
        hd_max=hd_max,
        hd95=hd95,
        avg_dist=avg,
        hd_max_mm=hd_max * size,
        hd95_mm=hd95 * size,
        avg_dist_mm=avg * size,
    )
