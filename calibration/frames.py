"""Where calibration and verification frames come from: manifest datasets (with a patient-disjoint split
side) or a live frame source. Frames are 2-D uint8 grayscale images, as ``capture`` delivers them.

Nothing here writes frames anywhere: they stay in memory for the duration of one command.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.data.manifest import ManifestRecord, load_gray, read_manifest

SPLIT_SIDES = ("all", "train", "val", "test", "trainval")


@dataclass(frozen=True)
class LabelledFrame:
    """One frame with where it came from (``dataset:id`` or ``source#index``); no patient data beyond it."""

    key: str
    image: np.ndarray


def select_records(folders: Sequence[str | os.PathLike], *, split: str = "all", count: int | None = None,
                   seed: int = 0, lesions_only: bool = True) -> list[ManifestRecord]:
    """Records of the manifest datasets in ``folders`` on one side of the project split.

    split: ``all``, or ``train``/``val``/``test``/``trainval`` of ``engine.splits.make_split`` with its
    default configuration (the split the shipped models were trained with; see ``models/*.md``).
    count: at most this many, drawn at random with ``seed`` (default: all). lesions_only: skip images
    without a lesion mask (normal cases), since calibration and the gate are about lesion frames.
    Raises ValueError for an unknown split side or an empty selection.
    """
    if split not in SPLIT_SIDES:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_SIDES)}")
    records: list[ManifestRecord] = []
    for folder in folders:
        records.extend(read_manifest(folder))
    if split != "all":
        from engine.splits import make_split

        parts = make_split(records)
        records = parts.train + parts.val if split == "trainval" else list(getattr(parts, split))
    if lesions_only:
        records = [r for r in records if r.mask is not None]
    if not records:
        where = ", ".join(map(str, folders))
        raise ValueError(f"no images with lesion masks on the {split!r} side of {where}")
    records.sort(key=lambda r: (r.dataset, r.id))
    if count is not None and count < len(records):
        records = random.Random(seed).sample(records, count)
    return records


def dataset_frames(records: Sequence[ManifestRecord]) -> Iterator[LabelledFrame]:
    """Load each record's image as grayscale uint8, lazily."""
    for record in records:
        yield LabelledFrame(f"{record.dataset}:{record.id}", load_gray(record.image))


def source_frames(spec: str, count: int, *, stride: int = 1) -> list[LabelledFrame]:
    """Up to ``count`` frames from a ``capture`` source (camera, video, folder, DICOM, phantom), taking
    every ``stride``-th frame so a video clip is spread over more of its length."""
    from capture.sources import open_source

    frames: list[LabelledFrame] = []
    source = open_source(spec, realtime=False)  # as fast as it decodes: no pacing for calibration
    try:
        for index, frame in enumerate(_iterate(source)):
            if index % stride:
                continue
            frames.append(LabelledFrame(f"{spec}#{frame.index}", frame.image))
            if len(frames) >= count:
                break
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
    if not frames:
        raise ValueError(f"source {spec!r} delivered no frames")
    return frames


def _iterate(source: object) -> Iterator:
    """Frames of a capture source (iterable of Frame, or an object with ``read()`` returning None at end)."""
    if hasattr(source, "__iter__"):
        yield from source  # type: ignore[misc]
        return
    read = source.read  # type: ignore[attr-defined]
    while (frame := read()) is not None:
        yield frame


def describe_data(folders: Sequence[str | os.PathLike], split: str, n: int) -> str:
    """One line for reports: which folders and split side the ``n`` frames came from."""
    names = ", ".join(Path(f).name for f in folders)
    return f"{n} frame(s) from {names} (split side: {split})"
