"""Model inputs made from frames exactly as inference makes them.

ROI-CNN: ``engine.preprocess.roi_input`` of the frame. Grader: the refined ROI that the real first stage
produces in the live pipeline (``TwoStageGrader.locate`` + ``refine``: ROI-CNN, area filter, Chan–Vese),
cut out by ``engine.preprocess.grader_input`` with the grader's own size, margin, mask channel and view.
Frames in which the first stage finds no lesion give no grader input (the pipeline would not grade them
either).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calibration.frames import LabelledFrame


@dataclass(frozen=True)
class ModelInputs:
    """A stack of model inputs and the frames they came from.

    batch: float32 (N, C, S, S). keys: the frame of each row. skipped: frames that gave no input
    (grader: no lesion found by the first stage).
    """

    batch: np.ndarray
    keys: tuple[str, ...]
    skipped: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.keys)


def _progress(items: Iterable, total: int | None, label: str):
    from tqdm import tqdm

    return tqdm(items, total=total, desc=label, unit="frame", file=sys.stderr, leave=False,
                disable=not sys.stderr.isatty())


def roi_inputs(frames: Iterable[LabelledFrame], *, size: int, total: int | None = None) -> ModelInputs:
    """``roi_input`` of every frame, stacked: (N, 1, size, size) float32."""
    from engine.preprocess import roi_input

    rows, keys = [], []
    for frame in _progress(frames, total, "ROI inputs"):
        rows.append(roi_input(frame.image, size))
        keys.append(frame.key)
    if not rows:
        raise ValueError("no frames to make ROI-CNN inputs from")
    return ModelInputs(np.stack(rows).astype(np.float32, copy=False), tuple(keys))


def grader_inputs(frames: Iterable[LabelledFrame], *, roi_model: str | os.PathLike,
                  grader_model: str | os.PathLike, threads: int | None = None,
                  total: int | None = None) -> ModelInputs:
    """Refined-ROI grader inputs from the real first stage with the FP32 ``roi_model``.

    ``grader_model`` supplies the grader's input size, margin, mask channel and view (its metadata, read by
    ``engine.grader.TwoStageGrader``); it is not run. Raises ValueError if no frame yields a lesion.
    """
    from engine.backends import load_backend
    from engine.grader import TwoStageGrader
    from engine.preprocess import to_gray_u8

    stages = TwoStageGrader(load_backend(Path(roi_model), threads=threads),
                            load_backend(Path(grader_model), threads=threads))
    rows, keys, skipped = [], [], []
    for frame in _progress(frames, total, "first stage (ROI-CNN + refine)"):
        gray = to_gray_u8(frame.image)
        refined = stages.refine(gray, stages.locate(gray))
        if not refined.lesion_found:
            skipped.append(frame.key)
            continue
        # The same call TwoStageGrader.classify makes, with the same grader parameters.
        rows.append(stages.grader_input(gray, refined.refined_mask))
        keys.append(frame.key)
    if not rows:
        raise ValueError(f"the first stage ({roi_model}) found no lesion in any of {len(skipped)} frame(s); "
                         "no grader inputs to calibrate or verify with")
    return ModelInputs(np.stack(rows).astype(np.float32, copy=False), tuple(keys), tuple(skipped))


def default_roi_model(*candidates: str | os.PathLike) -> Path | None:
    """The FP32 ROI-CNN beside any of the given model files (``roi_cnn.onnx`` in the same folder)."""
    for candidate in candidates:
        path = Path(candidate).parent / "roi_cnn.onnx"
        if path.is_file():
            return path
    return None


def model_inputs(info, frames: Iterable[LabelledFrame], *, roi_model: str | os.PathLike | None = None,
                 threads: int | None = None, total: int | None = None) -> ModelInputs:
    """Inputs for the model described by ``info`` (``calibration.modelinfo.ModelInfo``) from ``frames``.

    For a grader, ``roi_model`` is the FP32 ROI-CNN of the first stage (default: ``roi_cnn.onnx`` beside
    the grader); ValueError if there is none.
    """
    if info.kind == "roi":
        return roi_inputs(frames, size=info.input_size, total=total)
    roi_path = Path(roi_model) if roi_model is not None else default_roi_model(info.path)
    if roi_path is None or not roi_path.is_file():
        raise ValueError(
            f"grader inputs are refined ROIs from the first stage, which needs the FP32 ROI-CNN: none found "
            f"beside {info.path} ({info.path.parent / 'roi_cnn.onnx'}); pass --roi-model PATH"
        )
    return grader_inputs(frames, roi_model=roi_path, grader_model=info.path, threads=threads, total=total)
