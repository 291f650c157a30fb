"""The refine stage in one function: the ROI-CNN's output in, the lesion mask at the frame's pixels out.

``TwoStageGrader.refine`` (the live pipeline's refine thread and ``sonograde grade``) and the model
evaluation (``sonograde evaluate roi``) call :func:`refine_lesion`, so what is measured is what runs.

Refinements (:data:`REFINEMENTS`):

``paper``
    The paper's step 2 on the ROI grid: Chan–Vese (``refine.chan_vese.refine_roi``) on the 288 x 288
    frame around the area-filtered ROI, the result scaled up to the frame nearest-neighbour.
``native-threshold`` / ``native-chan-vese`` / ``native-band``
    At the frame's own pixels on a bounded crop around the lesion (``refine.native.refine_native``
    with method ``threshold`` / ``chan_vese`` / ``band``).
``none``
    The area-filtered ROI scaled up to the frame nearest-neighbour (no refinement).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# refine.chan_vese and refine.native (Numba, OpenCV, SciPy) are imported where they are used, so that the
# command line can name the refinements without loading them.

#: Every refinement :func:`refine_lesion` knows.
REFINEMENTS = ("paper", "native-threshold", "native-chan-vese", "native-band", "none")
#: The product's refinement and its outline's probability level (chosen by the rule in docs/refine.md:
#: on cases of a hospital and scanners the ROI-CNN never saw, its outline at 0.4 is nearer the truth).
DEFAULT_REFINEMENT = "native-threshold"
DEFAULT_NATIVE_LEVEL = 0.4
#: The refinements evaluations score side by side with the pipeline's: the paper's and the native ones.
SIDE_BY_SIDE = ("paper", "native-threshold", "native-chan-vese", "native-band")
_NATIVE_METHOD = {"native-threshold": "threshold", "native-chan-vese": "chan_vese", "native-band": "band"}


@dataclass(frozen=True, slots=True)
class RefineParameters:
    """What :func:`refine_lesion` does; the paper's values where the paper gives them.

    refinement : one of :data:`REFINEMENTS`.
    cv_margin : ``paper``: crop margin around the ROI, px of the ROI grid (16).
    cv_max_iterations : Chan–Vese iterations at most (50).
    mu1, mu2, alpha : Chan–Vese inside / outside data weights and length weight (1, 1, 1).
    native_max_side : native refinements: longest side of the refined crop, px (None:
        ``refine.native.DEFAULT_MAX_SIDE``, 256).
    native_margin_fraction : native refinements: crop margin as a fraction of the ROI box's longer side
        (None: ``refine.native.DEFAULT_MARGIN_FRACTION``).
    threshold : the area filter's probability threshold (0.5).
    native_level : native refinements: probability level of the outline on the crop (default
        :data:`DEFAULT_NATIVE_LEVEL`, 0.4; None: ``threshold``).
    """

    refinement: str = DEFAULT_REFINEMENT
    cv_margin: int = 16
    cv_max_iterations: int = 50
    mu1: float = 1.0
    mu2: float = 1.0
    alpha: float = 1.0
    native_max_side: int | None = None
    native_margin_fraction: float | None = None
    threshold: float = 0.5
    native_level: float | None = DEFAULT_NATIVE_LEVEL


@dataclass(frozen=True, slots=True)
class RefinedLesion:
    """Outcome of :func:`refine_lesion`.

    mask : bool (H, W) at the frame's size (empty when the ROI was empty).
    mask_grid : bool (S, S) on the ROI grid: the refined grid mask (``paper``), the ROI (``none``), or the
        frame mask sampled back onto the grid (native refinements).
    iterations, converged : Chan–Vese iterations run and whether it stopped on its tolerance.
    fell_back : True when the refinement emptied the mask and the ROI was kept instead.
    """

    mask: np.ndarray
    mask_grid: np.ndarray
    iterations: int
    converged: bool
    fell_back: bool


def check_refinement(name: str) -> str:
    """``name`` if it is one of :data:`REFINEMENTS`, else a ValueError listing them."""
    if name not in REFINEMENTS:
        raise ValueError(f"unknown refinement {name!r}; choose one of {', '.join(REFINEMENTS)}")
    return name


def refine_lesion(frame: np.ndarray, image_grid: np.ndarray, prob: np.ndarray, roi_mask: np.ndarray,
                  parameters: RefineParameters | None = None) -> RefinedLesion:
    """Refine the area-filtered ROI of one frame.

    Parameters
    ----------
    frame : ndarray (H, W) uint8
        The gray frame at its own resolution.
    image_grid : ndarray (S, S) uint8
        The frame resized to the ROI grid (what the ROI-CNN saw; ``paper`` refines on it).
    prob : ndarray (S, S) float
        The ROI-CNN's probability map.
    roi_mask : ndarray (S, S) bool
        The area filter's chosen component (``refine.area_filter.area_filter``).
    parameters : RefineParameters, optional
        Which refinement and its parameters (default: the product's).
    """
    import cv2

    from refine import chan_vese, native

    p = parameters or RefineParameters()
    check_refinement(p.refinement)
    frame_shape = (int(frame.shape[0]), int(frame.shape[1]))
    roi = np.ascontiguousarray(roi_mask, dtype=bool)
    if p.refinement == "none" or not roi.any():
        return RefinedLesion(mask=native.grid_mask_to_frame(roi, frame_shape), mask_grid=roi, iterations=0,
                             converged=False, fell_back=False)
    if p.refinement == "paper":
        cv = chan_vese.refine_roi(image_grid, roi, margin=p.cv_margin, mu1=p.mu1, mu2=p.mu2,
                                  alpha=p.alpha, max_iterations=p.cv_max_iterations)
        grid_mask = np.asarray(cv.mask, dtype=bool)
        fell_back = not grid_mask.any()
        if fell_back:  # Chan–Vese let the contour vanish: the raw ROI is still the best outline we have
            grid_mask = roi
        return RefinedLesion(mask=native.grid_mask_to_frame(grid_mask, frame_shape), mask_grid=grid_mask,
                             iterations=int(cv.iterations), converged=bool(cv.converged), fell_back=fell_back)
    given = {"max_side": p.native_max_side, "margin_fraction": p.native_margin_fraction}
    level = p.threshold if p.native_level is None else p.native_level
    band = (min(native.DEFAULT_BAND[0], level), max(native.DEFAULT_BAND[1], level))
    result = native.refine_native(frame, prob, roi, method=_NATIVE_METHOD[p.refinement], threshold=level,
                                  band=band, mu1=p.mu1, mu2=p.mu2, alpha=p.alpha,
                                  max_iterations=p.cv_max_iterations,
                                  **{k: v for k, v in given.items() if v is not None})
    grid_h, grid_w = roi.shape
    mask_grid = cv2.resize(result.mask.view(np.uint8), (grid_w, grid_h),
                           interpolation=cv2.INTER_NEAREST).astype(bool)
    return RefinedLesion(mask=result.mask, mask_grid=mask_grid, iterations=result.iterations,
                         converged=result.converged, fell_back=result.fell_back)


def warm_up() -> float:
    """Compile or load every refinement's Numba kernels (call once at start); seconds taken."""
    from refine import native

    return native.warm_up()
