"""Turn per-case results into the numbers of the evaluation report (the JSON of ``sonograde evaluate``).

Two summaries, each from small per-case dataclasses so they can be tested with known answers:

- :func:`summarize_segmentation`: DSC mean/median, HD95 and average boundary distance (px, and mm where
  the pixel size is known) of one identification variant over the cases with a ground-truth mask.
- :func:`summarize_grading`: accuracy, per-category accuracy (recall), confusion matrix, one-vs-rest
  AUC per category, macro AUC and malignancy AUC, with the label rules of :mod:`.labels`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from engine.birads import CATEGORIES, COARSE_CATEGORIES, FINE_FOUR, MALIGNANCY_BY_CATEGORY, coarse
from engine.grading_metrics import (
    auc,
    confusion_matrix,
    mean_or_none,
    median_or_none,
    one_vs_rest_accuracy,
    roc_curve,
)

if TYPE_CHECKING:
    from engine.lexicon import DescriptorLabels

VARIANTS: tuple[str, ...] = ("no_roi_cnn", "roi_cnn", "refined")
"""The paper's three identification variants (Table 2, Fig. 4), in its order."""

VARIANT_NAMES: dict[str, str] = {
    "no_roi_cnn": "No ROI-CNN (Chan–Vese alone)",
    "roi_cnn": "ROI-CNN (not refined)",
    "refined": "Refined ROI-CNN",
}

# The malignancy score of a case is sum_c P(c) * likelihood(c) with ``engine.birads``'s likelihoods (the
# same weights as the training's validation metric): an expected probability of malignancy, monotone in
# every category's probability.


@dataclass(frozen=True, slots=True)
class SegmentationScores:
    """Metrics of one predicted mask against the ground truth of one image (at the image's size).

    ``dsc`` in [0, 1]; distances in pixels (``*_mm`` in millimetres, ``None`` without a pixel size).
    Distances are ``None`` when the prediction is empty (``empty`` is True): no boundary to measure.
    """

    dsc: float
    hd95: float | None
    avg_dist: float | None
    hd_max: float | None = None
    hd95_mm: float | None = None
    avg_dist_mm: float | None = None
    empty: bool = False


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def summarize_segmentation(scores: Sequence[SegmentationScores]) -> dict[str, float | int]:
    """Summary of one variant: ``n``, ``dsc_mean``, ``dsc_median``, ``hd95_mean``, ``hd95_median``,
    ``avgdist_mean``, ``hdmax_mean``, ``n_empty``, and where pixel sizes are known ``n_mm``,
    ``hd95_mm_mean``, ``avgdist_mm_mean``.

    An empty prediction scores DSC 0 and is left out of the distance means (counted in ``n_empty``).
    Keys whose value is undefined (no cases) are omitted.
    """
    out: dict[str, float | int | None] = {"n": len(scores)}
    if not scores:
        return {"n": 0}
    out["dsc_mean"] = _round(mean_or_none([s.dsc for s in scores]))
    out["dsc_median"] = _round(median_or_none([s.dsc for s in scores]))
    out["hd95_mean"] = _round(mean_or_none([s.hd95 for s in scores]), 2)
    out["hd95_median"] = _round(median_or_none([s.hd95 for s in scores]), 2)
    out["avgdist_mean"] = _round(mean_or_none([s.avg_dist for s in scores]), 2)
    out["hdmax_mean"] = _round(mean_or_none([s.hd_max for s in scores]), 2)
    out["n_empty"] = sum(1 for s in scores if s.empty)
    with_mm = [s for s in scores if s.hd95_mm is not None or s.avg_dist_mm is not None]
    if with_mm:
        out["n_mm"] = len(with_mm)
        out["hd95_mm_mean"] = _round(mean_or_none([s.hd95_mm for s in with_mm]), 3)
        out["avgdist_mm_mean"] = _round(mean_or_none([s.avg_dist_mm for s in with_mm]), 3)
    return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True, slots=True)
class GradedCase:
    """One case's grading: its label (a category of CATEGORIES or coarse ``"4"``, ``None`` if it is not
    graded), the grader's five probabilities in CATEGORIES order (``None`` when the pipeline found no
    lesion, so no category), and its pathology (benign/malignant or ``None``).

    A case without probabilities counts as wrong in every accuracy, is left out of the confusion
    matrix (counted in ``n_no_lesion``), and gets the uninformative score 1/5 per category in the AUCs
    (ties with everything), so that missed lesions are not silently dropped.
    """

    id: str
    label: str | None
    probabilities: tuple[float, float, float, float, float] | None
    pathology: str | None = None

    @property
    def scores(self) -> tuple[float, ...]:
        """The probabilities, or 1/5 each where there are none."""
        return self.probabilities if self.probabilities is not None else (0.2,) * len(CATEGORIES)

    @property
    def predicted(self) -> str | None:
        """The category with the highest probability (first one on ties); ``None`` without a lesion."""
        if self.probabilities is None:
            return None
        return CATEGORIES[int(np.argmax(self.probabilities))]

    @property
    def coarse_probabilities(self) -> tuple[float, float, float]:
        """P(3), P(4A) + P(4B) + P(4C), P(5) (from :attr:`scores`)."""
        p = self.scores
        return (p[0], p[1] + p[2] + p[3], p[4])

    @property
    def predicted_coarse(self) -> str | None:
        if self.probabilities is None:
            return None
        return COARSE_CATEGORIES[int(np.argmax(self.coarse_probabilities))]

    @property
    def correct(self) -> bool | None:
        """Fine label: arg-max category equals it; coarse ``"4"``: P(4A)+P(4B)+P(4C) is the largest of
        the three coarse probabilities. False without a lesion; ``None`` for an ungraded case."""
        if self.label is None:
            return None
        if self.label == "4":
            return self.predicted_coarse == "4"
        return self.predicted == self.label

    @property
    def malignancy_score(self) -> float:
        return float(sum(p * MALIGNANCY_BY_CATEGORY[c] for c, p in zip(CATEGORIES, self.scores, strict=True)))


def category_scores(cases: Sequence[GradedCase], category: str) -> tuple[np.ndarray, np.ndarray] | None:
    """One-vs-rest labels and scores for ``category`` (a fine category or coarse ``"4"``).

    ``"3"``, ``"5"`` and ``"4"`` use every graded case; ``"4A"``/``"4B"``/``"4C"`` only the cases with a fine
    label (a coarse "4" case could be any of them). The coarse "4" score is P(4A)+P(4B)+P(4C).
    Returns ``None`` when no case qualifies.
    """
    graded = [c for c in cases if c.label is not None]
    if category in FINE_FOUR:
        graded = [c for c in graded if c.label != "4"]
    if not graded:
        return None
    if category == "4":
        labels = np.array([coarse(c.label) == "4" for c in graded])  # type: ignore[arg-type]
        scores = np.array([c.coarse_probabilities[1] for c in graded])
    else:
        index = CATEGORIES.index(category)
        labels = np.array([c.label == category for c in graded])
        scores = np.array([c.scores[index] for c in graded])
    return labels, scores


def roc_points(cases: Sequence[GradedCase], category: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(fpr, tpr) of ``category`` one-vs-rest (rules of :func:`category_scores`), ``None`` if undefined."""
    data = category_scores(cases, category)
    if data is None:
        return None
    curve = roc_curve(*data)
    return None if curve is None else (curve[0], curve[1])


def summarize_grading(cases: Sequence[GradedCase]) -> dict[str, object]:
    """The ``grading`` block of the evaluation JSON.

    Keys: ``n`` (graded cases), ``accuracy``, ``per_category_accuracy`` (recall per true category; the
    coarse ``"4"`` appears when such labels exist), ``one_vs_rest_accuracy``, ``confusion`` (5 x 5 over
    the fine-labelled cases, rows true and columns predicted, in CATEGORIES order), ``auc`` (one-vs-rest
    per category), ``macro_auc`` (mean of the defined per-category AUCs over the five fine categories,
    or over coarse 3/4/5 when any label is coarse, named in ``macro_auc_over``), ``coarse`` (accuracy and
    3 x 3 confusion over 3/4/5 for all graded cases, only when a coarse label exists),
    ``malignancy_auc`` and ``malignancy_n`` over the cases with a benign/malignant pathology (graded or
    not), scored by the expected likelihood of malignancy. Undefined values are omitted.
    """
    graded = [c for c in cases if c.label is not None]
    out: dict[str, object] = {"n": len(graded)}
    has_coarse = any(c.label == "4" for c in graded)
    if graded:
        out["accuracy"] = _round(float(np.mean([bool(c.correct) for c in graded])))
        out["n_no_lesion"] = sum(1 for c in graded if c.probabilities is None)
        fine = [c for c in graded if c.label != "4"]
        found = [c for c in fine if c.predicted is not None]
        matrix = confusion_matrix([CATEGORIES.index(c.label) for c in found],  # type: ignore[arg-type]
                                  [CATEGORIES.index(c.predicted) for c in found],  # type: ignore[arg-type]
                                  len(CATEGORIES))
        per_cat: dict[str, float] = {}
        for category in CATEGORIES:
            of_category = [c for c in fine if c.label == category]
            if of_category:  # recall, with missed lesions counted as wrong
                per_cat[category] = _round(float(np.mean([bool(c.correct) for c in of_category])))  # type: ignore[assignment]
        if has_coarse:
            fours = [c for c in graded if c.label == "4"]
            per_cat["4"] = _round(float(np.mean([bool(c.correct) for c in fours])))  # type: ignore[assignment]
            ordered = ("3", "4A", "4B", "4C", "4", "5")
            per_cat = {k: per_cat[k] for k in ordered if k in per_cat}
        out["per_category_accuracy"] = per_cat
        if fine:
            # Only categories that occur (as truth or prediction): for the others it is trivially 1.
            occurs = matrix.sum(axis=0) + matrix.sum(axis=1)
            out["one_vs_rest_accuracy"] = {
                c: _round(v) for c, v, k in zip(CATEGORIES, one_vs_rest_accuracy(matrix), occurs, strict=True)
                if v is not None and k > 0
            }
            out["confusion"] = matrix.tolist()
            out["confusion_labels"] = list(CATEGORIES)
        aucs: dict[str, float] = {}
        for category in (*CATEGORIES, "4"):
            if category == "4" and not has_coarse:
                continue
            data = category_scores(graded, category)
            value = None if data is None else auc(*data)
            if value is not None:
                aucs[category] = _round(value)  # type: ignore[assignment]
        if aucs:
            out["auc"] = aucs
        over = COARSE_CATEGORIES if has_coarse else CATEGORIES
        macro = [aucs[c] for c in over if c in aucs]
        if macro:
            out["macro_auc"] = _round(float(np.mean(macro)))
            out["macro_auc_over"] = [c for c in over if c in aucs]
        if has_coarse:
            found_all = [c for c in graded if c.predicted_coarse is not None]
            truth = [COARSE_CATEGORIES.index(coarse(c.label)) for c in found_all]  # type: ignore[arg-type]
            pred = [COARSE_CATEGORIES.index(c.predicted_coarse) for c in found_all]  # type: ignore[arg-type]
            cm = confusion_matrix(truth, pred, len(COARSE_CATEGORIES))
            coarse_correct = [c.predicted_coarse == coarse(c.label) for c in graded]  # type: ignore[arg-type]
            out["coarse"] = {
                "accuracy": _round(float(np.mean(coarse_correct))),
                "per_category_accuracy": {
                    k: _round(float(np.mean([c.predicted_coarse == k for c in graded
                                             if coarse(c.label) == k])))  # type: ignore[arg-type]
                    for k in COARSE_CATEGORIES if any(coarse(c.label) == k for c in graded)  # type: ignore[arg-type]
                },
                "confusion": cm.tolist(),
                "confusion_labels": list(COARSE_CATEGORIES),
            }
    with_path = [c for c in cases if c.pathology in ("benign", "malignant")]
    if with_path:
        value = auc([c.pathology == "malignant" for c in with_path], [c.malignancy_score for c in with_path])
        if value is not None:
            out["malignancy_auc"] = _round(value)
            out["malignancy_n"] = len(with_path)
    return out


@dataclass(slots=True)
class CaseResult:
    """One image through the evaluation.

    has_lesion_mask : the manifest gives a non-empty mask (segmentation is scored only then).
    segmentation : variant -> scores (only variants that ran, only with a lesion mask).
    probabilities : variant -> 5 G-CNN probabilities in CATEGORIES order, or None where that variant
        found no lesion (the G-CNN is not run on an empty ROI).
    lesion_found : variant -> whether its mask is non-empty.
    contours : "truth" / variant -> list of (N, 2) int32 polygons in image pixels (for the case grid).
    refinements : refinement name -> scores of that refinement on the pipeline's ROI (segmentation only).
    timings_ms : "pipeline" (locate + refine + classify) and "no_roi_cnn" wall times.
    assessment : the pipeline's explained assessment of the image (``sonograde.assessment``).
    descriptor_truth : the reader's lexicon labels from the manifest (``engine.lexicon``).
    truth_size, truth_orientation : size and orientation measured on the annotated mask (``None``
        without one), the reference for the pipeline's.
    """

    dataset: str
    id: str
    image_path: str
    shape: tuple[int, int]
    pixel_size_mm: float | None
    birads: str | None
    label: str | None
    pathology: str | None
    has_lesion_mask: bool
    segmentation: dict[str, SegmentationScores] = field(default_factory=dict)
    refinements: dict[str, SegmentationScores] = field(default_factory=dict)
    probabilities: dict[str, tuple[float, float, float, float, float] | None] = field(default_factory=dict)
    lesion_found: dict[str, bool] = field(default_factory=dict)
    contours: dict[str, list[np.ndarray]] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    assessment: dict | None = None
    descriptor_truth: DescriptorLabels | None = None
    truth_size: dict | None = None
    truth_orientation: str | None = None

    def graded(self, variant: str = "refined") -> GradedCase:
        """This case as a :class:`GradedCase` for ``variant`` (label None if it is not graded)."""
        return GradedCase(id=self.id, label=self.label, probabilities=self.probabilities.get(variant),
                          pathology=self.pathology if self.has_lesion_mask or self.label else None)


def summarize_cases(cases: Sequence[CaseResult]) -> dict[str, object]:
    """The whole evaluation JSON from per-case results (:class:`CaseResult`).

    ``n`` (images), ``segmentation`` (variant -> :func:`summarize_segmentation`, over images with a lesion
    mask; variants that did not run are omitted), ``segmentation_refinements`` (refinement name -> the
    same summary, each refinement on the pipeline's ROI), ``grading`` (:func:`summarize_grading` of the
    shipped pipeline, i.e. the refined ROI), ``grading_variants`` (variant -> accuracy, macro AUC and
    per-category AUC when the G-CNN is given that variant's ROI: Fig. 4), ``normal`` (images without a
    lesion mask: how many, and on how many the pipeline still found a lesion), ``timings_ms`` (mean wall
    time per image of the pipeline and of the "No ROI-CNN" Chan–Vese). Blocks that do not apply are omitted.
    """
    out: dict[str, object] = {"n": len(cases)}
    segmentation: dict[str, object] = {}
    for variant in VARIANTS:
        scores = [c.segmentation[variant] for c in cases if variant in c.segmentation]
        if scores:
            segmentation[variant] = summarize_segmentation(scores)
    if segmentation:
        out["segmentation"] = segmentation
    names = list(dict.fromkeys(name for c in cases for name in c.refinements))
    if names:
        out["segmentation_refinements"] = {
            name: summarize_segmentation([c.refinements[name] for c in cases if name in c.refinements])
            for name in names}
    graded = [c.graded("refined") for c in cases]
    grading = summarize_grading(graded)
    if grading.get("n") or "malignancy_auc" in grading:
        out["grading"] = grading
    variants: dict[str, object] = {}
    for variant in VARIANTS:
        if not any(variant in c.probabilities for c in cases):
            continue
        summary = summarize_grading([c.graded(variant) for c in cases])
        if summary.get("n"):
            keys = ("n", "accuracy", "macro_auc", "auc", "malignancy_auc")
            variants[variant] = {k: summary[k] for k in keys if k in summary}
    if variants:
        out["grading_variants"] = variants
    normal = [c for c in cases if not c.has_lesion_mask]
    if normal:
        out["normal"] = {"n": len(normal),
                         "lesion_found": sum(1 for c in normal if c.lesion_found.get("refined"))}
    timings: dict[str, float] = {}
    for key in ("pipeline", "no_roi_cnn"):
        values = [c.timings_ms[key] for c in cases if key in c.timings_ms]
        if values:
            timings[key] = round(float(np.mean(values)), 1)
    if timings:
        out["timings_ms"] = timings
    return out
