"""Training datasets for the ROI-CNN and the G-CNN, from manifest folders and from the phantom.

Decoding thousands of JPEGs every epoch would dominate training on two cores, so the decoded arrays are
cached once per record set (``cache_dir``, an ``.npz`` keyed by the files' paths, sizes and times):
- ROI-CNN: every image resized to 288x288 uint8 (the same resize as ``engine.preprocess.roi_input``) and
  its mask resized the same way (area interpolation, > 50 % = lesion);
- G-CNN: every lesion image at its original size (uint8) with its mask, because the crop is
  computed per sample (translated box) by ``engine.preprocess.grader_input``.
Caches may hold derived patient images: keep ``cache_dir`` outside the repository.

Grader labels: index 0..4 = BI-RADS "3", "4A", "4B", "4C", "5". Each sample carries a 5-element 0/1
``allowed`` vector: one-hot for a five-way label; "4" (BUS-BRA, no sub-category) allows 4A, 4B and 4C
(loss on their summed probability); "2" is merged into "3" (benign finding, the lowest category the
grader outputs); "1" (normal, no lesion) and cases without a mask are excluded; "6" is graded as "5".
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.birads import CATEGORIES as GRADER_CATEGORIES
from engine.data.manifest import ManifestRecord, load_gray, load_mask, read_manifest
from engine.preprocess import ROI_INPUT_SIZE, to_gray_u8

# BI-RADS value -> allowed grader categories (indices into GRADER_CATEGORIES).
BIRADS_TO_ALLOWED: dict[str, tuple[int, ...]] = {
    "2": (0,), "3": (0,), "4A": (1,), "4B": (2,), "4C": (3,), "4": (1, 2, 3), "5": (4,), "6": (4,),
}


def load_records(folders: Sequence[str | Path]) -> list[ManifestRecord]:
    """All records of the given manifest folders (ManifestError names a bad folder)."""
    records: list[ManifestRecord] = []
    for folder in folders:
        records.extend(read_manifest(folder))
    return records


def _cache_key(records: Sequence[ManifestRecord], tag: str) -> str:
    digest = hashlib.sha1(tag.encode())
    for r in records:
        for path in (r.image, r.mask):
            if path is not None:
                stat = path.stat()
                digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def resize_to(image: np.ndarray, size: int) -> np.ndarray:
    """Square resize with the interpolation ``roi_input`` uses (area when shrinking)."""
    interpolation = cv2.INTER_AREA if min(image.shape[:2]) > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a bool mask to size x size: bool, True where more than half of the area is lesion."""
    return cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) > 0.5


@dataclass
class RoiArrays:
    """ROI-CNN training arrays: images uint8 (N, S, S), masks bool (N, S, S), record ids."""

    images: np.ndarray
    masks: np.ndarray
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def load_roi_arrays(records: Sequence[ManifestRecord], *, size: int = ROI_INPUT_SIZE,
                    cache_dir: str | Path | None = None, progress: bool = True) -> RoiArrays:
    """Decode and resize every record (normal images get an empty mask), cached in ``cache_dir``."""
    from tqdm import tqdm

    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"roi-{size}-{_cache_key(records, f'roi{size}')}.npz"
        if cache.is_file():
            data = np.load(cache)
            return RoiArrays(data["images"], data["masks"], [str(i) for i in data["ids"]])
    images = np.zeros((len(records), size, size), np.uint8)
    masks = np.zeros((len(records), size, size), bool)
    for index, record in enumerate(tqdm(records, desc=f"decode {size}px", disable=not progress,
                                        leave=False)):
        gray = load_gray(record.image)
        images[index] = resize_to(gray, size)
        mask = load_mask(record)
        if mask is not None:
            if mask.shape != gray.shape:
                raise ValueError(f"{record.dataset}/{record.id}: mask {mask.shape} != image {gray.shape}")
            masks[index] = resize_mask(mask, size)
    ids = [f"{r.dataset}/{r.id}" for r in records]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")  # two runs may fill one cache
        np.savez(tmp, images=images, masks=masks, ids=np.array(ids))
        tmp.replace(cache)
    return RoiArrays(images, masks, ids)


def grader_allowed(birads: str | None) -> np.ndarray | None:
    """The 5-element float32 0/1 vector of categories a label allows, or None if the case is excluded."""
    if birads is None or birads not in BIRADS_TO_ALLOWED:
        return None
    allowed = np.zeros(len(GRADER_CATEGORIES), np.float32)
    allowed[list(BIRADS_TO_ALLOWED[birads])] = 1.0
    return allowed


@dataclass
class GraderSample:
    """One lesion for the G-CNN: original-size uint8 image, bool mask, allowed categories, pathology
    (1 malignant, 0 benign, -1 unknown), source id, and optionally the mask the two-stage pipeline finds
    for the same lesion (``engine.training.pipeline_masks``; None where not computed or not usable)."""

    image: np.ndarray
    mask: np.ndarray
    allowed: np.ndarray
    malignant: int
    id: str
    pipeline_mask: np.ndarray | None = None


def grader_usable(record: ManifestRecord) -> bool:
    """True if the record can train/evaluate the grader (has a mask and a gradable BI-RADS)."""
    return record.mask is not None and grader_allowed(record.birads) is not None


def load_grader_samples(records: Sequence[ManifestRecord], *, cache_dir: str | Path | None = None,
                        max_side: int = 512, progress: bool = True) -> list[GraderSample]:
    """Decode every usable record (see ``grader_usable``) at its size, shrunk so its longer side is at
    most ``max_side`` px (crops are resized to S <= 128 anyway; this keeps the cache small)."""
    import pickle

    from tqdm import tqdm

    usable = [r for r in records if grader_usable(r)]
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"grader-{max_side}-{_cache_key(usable, f'grader{max_side}')}.pkl"
        if cache.is_file():
            with cache.open("rb") as handle:
                return pickle.load(handle)
    samples = []
    for record in tqdm(usable, desc="decode lesions", disable=not progress, leave=False):
        gray = load_gray(record.image)
        mask = load_mask(record)
        assert mask is not None
        scale = max_side / max(gray.shape)
        if scale < 1.0:
            size = (round(gray.shape[1] * scale), round(gray.shape[0] * scale))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.5
        if not mask.any():
            continue
        allowed = grader_allowed(record.birads)
        assert allowed is not None
        malignant = {"malignant": 1, "benign": 0}.get(record.pathology or "", -1)
        samples.append(GraderSample(gray, mask, allowed, malignant, f"{record.dataset}/{record.id}"))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")  # two runs may fill one cache
        with tmp.open("wb") as handle:
            pickle.dump(samples, handle, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(cache)
    return samples


# ------------------------------------------------------------------------------------------- phantom

PHANTOM_CATEGORY_ALIASES = {"4a": "4A", "4b": "4B", "4c": "4C"}


def phantom_samples(count: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, str | None]]:
    """``count`` synthetic (gray uint8 image, bool mask, BI-RADS category or None) from
    ``capture.phantom.PhantomScanner(seed).sample()``. Raises RuntimeError if the phantom is missing."""
    try:
        from capture.phantom import PhantomScanner
    except ImportError as error:  # the phantom lands in another issue
        raise RuntimeError(f"phantom data needs capture.phantom.PhantomScanner: {error}") from error
    scanner = PhantomScanner(seed)
    out = []
    for _ in range(count):
        sample = scanner.sample()
        get = sample.get if isinstance(sample, dict) else lambda k, s=sample: getattr(s, k, None)
        image = to_gray_u8(np.asarray(get("image")))
        mask = np.asarray(get("mask")).astype(bool)
        category = get("category")
        if category is not None:
            category = PHANTOM_CATEGORY_ALIASES.get(str(category), str(category).upper())
        out.append((image, mask, category))
    return out


def phantom_roi_arrays(count: int, seed: int = 0, size: int = ROI_INPUT_SIZE) -> RoiArrays:
    """Phantom samples as ROI-CNN arrays."""
    samples = phantom_samples(count, seed)
    images = np.stack([resize_to(image, size) for image, _, _ in samples])
    masks = np.stack([resize_mask(mask, size) for _, mask, _ in samples])
    return RoiArrays(images, masks, [f"phantom/{seed}-{i}" for i in range(count)])


def phantom_grader_samples(count: int, seed: int = 0) -> list[GraderSample]:
    """Phantom samples with a lesion and a gradable category, as grader samples."""
    out = []
    for index, (image, mask, category) in enumerate(phantom_samples(count, seed)):
        allowed = grader_allowed(category)
        if allowed is None or not mask.any():
            continue
        malignant = 1 if category in ("4C", "5") else 0
        out.append(GraderSample(image, mask, allowed, malignant, f"phantom/{seed}-{index}"))
    return out
