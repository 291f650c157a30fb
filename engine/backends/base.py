"""The one engine interface every inference backend implements, and its errors.

A backend wraps one model file (ONNX for ONNX Runtime, a serialized engine for TensorRT) and runs
batches through it. It knows its single input (name, shape with ``None`` for dynamic dimensions,
dtype), its output names and the model's metadata, and it checks every batch against the input spec
before running it, so a wrong shape fails with a message that shows what was expected.

This module imports numpy only: nothing here needs torch, ONNX Runtime or TensorRT.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np


class ModelLoadError(RuntimeError):
    """A model file is missing, truncated, corrupt or needs a runtime that is not installed.

    The message names the file, says what is wrong and how to get a good one.
    """


class InputSpecError(ValueError):
    """A batch does not match the model's input (name, rank, static dimensions or dtype)."""


def format_shape(shape: tuple[int | None, ...]) -> str:
    """``(None, 1, 288, 288)`` -> ``"(N, 1, 288, 288)"``: dynamic dimensions shown as ``N``."""
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"


class InferenceBackend(ABC):
    """A loaded model that runs batches.

    Attributes
    ----------
    name : backend name, e.g. ``"onnxruntime"`` or ``"tensorrt"``.
    path : the model file it was loaded from.
    input_name : name of the single model input.
    input_shape : input shape; ``None`` marks a dynamic dimension (the batch, at least).
    input_dtype : numpy dtype the input must have (float32 for every shipped model).
    output_names : names of the outputs, in model order; ``run`` returns the first.
    metadata : the model's string metadata (``sonograde.model``, ``sonograde.input_size``, ...).
    """

    name: str
    path: Path
    input_name: str
    input_shape: tuple[int | None, ...]
    input_dtype: np.dtype
    output_names: tuple[str, ...]
    metadata: dict[str, str]

    def check_input(self, batch: np.ndarray) -> np.ndarray:
        """Return ``batch`` as a C-contiguous array after checking it against the input spec.

        Raises InputSpecError with the expected and the given shape/dtype when rank, a static
        dimension or the dtype differ, or when the batch is empty. No silent casting: a float64 batch
        is an error, because a silent cast hides preprocessing mistakes.
        """
        if not isinstance(batch, np.ndarray):
            raise InputSpecError(
                f"{self.path.name}: input {self.input_name!r} must be a numpy array, "
                f"got {type(batch).__name__}"
            )
        expected = format_shape(self.input_shape)
        if batch.dtype != self.input_dtype:
            raise InputSpecError(
                f"{self.path.name}: input {self.input_name!r} expects dtype {self.input_dtype} "
                f"with shape {expected}, got dtype {batch.dtype} (shape {batch.shape})"
            )
        mismatch = batch.ndim != len(self.input_shape) or any(
            want is not None and want != got for want, got in zip(self.input_shape, batch.shape, strict=False)
        )
        if mismatch or batch.size == 0:
            raise InputSpecError(
                f"{self.path.name}: input {self.input_name!r} expects shape {expected}, "
                f"got {tuple(batch.shape)}" + (" (empty batch)" if batch.size == 0 and not mismatch else "")
            )
        return np.ascontiguousarray(batch)

    @abstractmethod
    def run_all(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch; return every output by name (checked input, see ``check_input``)."""

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch; return the first output (``output_names[0]``)."""
        return self.run_all(batch)[self.output_names[0]]

    def describe(self) -> str:
        """One line: backend, file, input spec and model id, for logs and error messages."""
        model_id = self.metadata.get("sonograde.model_id", "?")
        return (
            f"{self.name}: {self.path.name} input {self.input_name} {format_shape(self.input_shape)} "
            f"{self.input_dtype} -> {', '.join(self.output_names)} (model_id {model_id})"
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"
