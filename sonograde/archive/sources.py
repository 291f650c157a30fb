"""Which images an archive's sources name: image files, folders (searched recursively for images and
DICOM files, with or without a suffix) and dataset folders with a manifest.csv (their listed images, ids
and pixel sizes). Nothing is read here beyond file names, manifests and the 132-byte DICOM preamble.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sonograde.image_files import IMAGE_SUFFIXES

MANIFEST = "manifest.csv"
# A DICOM media directory's index, not an image
NOT_IMAGES = frozenset({"dicomdir"})


@dataclass(frozen=True, slots=True)
class ArchiveItem:
    """One image file to grade.

    path : the file, as found from the sources (the table's key).
    id : the manifest's id, or None (then the DICOM SOP Instance UID or the file's stem).
    pixel_size_mm : the manifest's pixel size in mm, or None.
    out_stem : unique file-name stem for ``--out`` masks and overlays (two a/1.png, b/1.png differ).
    """

    path: str
    id: str | None = None
    pixel_size_mm: float | None = None
    out_stem: str = ""


def _is_candidate(path: Path) -> bool:
    """An image by its suffix, or a suffix-less file that says it is DICOM (archives often name them
    by number, IM000123)."""
    name = path.name.lower()
    if name.startswith(".") or name in NOT_IMAGES or name == MANIFEST:
        return False
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    if path.suffix.lower() in ("", ".dicom") or path.suffix[1:].isdigit():  # 1.2.840.113619... UIDs as names
        from capture.sources import is_dicom_file

        return is_dicom_file(path)
    return False


def _from_manifest(folder: Path) -> list[ArchiveItem]:
    from engine.data.manifest import ManifestError, read_manifest

    try:
        records = read_manifest(folder)
    except ManifestError as error:
        raise ValueError(str(error)) from None
    return [ArchiveItem(str(r.image), r.id, r.pixel_size_mm) for r in records]


def _walk(folder: Path) -> list[ArchiveItem]:
    """Images under ``folder``, sorted; a folder with a manifest.csv gives its listed images instead of
    its files (the masks beside them are not images to grade)."""
    if (folder / MANIFEST).is_file():
        return _from_manifest(folder)
    items: list[ArchiveItem] = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return [ArchiveItem(str(folder))]  # unreadable folder: an error row says so
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=True):
            items.extend(_walk(path))
        elif _is_candidate(path):
            items.append(ArchiveItem(str(path)))
    return items


def discover(sources: list[str]) -> list[ArchiveItem]:
    """The images named by ``sources``, in order, each once, with unique ``out_stem`` values.

    A file is taken as given (a missing or unreadable one becomes an error row when graded); a folder is
    searched recursively. Raises ValueError (one line) for a damaged manifest.csv.
    """
    found: list[ArchiveItem] = []
    for source in sources:
        path = Path(source)
        found.extend(_walk(path) if path.is_dir() else [ArchiveItem(str(path))])
    unique: list[ArchiveItem] = []
    seen: set[str] = set()
    stems: set[str] = set()
    for item in found:
        if item.path in seen:
            continue
        seen.add(item.path)
        unique.append(ArchiveItem(item.path, item.id, item.pixel_size_mm,
                                  unique_stem(Path(item.path).stem, stems)))
    return unique


def unique_stem(stem: str, used: set[str]) -> str:
    """``stem``, or ``stem_2``, ``stem_3``, ... when taken: two inputs with one stem (a/1.png, b/1.png) must
    not overwrite each other's outputs. Adds the answer to ``used``."""
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}_{n}"
    used.add(candidate)
    return candidate
