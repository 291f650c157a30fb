"""The explained assessment of one graded frame, as results carry it (message schema 2, the JSON of
``sonograde evaluate``'s cases): size and calipers measured on the refined mask, and the grader's
descriptors, malignancy probability and drivers where its model has them, every missing part named with
its reason. Shared by the live pipeline and the evaluation; no sockets, no torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sonograde.messages import absent_assessment

NO_LESION = "no lesion found"
NO_DESCRIPTOR_MODEL = "the grader has no descriptor model"
_GRADER_PARTS = ("descriptors", "malignancy_probability", "drivers")


def grader_assessment(classified: Any) -> tuple[dict[str, Any], str | None]:
    """The explained-assessment parts the grader's classify stage produced (``ClassifyStageResult
    .assessment``, ``engine.descriptors``), and the grader's reason where it produced none."""
    assessment = getattr(classified, "assessment", None)
    if not isinstance(assessment, dict):
        return {}, None
    parts = {k: v for k, v in assessment.items() if k in (*_GRADER_PARTS, "size") and v is not None}
    reason = assessment.get("assessment_absent_reason")
    if reason is not None and not parts.get("descriptors"):
        parts.pop("drivers", None)  # an absent assessment carries an empty drivers list
    return parts, reason if isinstance(reason, str) else None


def descriptor_ms(classified: Any) -> float | None:
    """The descriptor model's share of the classify stage in ms, where the grader reports it."""
    value = getattr(classified, "descriptor_ms", None)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _jsonable(value: Any) -> Any:
    """numpy scalars/arrays and tuples inside a grader's parts -> plain JSON values (floats rounded)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return round(value, 5)
    return value


def grader_accepts_pixel_size(grader: Any) -> bool:
    """Whether ``grader.classify`` measures the size itself and wants the frame's pixel size (a
    ``TwoStageGrader`` with a descriptor model)."""
    return getattr(grader, "descriptors", None) is not None


def frame_assessment(refined: Any, classified: Any, pixel_size_mm: float | None,
                     pixel_size_source: str | None) -> dict[str, Any]:
    """The ``assessment`` object of a result message (schema 2) for one graded frame.

    Descriptors, malignancy probability, drivers and size come from the grader's classify stage when it
    has a descriptor model; the size is measured here on the refined mask (``refine.measure``, in mm where
    the frame has a pixel size) when the grader gave none, or gave it in px although the frame has a pixel
    size; the calipers are measured here. Every missing part is named with its reason: no lesion, or a
    grader without a descriptor model.
    """
    if refined is None or not refined.lesion_found or classified is None or classified.category is None:
        return absent_assessment(NO_LESION)
    from refine.measure import PIXEL_SIZE_SOURCES, caliper_endpoints, lesion_size

    parts, reason = grader_assessment(classified)
    present: dict[str, Any] = {k: _jsonable(v) for k, v in parts.items()}
    size = present.get("size")
    if not isinstance(size, dict) or (pixel_size_mm and size.get("unit") != "mm"):
        source = pixel_size_source if pixel_size_source in PIXEL_SIZE_SOURCES else "caller"
        present["size"] = lesion_size(refined.refined_mask, pixel_size_mm or None,
                                      source if pixel_size_mm else None)
    present["calipers"] = caliper_endpoints(refined.refined_mask)
    return absent_assessment(reason or NO_DESCRIPTOR_MODEL, present)
