"""Run the two-stage grader over manifest records and collect per-case results.

For every image (any size) the shipped pipeline runs as in ``TwoStageGrader.grade``: ROI-CNN + area filter
(``locate``), Chan–Vese refinement (``refine``), G-CNN on the refined ROI (``classify``). Beside it, the
paper's "No ROI-CNN" variant segments the image with Chan–Vese alone (see :func:`no_roi_cnn_mask`).
The three masks of the paper's identification variants are then:

- ``no_roi_cnn``: Chan–Vese alone from a checkerboard start, 1000 iterations;
- ``roi_cnn``: the ROI-CNN mask after the area filter, not refined;
- ``refined``: the pipeline's refined mask.

All three are compared with the ground truth at the image's own size (masks from the 288 x 288 grid are
upsampled by nearest neighbour, as the pipeline does) and each is also handed to the G-CNN, which gives
Fig. 4's per-variant ROC curves. Per-case results keep contours, not masks, so memory stays small.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from refine.stage import SIDE_BY_SIDE
from sonograde.evaluation.labels import CATEGORIES, Birads2Policy, grading_label
from sonograde.evaluation.summary import VARIANTS, CaseResult, SegmentationScores

if TYPE_CHECKING:
    from engine.data.manifest import ManifestRecord
    from engine.grader import TwoStageGrader

NO_ROI_SIZE = 288
"""Default grid of the "No ROI-CNN" Chan–Vese: the paper scaled every input to 288 x 288 first."""



@dataclass(frozen=True, slots=True)
class EvaluationOptions:
    """What to evaluate.

    no_roi_cnn : run the slow "No ROI-CNN" variant (Chan–Vese from a checkerboard). Default True.
    no_roi_size : grid it runs on (pixels, square); 0 means the image's own size. Default 288.
    no_roi_iterations : its Chan–Vese iterations at most (paper: 1000).
    birads2 : what BI-RADS 2 becomes in grading: ``"as3"`` (default, as the shipped G-CNN was trained) or
        ``"exclude"``.
    keep_contours : keep contours per case (needed for the report's case grid).
    refinements : other refinements (``refine.stage.REFINEMENTS``) scored side by side with the pipeline's
        on the same ROI-CNN map, segmentation only (``segmentation_refinements`` in the summary).
    """

    no_roi_cnn: bool = True
    no_roi_size: int = NO_ROI_SIZE
    no_roi_iterations: int = 1000
    birads2: Birads2Policy = "as3"
    keep_contours: bool = True
    refinements: tuple[str, ...] = SIDE_BY_SIDE


def mask_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Outer contours of a bool mask as (N, 2) int32 polygons (x, y); empty list for an empty mask."""
    if not mask.any():
        return []
    found, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1, 2).astype(np.int32) for c in found]


def _upsample(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == shape:
        return mask.astype(bool, copy=False)
    resized = cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return resized.astype(bool)


def no_roi_cnn_mask(gray: np.ndarray, *, size: int = NO_ROI_SIZE, max_iterations: int = 1000,
                    threshold: float = 0.5, min_fraction: float = 0.4) -> tuple[np.ndarray, int]:
    """The paper's "No ROI-CNN" segmentation of a uint8 image, at the image's size; also iterations run.

    Chan–Vese (mu1 = mu2 = alpha = 1) from scikit-image's checkerboard start for up to ``max_iterations``
    on the image resized to ``size`` x ``size`` (0: at its own size). Chan–Vese splits the image into two
    phases without saying which is the lesion; we take the darker one (breast lesions are mostly
    hypoechoic) and then apply the pipeline's own area filter (components >= 40 % of the largest, the
    one nearest the centre), so that, like the other variants, it yields one region to grade.
    """
    from refine.area_filter import area_filter
    from refine.chan_vese import segment_image

    small = gray
    if size and gray.shape != (size, size):
        interpolation = cv2.INTER_AREA if min(gray.shape) > size else cv2.INTER_LINEAR
        small = cv2.resize(gray, (size, size), interpolation=interpolation)
    result = segment_image(small, max_iterations=max_iterations)
    inside = np.asarray(result.mask, dtype=bool)
    if inside.any() and (~inside).any():
        values = small.astype(np.float64)
        if values[inside].mean() > values[~inside].mean():
            inside = ~inside
    mask = area_filter(inside.astype(np.float32), threshold=threshold, min_fraction=min_fraction)
    return _upsample(np.asarray(mask, dtype=bool), gray.shape), int(result.iterations)


def segmentation_scores(pred: np.ndarray, truth: np.ndarray,
                        pixel_size_mm: float | None) -> SegmentationScores:
    """Score one predicted mask against the truth with ``refine.metrics`` (empty prediction: DSC 0, no
    distances)."""
    from refine.metrics import segmentation_metrics

    if not pred.any():
        return SegmentationScores(dsc=0.0, hd95=None, avg_dist=None, empty=True)
    m = segmentation_metrics(pred, truth, pixel_size_mm=pixel_size_mm)

    def finite(name: str) -> float | None:
        value = getattr(m, name, None)
        return float(value) if value is not None and np.isfinite(value) else None

    return SegmentationScores(dsc=float(m.dsc), hd95=finite("hd95"), avg_dist=finite("avg_dist"),
                              hd_max=finite("hd_max"), hd95_mm=finite("hd95_mm"),
                              avg_dist_mm=finite("avg_dist_mm"))


def evaluate_case(grader: TwoStageGrader, record: ManifestRecord, options: EvaluationOptions) -> CaseResult:
    """Run one manifest record (``engine.data.manifest.ManifestRecord``) through every variant."""
    from engine.data.manifest import load_gray, load_mask

    gray = load_gray(record.image)
    truth = load_mask(record)
    if truth is not None and truth.shape != gray.shape:
        raise ValueError(f"{record.dataset}/{record.id}: mask {record.mask} is "
                         f"{truth.shape[1]}x{truth.shape[0]} but the image is "
                         f"{gray.shape[1]}x{gray.shape[0]}; fix the manifest")
    has_lesion = truth is not None and bool(truth.any())
    case = CaseResult(
        dataset=record.dataset, id=record.id, image_path=str(record.image),
        shape=(int(gray.shape[0]), int(gray.shape[1])), pixel_size_mm=record.pixel_size_mm,
        birads=record.birads, label=grading_label(record.birads, options.birads2),
        pathology=record.pathology if record.pathology in ("benign", "malignant") else None,
        has_lesion_mask=has_lesion,
    )
    t0 = time.perf_counter()
    roi = grader.locate(gray)
    refined = grader.refine(gray, roi)
    classified = grader.classify(gray, refined, **_pixel_size(grader, record))
    case.timings_ms["pipeline"] = (time.perf_counter() - t0) * 1e3
    assess_case(case, record, refined, classified, truth)
    masks: dict[str, np.ndarray] = {"roi_cnn": refined.raw_mask, "refined": refined.refined_mask}
    probs: dict[str, np.ndarray | None] = {"refined": classified.probabilities}
    if options.no_roi_cnn:
        t1 = time.perf_counter()
        masks["no_roi_cnn"], _ = no_roi_cnn_mask(gray, size=options.no_roi_size,
                                                 max_iterations=options.no_roi_iterations)
        case.timings_ms["no_roi_cnn"] = (time.perf_counter() - t1) * 1e3
    # The G-CNN on the other variants' masks (Fig. 4): same frame, the variant's mask as the ROI.
    for variant in ("roi_cnn", "no_roi_cnn"):
        if variant in masks:
            mask = masks[variant]
            stand_in = dataclasses.replace(refined, refined_mask=mask, lesion_found=bool(mask.any()))
            probs[variant] = grader.classify(gray, stand_in).probabilities
    for variant in VARIANTS:
        if variant not in masks:
            continue
        mask = masks[variant]
        case.lesion_found[variant] = bool(mask.any())
        p = probs.get(variant)
        case.probabilities[variant] = None if p is None else _ordered(p, grader)
        if has_lesion:
            case.segmentation[variant] = segmentation_scores(mask, truth, record.pixel_size_mm)
        if options.keep_contours:
            case.contours[variant] = mask_contours(mask)
    if options.keep_contours and has_lesion:
        case.contours["truth"] = mask_contours(truth)
    if has_lesion and options.refinements:
        case.refinements = refinement_scores(grader, gray, roi, truth, record.pixel_size_mm,
                                             options.refinements)
    return case


def refinement_scores(grader: TwoStageGrader, gray: np.ndarray, roi: object, truth: np.ndarray,
                      pixel_size_mm: float | None, names: Sequence[str]) -> dict[str, SegmentationScores]:
    """Each refinement in ``names`` on the pipeline's own located ROI (``refine.stage.refine_lesion``, the
    grader's parameters with only the refinement changed), scored against the truth at the image's size."""
    from refine.stage import RefineParameters, refine_lesion

    config = getattr(grader, "config", None)
    base = config.refine_parameters() if hasattr(config, "refine_parameters") else RefineParameters()
    out = {}
    for name in names:
        parameters = dataclasses.replace(base, refinement=name)
        lesion = refine_lesion(gray, roi.image_288, roi.prob, roi.raw_mask, parameters)  # type: ignore[attr-defined]
        out[name] = segmentation_scores(lesion.mask, truth, pixel_size_mm)
    return out


def _pixel_size(grader: TwoStageGrader, record: ManifestRecord) -> dict[str, object]:
    """The manifest's pixel size for a grader that measures the lesion in classify (mm sizes there)."""
    from sonograde.assessment import grader_accepts_pixel_size

    if not grader_accepts_pixel_size(grader) or not record.pixel_size_mm:
        return {}
    return {"pixel_size_mm": record.pixel_size_mm, "pixel_size_source": "manifest"}


def assess_case(case: CaseResult, record: ManifestRecord, refined: object, classified: object,
                truth: np.ndarray | None) -> None:
    """Fill the case's explained assessment (the pipeline's, with the manifest's pixel size) and its
    references: the reader's descriptor labels and the size and orientation of the annotated mask."""
    from engine.lexicon import manifest_descriptor_labels
    from refine.measure import lesion_orientation, lesion_size
    from sonograde.assessment import frame_assessment

    pixel = record.pixel_size_mm
    case.assessment = frame_assessment(refined, classified, pixel, "manifest" if pixel else None)
    case.descriptor_truth = manifest_descriptor_labels(record.extra)
    if truth is not None and truth.any():
        case.truth_size = lesion_size(truth, pixel, "manifest" if pixel else None)
        case.truth_orientation = lesion_orientation(truth, pixel)["value"]


def _ordered(probabilities: np.ndarray, grader: TwoStageGrader) -> tuple[float, float, float, float, float]:
    """The grader's probabilities reordered to CATEGORIES (a model may declare another order)."""
    order = tuple(getattr(grader, "categories", CATEGORIES))
    values = dict(zip(order, (float(p) for p in probabilities), strict=True))
    missing = [c for c in CATEGORIES if c not in values]
    if missing:
        raise ValueError(f"the grader's categories {order} lack {missing}; expected {CATEGORIES}")
    return tuple(values[c] for c in CATEGORIES)  # type: ignore[return-value]


def evaluate_records(grader: TwoStageGrader, records: Sequence[ManifestRecord], options: EvaluationOptions,
                     progress: bool = True) -> list[CaseResult]:
    """Evaluate every record in order, with a tqdm progress bar on stderr when ``progress``."""
    from tqdm import tqdm

    iterator: Iterable = records
    if progress:
        iterator = tqdm(records, desc="evaluate", unit="img", dynamic_ncols=True)
    return [evaluate_case(grader, record, options) for record in iterator]
