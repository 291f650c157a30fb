"""Reader for manifest datasets: any folder with a ``manifest.csv`` of the form ``id,image,mask[,...]``.

Columns ``id`` and ``image`` are required; ``mask`` may be empty (normal cases). Optional columns with a
meaning here: ``birads`` (1, 2, 3, 4, 4a/4A, 4b, 4c, 5, 6), ``pathology`` (benign/malignant/normal),
``patient`` (split key), ``pixel_size_mm``, ``fold``. Every other column is kept in ``extra``. Paths are
relative to the folder. See ``docs/data.md``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from engine.birads import BIRADS_VALUES

REQUIRED_COLUMNS = ("id", "image")


class ManifestError(ValueError):
    """A manifest folder that cannot be read: says which file and row, and what to fix."""


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    """One row of a manifest. Paths are absolute; optional facts are ``None`` where not given."""

    dataset: str
    id: str
    image: Path
    mask: Path | None
    birads: str | None = None
    pathology: str | None = None
    patient: str | None = None
    pixel_size_mm: float | None = None
    fold: int | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def group(self) -> str:
        """Key that keeps one patient's images on one side of a split (the image id where no patient id)."""
        return f"{self.dataset}:{self.patient}" if self.patient else f"{self.dataset}:{self.id}"


def normalize_birads(value: str | None) -> str | None:
    """``'4a'`` -> ``'4A'``, ``''`` -> ``None``; raises ManifestError for a value outside BI-RADS 0-6."""
    if value is None or not value.strip():
        return None
    text = value.strip().upper()
    if text not in BIRADS_VALUES:
        raise ManifestError(f"unknown BI-RADS category {value!r}; expected one of {', '.join(BIRADS_VALUES)}")
    return text


def _optional(row: dict[str, str], key: str) -> str | None:
    value = (row.get(key) or "").strip()
    return value or None


def read_manifest(folder: str | Path) -> list[ManifestRecord]:
    """Read ``folder/manifest.csv`` into records, checking columns and that image files exist."""
    root = Path(folder).expanduser().resolve()
    path = root / "manifest.csv"
    if not path.is_file():
        raise ManifestError(f"{root} is not a dataset: no manifest.csv there (format: docs/data.md)")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ManifestError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(columns)}")
        known = {"id", "image", "mask", "birads", "pathology", "patient", "pixel_size_mm", "fold"}
        records = []
        for line, row in enumerate(reader, start=2):
            try:
                image = root / row["image"].strip()
                if not image.is_file():
                    raise ManifestError(f"image file {image} does not exist")
                mask_name = _optional(row, "mask")
                pixel = _optional(row, "pixel_size_mm")
                fold = _optional(row, "fold")
                records.append(
                    ManifestRecord(
                        dataset=root.name,
                        id=row["id"].strip(),
                        image=image,
                        mask=root / mask_name if mask_name else None,
                        birads=normalize_birads(row.get("birads")),
                        pathology=(_optional(row, "pathology") or "").lower() or None,
                        patient=_optional(row, "patient"),
                        pixel_size_mm=float(pixel) if pixel else None,
                        fold=int(fold) if fold else None,
                        extra={k: v for k, v in row.items() if k not in known and k is not None},
                    )
                )
            except (ManifestError, ValueError) as error:
                raise ManifestError(f"{path}, line {line}: {error}") from error
    if not records:
        raise ManifestError(f"{path} lists no images")
    return records


def load_gray(path: str | Path) -> np.ndarray:
    """Read an image file as 2-D uint8 grayscale; raises ManifestError if it cannot be decoded."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ManifestError(f"cannot read image {path}: missing, unreadable or not an image format")
    return image


def load_mask(record: ManifestRecord) -> np.ndarray | None:
    """The record's lesion mask as a bool array of the image's size, or ``None`` where it has none."""
    if record.mask is None:
        return None
    return load_gray(record.mask) > 127
