"""ONNX Runtime backend: the default, on the CPU, or on CUDA / TensorRT execution providers where present.

Threads are set explicitly. The live pipeline runs the ROI-CNN, the refinement and the G-CNN in
separate threads on a small CPU, so each session gets few intra-op threads (``DEFAULT_THREADS``) and one
inter-op thread; more threads per session only make the stages fight for the same cores (measured in
``docs/inference.md``). ONNX Runtime releases the GIL while it runs, so stages really overlap.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine import contract
from engine.backends.base import InferenceBackend, ModelLoadError

# One intra-op thread per session: with two stages running concurrently on two cores this gave the best
# pipeline throughput (see docs/inference.md); a lone `sonograde grade` may pass threads=2.
DEFAULT_THREADS = 1
_TELEMETRY_OFF = False

_ONNX_TYPES: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(bool)": np.dtype(np.bool_),
}

HOW_TO_FIX = (
    "reinstall sonograde (or `git checkout models/`) to get the shipped models back, or re-export your "
    "own with `sonograde export` (see `sonograde export --help`)"
)


def onnxruntime_module() -> Any:
    """``onnxruntime``, with its telemetry events turned off (process-wide, before any session exists).

    Every ONNX Runtime session in Sonograde is made through this module (``OnnxRuntimeBackend``,
    ``cpu_session``), so none runs with telemetry on; calibration's quantizer calls it first too.
    """
    import onnxruntime as ort

    global _TELEMETRY_OFF
    if not _TELEMETRY_OFF:
        ort.disable_telemetry_events()
        _TELEMETRY_OFF = True
    return ort


def cpu_session(path: str | os.PathLike, options: Any = None) -> Any:
    """A plain CPU ``onnxruntime.InferenceSession`` (telemetry off), for checks and evaluation outside
    the live engine (``OnnxRuntimeBackend`` is the engine's own)."""
    ort = onnxruntime_module()
    return ort.InferenceSession(str(path), options or ort.SessionOptions(),
                                providers=["CPUExecutionProvider"])


def tensorrt_cache_dir() -> Path:
    """Where the TensorRT execution provider keeps built engines: $SONOGRADE_CACHE/ort-tensorrt, else
    ~/.cache/sonograde/ort-tensorrt (building an engine takes long; the cache makes the next start fast)."""
    base = os.environ.get("SONOGRADE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sonograde")
    return Path(base) / "ort-tensorrt"


def default_providers() -> list[str | tuple[str, dict[str, str]]]:
    """GPU execution providers present in this onnxruntime build, then the CPU provider.

    TensorRT gets an engine cache; precision comes from the model itself (FP16 / Q/DQ INT8 ONNX), so
    its fp16/int8 flags stay off. (The GPU providers are not exercised on the CPU-only development
    machines.)
    """
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    providers: list[str | tuple[str, dict[str, str]]] = []
    if "TensorrtExecutionProvider" in available:
        cache = tensorrt_cache_dir()
        try:
            cache.mkdir(parents=True, exist_ok=True)
            providers.append(("TensorrtExecutionProvider", {
                "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
            }))
        except OSError:  # read-only home: TensorRT still runs, it just rebuilds engines at every start
            providers.append("TensorrtExecutionProvider")
    if "CUDAExecutionProvider" in available:
        providers.append("CUDAExecutionProvider")
    providers.append("CPUExecutionProvider")
    return providers


def session_options(ort: Any, threads: int) -> Any:
    """The engine's ``SessionOptions``, set up for a small CPU shared by the pipeline's stages.

    - ``threads`` intra-op threads; with 1 (the default) the calling stage thread does the work and no
      ONNX Runtime thread pool exists at all.
    - Sequential execution and one inter-op thread: these models are one chain of operators, so a
      parallel executor would only add a thread pool that competes with the other stages.
    - No spinning, intra-op or inter-op: a spinning worker burns a core between runs, and on a two-core
      cart that core is the one the other stages (or the scanner's own software) need.
    - Memory arena and memory pattern on: input shapes are fixed, so after the first run every run reuses
      the same planned buffers instead of allocating (allocation is a source of latency spikes).
    - Full graph optimization (operator fusion), and errors only in the log.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = True
    options.log_severity_level = 3  # errors only: missing-CUDA warnings are noise for CPU users
    return options


def check_model_file(path: Path) -> None:
    """Raise ModelLoadError for a missing, empty or Git-LFS-pointer model file (cheap checks first)."""
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}. {HOW_TO_FIX}")
    if not path.is_file():
        raise ModelLoadError(f"model path is not a file: {path}")
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(f"model file is empty (0 bytes): {path}. {HOW_TO_FIX}")
    with path.open("rb") as f:
        head = f.read(64)
    if head.startswith(b"version https://git-lfs"):
        raise ModelLoadError(
            f"model file is a Git LFS pointer, not the model: {path}. Run `git lfs pull`, or {HOW_TO_FIX}"
        )


class OnnxRuntimeBackend(InferenceBackend):
    """One ``onnxruntime.InferenceSession`` behind the engine interface.

    Parameters
    ----------
    path : the ``.onnx`` file.
    threads : intra-op threads (default ``DEFAULT_THREADS``); inter-op is always 1 (sequential graph).
    providers : execution providers in preference order (default: TensorRT, CUDA where the installed
        onnxruntime has them, then CPU). ``providers_used`` says what the session actually got.
    """

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None,
                 providers: Sequence[str | tuple[str, dict]] | None = None) -> None:
        ort = onnxruntime_module()
        self.path = Path(path)
        check_model_file(self.path)
        self.threads = int(threads) if threads is not None else DEFAULT_THREADS
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        options = session_options(ort, self.threads)
        wanted = list(providers) if providers is not None else default_providers()
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(
                f"cannot load model {self.path} ({self.path.stat().st_size} bytes): it is truncated, corrupt "
                f"or not an ONNX model (onnxruntime: {detail[:300]}). {HOW_TO_FIX}"
            ) from exc
        self.providers_used: tuple[str, ...] = tuple(self.session.get_providers())

        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelLoadError(
                f"model {self.path} has {len(inputs)} inputs ({[i.name for i in inputs]}); "
                "sonograde models have exactly one"
            )
        spec = inputs[0]
        if spec.type not in _ONNX_TYPES:
            raise ModelLoadError(f"model {self.path}: unsupported input type {spec.type}")
        self.input_name = spec.name
        # ONNX dims are ints, symbolic names (str) or None; everything not a positive int is dynamic.
        self.input_shape = tuple(d if isinstance(d, int) and d > 0 else None for d in spec.shape)
        self.input_dtype = _ONNX_TYPES[spec.type]
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.metadata = contract.read_metadata(self.session)

    def run_all(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = self.check_input(batch)
        outputs = self.session.run(None, {self.input_name: batch})
        return dict(zip(self.output_names, outputs, strict=True))

    def describe(self) -> str:
        return f"{super().describe()} [{self.providers_used[0]}, {self.threads} thread(s)]"
