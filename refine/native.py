"""Refinement at the frame's own resolution, on a bounded crop around the lesion.

The ROI-CNN sees the frame resized to a small square grid (288 x 288). Refining on that grid and
scaling the mask up nearest-neighbour gives an outline made of grid-sized stairs: on a 750-px-wide
frame each grid pixel is 2.6 frame pixels wide. Here the refinement works on the frame itself:

1. **Crop.** The area-filtered ROI's bounding box, mapped to frame pixels, grown on every side by
   ``margin_fraction`` of its larger side (at least ``min_margin`` frame px), clipped to the frame.
2. **Bound the cost.** If the crop's longest side exceeds ``max_side`` px it is resized (``INTER_AREA``)
   so that it is exactly ``max_side``: the work per frame never exceeds ``max_side``² pixels whatever
   the frame or lesion size.
3. **Probability at the crop's pixels.** The ROI-CNN's probability map is sampled bilinearly at the
   centre of every crop pixel (``cv2.remap``), so its outline level is a smooth curve, not stairs. Only the
   parts of it connected to the area filter's chosen component are kept.
4. **Refine** with one of :data:`NATIVE_METHODS`:

   ``threshold``
       the upsampled probability > ``threshold``: the ROI-CNN's own outline, without the stairs.
   ``chan_vese``
       Chan–Vese (``refine.chan_vese``, same energy and scheme as the paper's step) on the crop,
       started from the signed distance to that outline (divided by ``level_set_scale`` crop px).
   ``band``
       Chan–Vese as above, but only allowed to move the outline where the ROI-CNN is unsure:
       pixels with probability >= ``band[1]`` stay inside, pixels with probability <= ``band[0]``
       stay outside, Chan–Vese decides in between.

5. **Back to the frame.** Holes are filled on the work grid; a downscaled crop's mask is resized to the
   crop's frame size (bilinear on the 0/1 mask, then > 0.5, so the outline stays smooth) and the one
   component overlapping the ROI most is kept; it is placed in a frame-sized bool mask.

If a method empties the mask, the ROI mapped to the frame (nearest-neighbour) is returned and
``fell_back`` is set. Nothing here imports ``engine`` or ``sonograde``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from refine import chan_vese as cv_module
from refine._validate import as_count, as_finite_float, as_image, as_mask

#: The native refinement methods (see the module docstring).
NATIVE_METHODS = ("threshold", "chan_vese", "band")
#: Longest side of the crop that is refined, in pixels (larger crops are resized down to it).
DEFAULT_MAX_SIDE = 256
#: Margin around the ROI's box, as a fraction of the box's larger side.
DEFAULT_MARGIN_FRACTION = 0.25
#: Smallest margin, in frame pixels.
DEFAULT_MIN_MARGIN = 8
#: Probability band in which the ``band`` method lets Chan–Vese decide.
DEFAULT_BAND = (0.2, 0.8)


@dataclass(frozen=True)
class NativeRefineResult:
    """Outcome of :func:`refine_native`.

    mask : bool (H, W) at the frame's size; the refined lesion (one component), or empty.
    box : (y0, y1, x0, x1) half-open frame-pixel bounds of the crop, None when the ROI was empty.
    work_shape : (h, w) of the grid actually refined (the crop, resized down if it was larger than
        ``max_side``), None when the ROI was empty.
    iterations : Chan–Vese iterations run (0 for ``threshold`` and for an empty ROI).
    converged : True when Chan–Vese stopped on its tolerance before the maximum.
    fell_back : True when the method emptied the mask and the ROI mapped to the frame was kept.
    """

    mask: np.ndarray
    box: tuple[int, int, int, int] | None
    work_shape: tuple[int, int] | None
    iterations: int
    converged: bool
    fell_back: bool


def _as_probability(prob: object) -> np.ndarray:
    if not isinstance(prob, np.ndarray) or prob.ndim != 2 or prob.size == 0:
        raise ValueError("prob must be a non-empty 2-D numpy array of probabilities (the ROI-CNN's map)")
    if not np.issubdtype(prob.dtype, np.floating):
        raise ValueError(f"prob has dtype {prob.dtype}; expected float probabilities in [0, 1]")
    out = np.ascontiguousarray(prob, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ValueError("prob contains NaN or infinite values")
    return out


def grid_mask_to_frame(mask: np.ndarray, frame_shape: tuple[int, int]) -> np.ndarray:
    """A bool mask on the ROI grid at the frame's size, nearest-neighbour (the paper's mapping)."""
    height, width = frame_shape
    if mask.shape == (height, width):
        return np.ascontiguousarray(mask, dtype=bool)
    resized = cv2.resize(np.ascontiguousarray(mask, dtype=np.uint8), (width, height),
                         interpolation=cv2.INTER_NEAREST)
    return resized.astype(bool)


def native_crop_box(
    roi_mask: np.ndarray,
    frame_shape: tuple[int, int],
    *,
    margin_fraction: float = DEFAULT_MARGIN_FRACTION,
    min_margin: int = DEFAULT_MIN_MARGIN,
) -> tuple[int, int, int, int] | None:
    """Frame-pixel crop (y0, y1, x0, x1), half-open, around the ROI given on the ROI grid.

    The grid box is mapped to the frame by the grids' scale (grid pixel edges onto frame pixel edges),
    then grown by ``max(min_margin, margin_fraction * longer side)`` frame px and clipped to the frame.
    None for an empty ROI.
    """
    roi = as_mask(roi_mask, "roi_mask")
    height, width = (int(v) for v in frame_shape)
    if height <= 0 or width <= 0:
        raise ValueError(f"frame_shape must be positive (H, W), got {frame_shape}")
    margin_fraction = as_finite_float(margin_fraction, "margin_fraction", minimum=0.0)
    min_margin = as_count(min_margin, "min_margin")
    rows = np.flatnonzero(roi.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(roi.any(axis=0))
    gh, gw = roi.shape
    sy, sx = height / gh, width / gw
    y0, y1 = rows[0] * sy, (rows[-1] + 1) * sy
    x0, x1 = cols[0] * sx, (cols[-1] + 1) * sx
    margin = max(float(min_margin), margin_fraction * max(y1 - y0, x1 - x0))
    return (
        max(0, int(np.floor(y0 - margin))),
        min(height, int(np.ceil(y1 + margin))),
        max(0, int(np.floor(x0 - margin))),
        min(width, int(np.ceil(x1 + margin))),
    )


def work_shape_for(box: tuple[int, int, int, int], max_side: int) -> tuple[int, int]:
    """(h, w) of the grid a crop is refined on: the crop itself, or resized so its longest side is
    ``max_side`` (aspect kept, each side at least 1)."""
    y0, y1, x0, x1 = box
    h, w = y1 - y0, x1 - x0
    longest = max(h, w)
    if longest <= max_side:
        return h, w
    scale = max_side / longest
    return max(1, round(h * scale)), max(1, round(w * scale))


def _sample_on_crop(grid: np.ndarray, frame_shape: tuple[int, int], box: tuple[int, int, int, int],
                    work: tuple[int, int], interpolation: int) -> np.ndarray:
    """``grid`` (covering the whole frame) sampled at the centres of the work grid's pixels."""
    height, width = frame_shape
    y0, y1, x0, x1 = box
    wh, ww = work
    gh, gw = grid.shape
    # work pixel centre -> frame coordinate -> grid coordinate (pixel centres at integers)
    fx = x0 + (np.arange(ww, dtype=np.float64) + 0.5) * ((x1 - x0) / ww) - 0.5
    fy = y0 + (np.arange(wh, dtype=np.float64) + 0.5) * ((y1 - y0) / wh) - 0.5
    gx = ((fx + 0.5) * (gw / width) - 0.5).astype(np.float32)
    gy = ((fy + 0.5) * (gh / height) - 0.5).astype(np.float32)
    map_x = np.broadcast_to(gx[None, :], (wh, ww)).copy()
    map_y = np.broadcast_to(gy[:, None], (wh, ww)).copy()
    return cv2.remap(grid, map_x, map_y, interpolation, borderMode=cv2.BORDER_REPLICATE)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every background region that does not reach the border filled (OpenCV flood fill
    from a one-pixel frame around the mask; several times faster than SciPy's iterative fill)."""
    padded = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), np.uint8)
    padded[1:-1, 1:-1] = mask
    outside = padded.copy()
    cv2.floodFill(outside, None, (0, 0), 2)  # 4-connected background reached from the frame becomes 2
    return outside[1:-1, 1:-1] != 2


def _component_touching(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The 8-connected component(s) of ``mask`` that overlap ``seed`` most (one component; ties: larger).
    Empty when no component overlaps the seed."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8,
                                                           ltype=cv2.CV_32S)
    if n <= 1:
        return np.zeros_like(mask)
    overlap = np.bincount(labels[seed], minlength=n)
    overlap[0] = 0
    if overlap.max() == 0:
        return np.zeros_like(mask)
    best = max(range(1, n), key=lambda k: (overlap[k], stats[k, cv2.CC_STAT_AREA]))
    return labels == best


def refine_native(
    frame: np.ndarray,
    prob: np.ndarray,
    roi_mask: np.ndarray,
    *,
    method: str = "threshold",
    max_side: int = DEFAULT_MAX_SIDE,
    margin_fraction: float = DEFAULT_MARGIN_FRACTION,
    min_margin: int = DEFAULT_MIN_MARGIN,
    threshold: float = 0.5,
    band: tuple[float, float] = DEFAULT_BAND,
    mu1: float = 1.0,
    mu2: float = 1.0,
    alpha: float = 1.0,
    max_iterations: int = 50,
    tol: float = cv_module.DEFAULT_TOL,
    level_set_scale: float = cv_module.DEFAULT_LEVEL_SET_SCALE,
) -> NativeRefineResult:
    """Refine the ROI at the frame's own pixels on a crop of bounded size (see the module docstring).

    Parameters
    ----------
    frame : ndarray (H, W)
        The gray frame at its own resolution (uint8 or float).
    prob : ndarray (S, S) float
        The ROI-CNN's probability map on its grid, covering the whole frame.
    roi_mask : ndarray (S, S) bool
        The area filter's chosen component on the same grid (``refine.area_filter.area_filter``).
    method : {"threshold", "chan_vese", "band"}
        How the crop is refined.
    max_side : int
        Longest side of the refined grid, px (default 256); larger crops are resized down to it.
    margin_fraction, min_margin : float, int
        Crop margin: this fraction of the ROI box's longer side, at least ``min_margin`` frame px.
    threshold : float
        Probability level of the ROI-CNN outline (0.5, as the area filter).
    band : (low, high)
        ``band`` method: Chan–Vese decides only where low < probability < high.
    mu1, mu2, alpha, max_iterations, tol, level_set_scale
        Chan–Vese parameters as in :func:`refine.chan_vese.refine_roi` (level-set scale in work px).

    Returns
    -------
    NativeRefineResult
        Its ``mask`` is (H, W) bool; empty only when ``roi_mask`` is empty.
    """
    if not isinstance(frame, np.ndarray) or frame.ndim != 2 or frame.size == 0:
        raise ValueError("frame must be a non-empty 2-D (H, W) gray numpy array; convert colour frames first")
    grid = _as_probability(prob)
    roi = as_mask(roi_mask, "roi_mask", shape=grid.shape)
    if method not in NATIVE_METHODS:
        raise ValueError(f"unknown native refinement method {method!r}; "
                         f"choose one of {', '.join(NATIVE_METHODS)}")
    max_side = as_count(max_side, "max_side")
    if max_side < 8:
        raise ValueError(f"max_side must be at least 8 px, got {max_side}")
    threshold = as_finite_float(threshold, "threshold")
    low, high = (as_finite_float(v, "band") for v in band)
    if not low <= threshold <= high:
        raise ValueError(f"band must satisfy low <= threshold <= high, got {band} with threshold {threshold}")
    frame_shape = (int(frame.shape[0]), int(frame.shape[1]))
    box = native_crop_box(roi, frame_shape, margin_fraction=margin_fraction, min_margin=min_margin)
    if box is None:
        return NativeRefineResult(mask=np.zeros(frame_shape, bool), box=None, work_shape=None,
                                  iterations=0, converged=False, fell_back=False)
    work = work_shape_for(box, max_side)
    y0, y1, x0, x1 = box
    crop = as_image(frame[y0:y1, x0:x1], "frame")  # checked and converted on the crop only
    if crop.shape != work:
        crop = cv2.resize(crop, (work[1], work[0]), interpolation=cv2.INTER_AREA)
    prob_work = _sample_on_crop(grid, frame_shape, box, work, cv2.INTER_LINEAR)
    seed = _sample_on_crop(roi.view(np.uint8), frame_shape, box, work, cv2.INTER_NEAREST).astype(bool)
    outline = _component_touching(prob_work > threshold, seed)
    if not outline.any():  # bilinear sampling lost a tiny ROI: start from the ROI itself
        outline = seed
    iterations, converged = 0, False
    refined = outline
    if method in ("chan_vese", "band") and outline.any():
        phi0 = cv_module.mask_to_level_set(outline, level_set_scale)
        result = cv_module.chan_vese(crop, phi0, mu1=mu1, mu2=mu2, alpha=alpha,
                                     max_iterations=max_iterations, tol=tol)
        iterations, converged = int(result.iterations), bool(result.converged)
        refined = np.asarray(result.mask, dtype=bool)
        if method == "band":
            refined = (refined & (prob_work > low)) | (prob_work >= high)
        refined = _component_touching(refined, outline)
    refined = _fill_holes(refined)  # one solid lesion; on the work grid, where it is cheap
    crop_frame_shape = (y1 - y0, x1 - x0)
    if refined.shape != crop_frame_shape:
        soft = cv2.resize(refined.astype(np.float32), (crop_frame_shape[1], crop_frame_shape[0]),
                          interpolation=cv2.INTER_LINEAR)
        # the smooth 0.5 level of the upscaled mask; a thin neck may split: keep the part on the ROI
        seed_crop = _sample_on_crop(roi.view(np.uint8), frame_shape, box, crop_frame_shape,
                                    cv2.INTER_NEAREST).astype(bool)
        refined = _component_touching(np.ascontiguousarray(soft > 0.5), seed_crop)
    mask = np.zeros(frame_shape, bool)
    fell_back = not refined.any()
    if fell_back:
        mask = grid_mask_to_frame(roi, frame_shape)
    else:
        mask[y0:y1, x0:x1] = refined
    return NativeRefineResult(mask=mask, box=box, work_shape=work, iterations=iterations,
                              converged=converged, fell_back=fell_back)


def warm_up() -> float:
    """Compile or load the Chan–Vese kernels this module uses and run each method once; seconds taken."""
    import time

    t0 = time.perf_counter()
    cv_module.warm_up()
    rng = np.random.default_rng(0)
    frame = (rng.random((40, 50)) * 255).astype(np.uint8)
    prob = np.zeros((16, 16), np.float32)
    prob[5:11, 4:12] = 0.9
    for method in NATIVE_METHODS:
        refine_native(frame, prob, prob > 0.5, method=method, max_iterations=2, tol=0.0)
    return time.perf_counter() - t0
