"""Inference backends behind one interface, and ``load_backend`` that picks one for a model file.

>>> from engine.backends import load_backend
>>> roi = load_backend("models/roi_cnn.onnx")          # ONNX Runtime, CPU (CUDA/TensorRT EP where present)
>>> prob = roi.run(batch)                                # batch: float32 (N, 1, 288, 288)

``.onnx`` files run on ONNX Runtime. ``.plan`` / ``.engine`` files are serialized TensorRT engines, run by
``engine.backends.tensorrt.TensorRTBackend`` (imported only when such a file is loaded, and only where
TensorRT and cuda-python are installed). No backend imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from engine.backends.base import InferenceBackend, InputSpecError, ModelLoadError, format_shape

__all__ = [
    "BACKENDS",
    "InferenceBackend",
    "InputSpecError",
    "ModelLoadError",
    "format_shape",
    "load_backend",
]

BACKENDS = ("auto", "onnxruntime", "tensorrt")
TENSORRT_SUFFIXES = (".plan", ".engine")


def load_backend(path: str | os.PathLike, *, backend: str = "auto", threads: int | None = None,
                 providers: Sequence[str] | None = None) -> InferenceBackend:
    """Load ``path`` with the named backend; ``"auto"`` chooses by file extension.

    Parameters
    ----------
    path : model file: ``.onnx`` (ONNX Runtime) or ``.plan`` / ``.engine`` (TensorRT).
    backend : ``"auto"`` (by extension), ``"onnxruntime"`` or ``"tensorrt"``.
    threads : ONNX Runtime intra-op threads (default 1, see ``engine.backends.ort.DEFAULT_THREADS``).
    providers : ONNX Runtime execution providers in preference order (default: GPU ones present, then CPU).

    Raises ModelLoadError for a missing or corrupt file or a backend that is not installed, ValueError for
    an unknown backend name.
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "tensorrt" if path.suffix.lower() in TENSORRT_SUFFIXES else "onnxruntime"
    if backend == "tensorrt":
        return _load_tensorrt(path)
    if path.suffix.lower() in TENSORRT_SUFFIXES:
        raise ModelLoadError(
            f"{path} is a TensorRT engine; ONNX Runtime cannot run it. Use backend 'tensorrt' (or 'auto') "
            "on a machine with an NVIDIA GPU, or load the .onnx model it was built from"
        )
    from engine.backends.ort import OnnxRuntimeBackend

    return OnnxRuntimeBackend(path, threads=threads, providers=providers)


def _load_tensorrt(path: Path) -> InferenceBackend:
    """Import the TensorRT backend only now: it needs tensorrt and cuda-python, which most machines lack."""
    if path.suffix.lower() == ".onnx":
        raise ModelLoadError(
            f"{path} is an ONNX model; the TensorRT backend runs serialized engines. Build one with "
            f"`sonograde build-engine --onnx {path} --out {path.with_suffix('.plan')}`, or use backend "
            "'onnxruntime'"
        )
    try:
        from engine.backends.tensorrt import TensorRTBackend
    except ImportError as exc:
        raise ModelLoadError(
            f"cannot load TensorRT engine {path}: the TensorRT backend is not available here ({exc}). "
            "It needs an NVIDIA GPU and `pip install 'sonograde[tensorrt]'`; on a CPU machine use the "
            ".onnx model with ONNX Runtime instead"
        ) from exc
    return TensorRTBackend(path)
