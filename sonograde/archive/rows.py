"""The archive table's columns, and one graded image (or one frame of a multi-frame DICOM) as a row.

Every row has every column; what does not apply is empty (None): the category and its probabilities
without a lesion, the descriptors without a descriptor model, everything but the path, id and ``error``
for a file that could not be read or graded. ``error`` is empty for a graded (or not gradeable) image.
"""

from __future__ import annotations

from typing import Any

from engine.birads import CATEGORIES
from engine.lexicon import DESCRIPTORS

# (name, kind): kind is "str", "int", "float" or "bool"; the Parquet writer maps them to Arrow types.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("path", "str"),
    ("id", "str"),
    ("frame", "int"),  # 0-based frame of a multi-frame DICOM; 0 for a single image
    ("frames", "int"),  # frames in the file
    ("file_sha256", "str"),
    ("width", "int"),  # image size in pixels
    ("height", "int"),
    ("lesion_found", "bool"),
    ("not_gradeable", "str"),  # why the models cannot judge the image; empty when they can
    ("category", "str"),
    *((f"p_{category}", "float") for category in CATEGORIES),
    ("malignancy_probability", "float"),
    *((name, "str") for name in DESCRIPTORS),
    ("size_unit", "str"),  # mm with a known pixel size, else px
    ("lesion_width", "float"),
    ("lesion_height", "float"),
    ("lesion_longest", "float"),
    ("pixel_size_mm", "float"),
    ("pixel_size_source", "str"),
    ("bbox_x", "int"),  # the refined lesion's bounding box in the image's pixels
    ("bbox_y", "int"),
    ("bbox_w", "int"),
    ("bbox_h", "int"),
    ("area_px", "int"),
    ("roi_model", "str"),
    ("grader_model", "str"),
    ("descriptor_model", "str"),
    ("roi_model_sha256", "str"),
    ("grader_model_sha256", "str"),
    ("descriptor_model_sha256", "str"),
    ("grade_ms", "float"),  # wall time of the three stages for this frame
    ("error", "str"),  # why the file could not be read or graded; empty when graded
)
COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in COLUMNS)
KEY = "path"


def empty_row(path: str, item_id: str | None) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMN_NAMES)
    row["path"], row["id"] = path, item_id
    return row


def error_row(path: str, item_id: str | None, message: str, frame: int | None = None) -> dict[str, Any]:
    """The row of a file that could not be read or graded: its path, id and the reason (one line)."""
    row = empty_row(path, item_id)
    row["frame"] = frame
    row["error"] = " ".join(str(message).split())[:500] or "unknown error"
    return row


def graded_row(base: dict[str, Any], result: Any) -> dict[str, Any]:
    """``base`` (path, id, frame, frames, file hash, size, pixel size, models) filled in from a
    ``engine.results.GradeResult``."""
    row = dict(base)
    row["lesion_found"] = bool(result.lesion_found)
    row["area_px"] = int(result.area_px)
    row["grade_ms"] = round(float(result.timings_ms.get("total", 0.0)), 3)
    if result.bbox is not None:
        row["bbox_x"], row["bbox_y"], row["bbox_w"], row["bbox_h"] = (int(v) for v in result.bbox)
    if result.category is not None and result.probabilities:
        row["category"] = result.category
        for category in CATEGORIES:
            value = result.probabilities.get(category)
            row[f"p_{category}"] = None if value is None else float(value)
    assessment = result.assessment or {}
    if assessment.get("malignancy_probability") is not None:
        row["malignancy_probability"] = float(assessment["malignancy_probability"])
    for name, described in (assessment.get("descriptors") or {}).items():
        if name in DESCRIPTORS and isinstance(described, dict):
            row[name] = described.get("value")
    size = assessment.get("size")
    if isinstance(size, dict):
        row["size_unit"] = size.get("unit")
        row["lesion_width"], row["lesion_height"] = size.get("width"), size.get("height")
        row["lesion_longest"] = size.get("longest")
    return row
