"""One ultrasound DICOM dataset -> checked, decoded, graded -> SR, SEG (and optionally SC) -> files.

Used by the node (``sonograde dicom serve``) and by ``sonograde grade FILE.dcm --dicom-out DIR``.

Which frames are graded: a single-frame image, its one frame; a multi-frame (cine) image, up to
``max_frames`` frames evenly spaced over the clip (first and last included). The report is about the
graded frame with the largest refined lesion area (lesions are measured at their largest section), and
names that frame; the other frames' categories go only to the JSON summary.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"
SECONDARY_CAPTURE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
GRADED_SOP_CLASSES = {
    US_IMAGE_STORAGE: "Ultrasound Image Storage",
    US_MULTIFRAME_IMAGE_STORAGE: "Ultrasound Multi-frame Image Storage",
    SECONDARY_CAPTURE_IMAGE_STORAGE: "Secondary Capture Image Storage",
}
# A Secondary Capture is graded when it says it is an ultrasound picture (or does not say what it is).
SECONDARY_CAPTURE_MODALITIES = ("US", "OT", "")
DEFAULT_MAX_FRAMES = 8


class RefusedError(ValueError):
    """The dataset is not graded. ``status`` is the DIMSE status a Storage SCP answers with, ``str()`` says
    why (one line, nothing of the patient)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


# Storage SCP failure statuses (PS3.4 B.2.3 / PS3.7 C): 0x0122 is the general "Refused: SOP Class not
# supported"; 0xA900 "data set does not match SOP Class"; 0xC000-0xCFFF "cannot understand", where the
# low byte says what we could not understand.
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
STATUS_DATASET_MISMATCH = 0xA900
STATUS_NOT_ULTRASOUND = 0xC101
STATUS_CORRUPT = 0xC102
STATUS_TRANSFER_SYNTAX = 0xC103
STATUS_CANNOT_GRADE = 0xC104


def sop_class_name(uid: str) -> str:
    name = UID(str(uid)).name
    return name if name and name != str(uid) else f"SOP class {uid}"


def check_dataset(ds: Dataset, context_sop_class: str | None = None) -> None:
    """Raise RefusedError unless ``ds`` is an image this node grades (see ``GRADED_SOP_CLASSES``)."""
    sop_class = str(getattr(ds, "SOPClassUID", "") or context_sop_class or "")
    if context_sop_class is not None and sop_class != str(context_sop_class):
        raise RefusedError(STATUS_DATASET_MISMATCH,
                           f"SOP Class UID {sop_class} in the data set differs from the association's "
                           f"{sop_class_name(context_sop_class)}")
    if sop_class not in GRADED_SOP_CLASSES:
        raise RefusedError(STATUS_SOP_CLASS_NOT_SUPPORTED,
                           f"{sop_class_name(sop_class)} is not graded: only ultrasound images "
                           f"({', '.join(GRADED_SOP_CLASSES.values())})")
    modality = str(getattr(ds, "Modality", "") or "").upper()
    if sop_class == SECONDARY_CAPTURE_IMAGE_STORAGE:
        if modality not in SECONDARY_CAPTURE_MODALITIES:
            raise RefusedError(STATUS_NOT_ULTRASOUND,
                               f"Secondary Capture of modality {modality} is not graded: only ultrasound")
    elif modality != "US":
        raise RefusedError(STATUS_NOT_ULTRASOUND,
                           f"{sop_class_name(sop_class)} with modality {modality or 'missing'}: expected US")
    if "PixelData" not in ds:
        raise RefusedError(STATUS_CORRUPT, "the data set has no Pixel Data")


def decode_frames(ds: Dataset) -> np.ndarray:
    """All frames as (N, H, W) uint8 gray (``capture.dicom_source.dicom_frames_gray``); RefusedError when the
    pixel data cannot be decoded (truncated, damaged, or a compression no decoder here reads)."""
    from capture.dicom_source import dicom_frames_gray

    try:
        frames = dicom_frames_gray(ds)
    except NotImplementedError as exc:
        raise RefusedError(STATUS_TRANSFER_SYNTAX, f"pixel data cannot be decoded here: {exc}") from exc
    except Exception as exc:  # pydicom and its decoders raise many types on damaged data
        raise RefusedError(STATUS_CORRUPT, f"pixel data cannot be decoded ({type(exc).__name__}: "
                           f"{_first_line(exc)})") from exc
    if frames.ndim != 3 or frames.shape[0] == 0 or min(frames.shape[1:]) < 16:
        raise RefusedError(STATUS_CORRUPT, f"pixel data has an unusable shape {frames.shape}")
    return frames


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


def frames_to_grade(count: int, max_frames: int = DEFAULT_MAX_FRAMES) -> list[int]:
    """0-based indices of the frames graded out of ``count``: all when few, else evenly spaced."""
    if count <= max_frames:
        return list(range(count))
    return sorted({round(i) for i in np.linspace(0, count - 1, max_frames)})


@dataclass
class GradedInstance:
    """One dataset graded: the assessment the report is about and the objects built from it.

    objects : {"sr": Dataset, "seg": Dataset, "sc": Dataset}; "seg" only with a lesion, "sc" when asked.
    summary : JSON-ready description (no patient data): category, probabilities, size, frames, uids.
    """

    source: Dataset
    assessment: object
    result: object
    frame: np.ndarray
    objects: dict[str, Dataset] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


def grade_dataset(ds: Dataset, grader, *, frames: np.ndarray | None = None,
                  max_frames: int = DEFAULT_MAX_FRAMES, overlay: bool = False) -> GradedInstance:
    """Grade ``ds`` with ``grader`` (an ``engine.grader.TwoStageGrader``) and build its DICOM objects.

    ``frames`` are the decoded frames when the caller has them already (``decode_frames``). Raises
    RefusedError for data sets that are not graded or cannot be decoded.
    """
    from capture.dicom_source import dicom_pixel_spacing_mm
    from refine.measure import lesion_size
    from sonograde.dicom import objects

    t0 = time.perf_counter()
    check_dataset(ds)
    if frames is None:
        frames = decode_frames(ds)
    chosen = frames_to_grade(len(frames), max_frames)
    # The grader gets the image's pixel size (its first calibrated ultrasound region, or Pixel Spacing), so
    # its explained assessment (orientation, size) is in mm where the image says how big a pixel is.
    spacing = dicom_pixel_spacing_mm(ds)
    pixel_size, source = spacing if spacing is not None else (None, None)
    results = []
    for index in chosen:
        try:
            results.append(grader.grade(frames[index], pixel_size_mm=pixel_size, pixel_size_source=source))
        except ValueError as exc:
            raise RefusedError(STATUS_CANNOT_GRADE, f"frame {index + 1} cannot be graded: {exc}") from exc
    best = max(range(len(chosen)), key=lambda i: results[i].area_px)
    result, index = results[best], chosen[best]
    multi = int(getattr(ds, "NumberOfFrames", 1) or 1) > 1
    size = None
    if result.lesion_found:
        # measured with the region the lesion lies in (an image may carry several calibrated regions)
        x, y, w, h = result.bbox
        spacing = dicom_pixel_spacing_mm(ds, point=(x + w / 2, y + h / 2))
        pixel_size, source = spacing if spacing is not None else (None, None)
        size = lesion_size(result.refined_mask, pixel_size, source)
    explained = getattr(result, "assessment", None) or {}
    malignancy = explained.get("malignancy_probability")
    assessment = objects.Assessment(
        category=result.category, probabilities=result.probabilities, contour=result.refined_contour,
        mask=result.refined_mask, size=size, model_ids=dict(result.model_ids),
        descriptors=explained.get("descriptors") or None,
        malignancy_probability=None if malignancy is None else float(malignancy),
        frame_number=index + 1 if multi else None)
    graded = GradedInstance(source=ds, assessment=assessment, result=result, frame=frames[index])
    graded.objects["sr"] = objects.build_measurement_report(ds, assessment)
    if assessment.lesion_found:
        graded.objects["seg"] = objects.build_segmentation(ds, assessment)
    if overlay:
        from sonograde.still_overlay import render_overlay

        drawn = render_overlay(frames[index], result)
        graded.objects["sc"] = objects.build_overlay_capture(ds, assessment, drawn)
    graded.summary = {
        "source_sop_instance_uid": str(ds.SOPInstanceUID),
        "sop_class": GRADED_SOP_CLASSES[str(ds.SOPClassUID)],
        "frames": len(frames), "graded_frames": [i + 1 for i in chosen],
        "frame_categories": [r.category for r in results], "reported_frame": index + 1,
        **result.as_dict(), "size": size, "descriptors": assessment.descriptors,
        "malignancy_probability": assessment.malignancy_probability, "model_ids": dict(result.model_ids),
        "objects": {kind: str(obj.SOPInstanceUID) for kind, obj in graded.objects.items()},
        "grade_and_build_ms": round((time.perf_counter() - t0) * 1e3, 1),
    }
    return graded


def write_objects(graded: GradedInstance, directory: Path, stem: str) -> dict[str, Path]:
    """Write ``<stem>_sr.dcm``, ``<stem>_seg.dcm``, ``<stem>_sc.dcm`` (those built) into ``directory``.

    Each file is written under a temporary name, synced and renamed: a reader never sees half a file.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for kind, dataset in graded.objects.items():
        path = directory / f"{stem}_{kind}.dcm"
        atomic_save(dataset, path)
        written[kind] = path
    return written


def write_summary(directory: Path, stem: str, summary: dict) -> Path:
    """``<stem>.json``: the summary as one JSON object (no patient data)."""
    path = directory / f"{stem}.json"
    atomic_write_bytes(path, (json.dumps(summary, default=_json_default) + "\n").encode())
    return path


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_save(dataset: Dataset, path: Path) -> None:
    """``dataset.save_as`` through a temporary file and a rename (durable once it returns)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    dataset.save_as(tmp, enforce_file_format=True)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
