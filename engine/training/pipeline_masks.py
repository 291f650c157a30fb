"""The masks the two-stage pipeline finds on training images, for the G-CNN's mask channel.

In use, the G-CNN's mask channel (and, in the crop view, its box) comes from the ROI-CNN and the
refinement (area filter, Chan–Vese), whose outline is smoother and a few pixels off a radiologist's
annotation, and which now and then picks another dark region. A grader trained on annotated masks learns
their outline too, and loses accuracy when it gets the pipeline's instead (0.07-0.10 of five-way
accuracy between annotated and pipeline masks on cross-validated BrEaST cases, misses counted wrong;
commit ed6d351, docs/research.md). ``sonograde train
grader --train-masks pipeline --roi-model M`` trains it on what it will see: each training and validation
image goes once through the pipeline's stages 1-2 exactly as ``engine.training.evaluate`` runs them, and
the refined mask replaces the annotation where it found the annotated lesion (Dice >= ``min_dice``);
where it missed it or found another region, the annotation stays (a mask on the wrong region would teach
the lesion's label from tissue that is not the lesion).

The ROI-CNN must not have been trained on the images whose masks it makes here, or its masks are better
than in use (the shipped ROI-CNN never saw BrEaST-Lesions_USG; it did see BUS-BRA folds 2-5).
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from engine.data.datasets import GraderSample


@dataclass(frozen=True)
class PipelineMaskStats:
    """How many samples got a pipeline mask. total: samples; found: the pipeline found any lesion;
    used: its mask overlaps the annotation with Dice >= min_dice; mean_dice: over the found ones."""

    total: int
    found: int
    used: int
    mean_dice: float

    def describe(self) -> str:
        return (f"pipeline masks: lesion found in {self.found} of {self.total} training/validation images, "
                f"used for {self.used} (Dice with the annotation >= threshold; mean Dice of found "
                f"{self.mean_dice:.3f}); the others keep their annotated mask")


def attach_pipeline_masks(samples: list[GraderSample], roi_model: str | Path, *, min_dice: float = 0.3,
                          cache_dir: str | Path | None = None, threads: int = 2,
                          progress: bool = True) -> tuple[list[GraderSample], PipelineMaskStats]:
    """``samples`` with ``pipeline_mask`` set where the ROI-CNN ``roi_model`` (ONNX) plus refinement finds
    the annotated lesion (Dice >= ``min_dice``, 0-1, default 0.3), else None; and the counts.

    Masks are cached in ``cache_dir`` (one file per model SHA-256 and ``min_dice``, one entry per sample
    id and size), so the cross-validation folds of one dataset compute each image's mask once."""
    from tqdm import tqdm

    from engine.backends.base import ModelLoadError
    from engine.backends.ort import OnnxRuntimeBackend, check_model_file
    from engine.checksums import sha256_file
    from engine.training.common import TrainingError
    from engine.training.evaluate import pipeline_mask
    from refine.metrics import dice

    model = Path(roi_model)
    try:
        check_model_file(model)
    except ModelLoadError as error:
        raise TrainingError(f"--roi-model: {error}") from error
    tag = hashlib.sha1(f"{sha256_file(model)}|{min_dice}".encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"pipeline-masks-{tag}.pkl" if cache_dir else None
    known: dict[str, tuple] = {}  # "id|shape" -> (packed mask or None, Dice or nan)
    if cache is not None and cache.is_file():
        with cache.open("rb") as handle:
            known = pickle.load(handle)
    todo = [s for s in samples if f"{s.id}|{s.image.shape}" not in known]
    if todo:
        try:
            session = OnnxRuntimeBackend(model, threads=threads, providers=["CPUExecutionProvider"]).session
        except ModelLoadError as error:
            raise TrainingError(f"--roi-model: {error}") from error
        for s in tqdm(todo, desc="pipeline masks", disable=not progress, leave=False):
            found = pipeline_mask(session, s.image)
            overlap = dice(found, s.mask) if found.any() else float("nan")
            known[f"{s.id}|{s.image.shape}"] = (np.packbits(found) if overlap >= min_dice else None, overlap)
        if cache is not None:  # a run in parallel may write its own at the same time: the last one wins
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            with tmp.open("wb") as handle:
                pickle.dump(known, handle, protocol=pickle.HIGHEST_PROTOCOL)
            tmp.replace(cache)
    masks = [known[f"{s.id}|{s.image.shape}"][0] for s in samples]
    dices = [known[f"{s.id}|{s.image.shape}"][1] for s in samples]
    out = []
    for s, packed in zip(samples, masks, strict=True):
        mask = None
        if packed is not None:
            mask = np.unpackbits(packed, count=s.mask.size).reshape(s.mask.shape).astype(bool)
        out.append(replace(s, pipeline_mask=mask))
    found_dice = [d for d in dices if not np.isnan(d)]
    stats = PipelineMaskStats(total=len(samples), found=len(found_dice),
                              used=sum(m is not None for m in masks),
                              mean_dice=float(np.mean(found_dice)) if found_dice else float("nan"))
    return out, stats
