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
NO_DESCRIPTOR_MODEL = "the grader model has no descriptor heads"
_GRADER_PARTS = ("descriptors", "malignancy_probability", "drivers")


def _grader_part(classified: Any, name: str) -> Any:
    """A part of the explained assessment the grader's classify stage produced, or None: an attribute of
    the stage result, or a key of its ``assessment`` mapping."""
    value = getattr(classified, name, None)
    if value is None:
        assessment = getattr(classified, "assessment", None)
        if isinstance(assessment, dict):
            value = assessment.get(name)
    return value


def descriptor_ms(classified: Any) -> float | None:
    """The descriptor models' share of the classify stage in ms, where the grader reports it."""
    for name in ("descriptor_ms", "descriptors_ms"):
        value = getattr(classified, name, None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    timings = getattr(classified, "timings_ms", None)
    if isinstance(timings, dict):
        for name in ("descriptors", "descriptor"):
            if isinstance(timings.get(name), int | float):
                return float(timings[name])
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


def frame_assessment(refined: Any, classified: Any, pixel_size_mm: float | None,
                     pixel_size_source: str | None) -> dict[str, Any]:
    """The ``assessment`` object of a result message (schema 2) for one graded frame.

    Size and calipers are measured here on the refined mask at the frame's pixels (``refine.measure``),
    in mm where the frame has a pixel size; descriptors, malignancy probability and drivers come from the
    grader's classify stage when its model has them. Every part missing is named with its reason: no
    lesion, or a grader model without descriptor heads.
    """
    if refined is None or not refined.lesion_found or classified is None or classified.category is None:
        return absent_assessment(NO_LESION)
    from refine.measure import PIXEL_SIZE_SOURCES, caliper_endpoints, lesion_size

    present: dict[str, Any] = {}
    source = pixel_size_source if pixel_size_source in PIXEL_SIZE_SOURCES else "caller"
    present["size"] = lesion_size(refined.refined_mask, pixel_size_mm or None,
                                  source if pixel_size_mm else None)
    present["calipers"] = caliper_endpoints(refined.refined_mask)
    for name in _GRADER_PARTS:
        value = _grader_part(classified, name)
        if value is not None:
            present[name] = _jsonable(value)
    return absent_assessment(NO_DESCRIPTOR_MODEL, present)
