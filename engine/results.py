"""The small results the two-stage grader's stages hand to each other (and to the pipeline).

Resolutions: ``*_288`` arrays live on the ROI-CNN grid (the frame resized to 288 x 288); everything else
(masks, contours, bbox, area) is in the frame's own pixels. Times are milliseconds of wall clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.birads import CATEGORIES

EMPTY_CONTOUR = np.zeros((0, 2), np.int32)


@dataclass(frozen=True, slots=True)
class RoiStageResult:
    """Stage 1, ROI-CNN and area filter.

    frame_shape : (H, W) of the frame.
    image_288 : the gray frame resized to the ROI grid (uint8, S x S); refinement runs on it.
    prob : lesion probability map (float32, S x S), the ROI-CNN output.
    raw_mask : area-filtered mask (bool, S x S): threshold, components >= 40% of the largest, the one
        nearest the centre. All False when nothing passes.
    lesion_found : ``raw_mask.any()``.
    ms : time of this stage (preprocess + ROI-CNN + area filter).
    """

    frame_shape: tuple[int, int]
    image_288: np.ndarray
    prob: np.ndarray
    raw_mask: np.ndarray
    lesion_found: bool
    ms: float


@dataclass(frozen=True, slots=True)
class RefineStageResult:
    """Stage 2, the refinement (``refine.stage.refine_lesion``), and the masks at the frame's size.

    lesion_found : False when stage 1 found nothing (all masks empty, contours empty, bbox None).
    refined_mask_288 : refined mask on the ROI grid (bool, S x S; a native refinement's mask sampled back).
    iterations, converged : Chan–Vese iterations run (0 without Chan–Vese), and whether it stopped before
        the maximum.
    fell_back_to_raw : True when the refinement returned an empty mask and the raw mask was kept instead.
    raw_mask : bool (H, W) raw ROI at the frame's size (nearest-neighbour upsampling).
    refined_mask : bool (H, W) refined lesion at the frame's size (at its own pixels with a native
        refinement, nearest-neighbour from the grid with the paper's).
    raw_contour, refined_contour : (N, 2) int32 polygons, x then y, in frame pixels ((0, 2) when empty).
    bbox : (x, y, w, h) of the refined mask in frame pixels, or None.
    area_px : refined mask area in frame pixels.
    ms : time of this stage (refinement + mapping back + contours).
    """

    lesion_found: bool
    refined_mask_288: np.ndarray
    iterations: int
    converged: bool
    fell_back_to_raw: bool
    raw_mask: np.ndarray
    refined_mask: np.ndarray
    raw_contour: np.ndarray
    refined_contour: np.ndarray
    bbox: tuple[int, int, int, int] | None
    area_px: int
    ms: float


@dataclass(frozen=True, slots=True)
class ClassifyStageResult:
    """Stage 3, G-CNN on the refined ROI.

    probabilities : float32 (5,) softmax over ``categories``, or None when there was no lesion.
    category : the most probable category, or None.
    ms : time of this stage (grader input + G-CNN + descriptors); 0 when skipped.
    assessment : the explained assessment (``engine.descriptors``: descriptors, size,
        malignancy_probability, drivers), or None when the grader has no descriptor model or no lesion.
    descriptor_ms : the descriptor model's share of ``ms`` (None without one), so the live pipeline and
        its benchmark can show what the explanation costs.
    """

    probabilities: np.ndarray | None
    category: str | None
    categories: tuple[str, ...] = CATEGORIES
    ms: float = 0.0
    assessment: dict | None = None
    descriptor_ms: float | None = None

    @property
    def probability(self) -> float | None:
        """Probability of the chosen category, or None."""
        if self.probabilities is None or self.category is None:
            return None
        return float(self.probabilities[self.categories.index(self.category)])


@dataclass(frozen=True, slots=True)
class GradeResult:
    """One frame through all three stages (``TwoStageGrader.grade``).

    lesion_found : whether the ROI-CNN + area filter found a lesion.
    raw_mask, refined_mask : bool (H, W) at the frame's size.
    raw_contour, refined_contour : (N, 2) int32 polygons (x, y) in frame pixels.
    bbox : (x, y, w, h) of the refined mask, or None. area_px : its area in frame pixels.
    category : "3", "4A", "4B", "4C" or "5", None when no lesion.
    probabilities : {category: probability}, None when no lesion.
    timings_ms : {"roi_cnn", "refine", "g_cnn", "total"}.
    model_ids : {"roi": .., "grader": ..} from the models' metadata.
    iterations, converged : Chan–Vese iterations and convergence.
    assessment : descriptors, size, malignancy_probability and drivers (``engine.descriptors``), or the
        same keys set to None with ``assessment_absent_reason`` (no lesion, no descriptor model).
    """

    lesion_found: bool
    raw_mask: np.ndarray
    refined_mask: np.ndarray
    raw_contour: np.ndarray
    refined_contour: np.ndarray
    bbox: tuple[int, int, int, int] | None
    area_px: int
    category: str | None
    probabilities: dict[str, float] | None
    timings_ms: dict[str, float]
    model_ids: dict[str, str] = field(default_factory=dict)
    iterations: int = 0
    converged: bool = False
    assessment: dict | None = None

    def as_dict(self) -> dict:
        """JSON-ready summary (no masks): lesion_found, category, probabilities, bbox, area_px, timings_ms,
        and the explained assessment's keys (descriptors, size, malignancy_probability, drivers)."""
        out = {
            "lesion_found": self.lesion_found,
            "category": self.category,
            "probabilities": self.probabilities,
            "bbox": list(self.bbox) if self.bbox is not None else None,
            "area_px": self.area_px,
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }
        if self.assessment is not None:
            out.update(self.assessment)
        return out
