"""Build a TensorRT engine from an ONNX model: strongly typed, one optimization profile, a timing cache.

Precision lives in the ONNX (TensorRT 10.12 deprecated and TensorRT 11 removed the FP16/INT8 builder
flags and implicit INT8 calibration): an explicit Q/DQ model (``calibrate int8 --target tensorrt``) gives
an INT8 engine, an FP16-typed model (``calibrate fp16``) an FP16 engine, the FP32 model a TF32/FP32 one.
The network is created STRONGLY_TYPED where the flag exists (TensorRT 10); TensorRT 11 networks are
always strongly typed.

The build runs on CUDA device ``BuildConfig.device``: its primary context is pushed on the building thread
for the whole build, so the engine is built for the GPU the sidecar names (not whichever device happens
to be current). TensorRT's log goes to standard error, so standard output holds only what the command
prints (``sonograde build-engine`` prints one JSON object).

The dynamic batch dimension gets one optimization profile: min 1, opt ``opt_batch``, max ``max_batch``.
The timing cache (``tensorrt.timing.cache`` beside the engine by default) is read before and written after
the build, so rebuilding the same layers on the same GPU is quick. A cache TensorRT refuses (written by
another TensorRT version or for another GPU, or damaged) is set aside with a note on stderr and the build
starts from an empty cache, which then replaces it. The sidecar (``M.plan.json``,
``engine.backends.tensorrt_sidecar``) records what the engine is tied to and the engine file's SHA-256.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from engine.backends.tensorrt_sidecar import (
    EngineSidecar,
    TensorProfile,
    detect_environment,
    sha256_file,
    write_sidecar,
)

TIMING_CACHE_NAME = "tensorrt.timing.cache"


class EngineBuildError(RuntimeError):
    """The ONNX could not be parsed or the engine could not be built; the message has TensorRT's errors."""


@dataclass(frozen=True)
class BuildConfig:
    """max_batch / opt_batch: profile of the batch dimension. workspace_mb: builder workspace limit (MiB).
    timing_cache: cache file (default ``tensorrt.timing.cache`` beside the engine). device: CUDA device the
    engine is built on and for."""

    max_batch: int = 4
    opt_batch: int = 1
    workspace_mb: int = 1024
    timing_cache: Path | None = None
    device: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ValueError(f"need 1 <= opt batch ({self.opt_batch}) <= max batch ({self.max_batch})")
        if self.workspace_mb < 16:
            raise ValueError(f"workspace of {self.workspace_mb} MiB is too small (at least 16)")


def _profile_shapes(name: str, dims: tuple[int, ...], config: BuildConfig) -> TensorProfile:
    """min/opt/max shapes for an input whose only dynamic dimension may be the batch (first)."""
    if any(d < 0 for d in dims[1:]):
        raise EngineBuildError(f"input {name!r} has dynamic non-batch dimensions {dims}; export the model "
                               "with a fixed image size")
    rest = tuple(int(d) for d in dims[1:])
    if dims[0] >= 0:  # a static batch: the profile is that shape
        fixed = (int(dims[0]), *rest)
        return TensorProfile(fixed, fixed, fixed)
    return TensorProfile((1, *rest), (config.opt_batch, *rest), (config.max_batch, *rest))


def _note(message: str) -> None:
    print(f"build-engine: {message}", file=sys.stderr, flush=True)


def _network_flags(trt) -> int:
    """STRONGLY_TYPED where TensorRT 10 has the flag; 0 on TensorRT 11 (always strongly typed, and the
    explicit-batch flag is gone)."""
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if strongly_typed is None else 1 << int(strongly_typed)


def _attach_timing_cache(trt, builder_config, cache_path: Path):
    """Attach the cache at ``cache_path`` (or an empty one) to ``builder_config``; returns the cache.

    TensorRT refuses a cache from another version (``create_timing_cache`` returns None or raises) or
    another GPU (``set_timing_cache(..., ignore_mismatch=False)`` returns False): such a cache is not
    trusted but replaced after the build, as documented."""
    if cache_path.is_file():
        try:
            cache = builder_config.create_timing_cache(cache_path.read_bytes())
        except (RuntimeError, TypeError, ValueError, OSError) as exc:  # the bindings raise on bad bytes
            cache, why = None, str(exc)
        else:
            why = "TensorRT could not read it"
        if cache is not None:
            if builder_config.set_timing_cache(cache, False):
                return cache
            why = "it was made for another GPU"
        _note(f"ignoring timing cache {cache_path} ({why}; written by another TensorRT or GPU?); "
              "building without it and replacing it afterwards")
    cache = builder_config.create_timing_cache(b"")
    if cache is None or not builder_config.set_timing_cache(cache, False):
        raise EngineBuildError("TensorRT could not create an empty timing cache")
    return cache


def build_engine(onnx_path: str | os.PathLike, out_path: str | os.PathLike,
                 config: BuildConfig | None = None) -> EngineSidecar:
    """Build ``out_path`` (serialized engine) from ``onnx_path`` on CUDA device ``config.device`` and write
    its sidecar; returns the sidecar.

    Raises ImportError where TensorRT/cuda-python are missing, ``ModelLoadError`` (``CudaError``) where
    CUDA cannot start or the device does not exist, EngineBuildError when parsing or building fails.
    """
    import tensorrt as trt

    from engine.backends import cuda_driver
    from engine.backends.tensorrt import StderrLogger

    config = config or BuildConfig()
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    environment = detect_environment(config.device)
    context = cuda_driver.PrimaryContext(cuda_driver.Device(config.device))
    try:
        with context.active():
            inputs, outputs, cache_path = _build(trt, StderrLogger(), onnx_path, out_path, config)
    finally:
        context.release()

    metadata = _onnx_metadata(onnx_path)
    sidecar = EngineSidecar(
        tensorrt_version=environment.tensorrt_version,
        gpu_name=environment.gpu_name,
        compute_capability=environment.compute_capability,
        cuda_major=environment.cuda_major,
        inputs=inputs,
        outputs=outputs,
        source_onnx=_relative(onnx_path, out_path.parent),
        source_sha256=sha256_file(onnx_path),
        plan_sha256=sha256_file(out_path),
        max_batch=config.max_batch,
        workspace_mb=config.workspace_mb,
        precision=metadata.get("sonograde.precision", "fp32"),
        timing_cache=_relative(cache_path, out_path.parent),
        built_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        metadata=metadata,
    )
    write_sidecar(out_path, sidecar)
    return sidecar


def _onnx_metadata(onnx_path: Path) -> dict[str, str]:
    """The model's string metadata (``sonograde.*``), which the engine itself does not keep."""
    try:
        import onnx
    except ImportError:  # a runtime-only install: ONNX Runtime reads the same metadata
        from engine.backends.ort import cpu_session

        session = cpu_session(onnx_path)
        return dict(session.get_modelmeta().custom_metadata_map)
    model = onnx.load(str(onnx_path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _build(trt, logger, onnx_path: Path, out_path: Path, config: BuildConfig):
    """Parse, build and write the engine and the timing cache (a CUDA context is current)."""
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT cannot parse {onnx_path}: {errors}")

    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mb << 20)
    profile = builder.create_optimization_profile()
    inputs: dict[str, TensorProfile] = {}
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        shapes = _profile_shapes(tensor.name, tuple(tensor.shape), config)
        profile.set_shape(tensor.name, shapes.min, shapes.opt, shapes.max)
        inputs[tensor.name] = TensorProfile(shapes.min, shapes.opt, shapes.max,
                                            str(trt.nptype(tensor.dtype).__name__))
    if builder_config.add_optimization_profile(profile) < 0:
        raise EngineBuildError(f"TensorRT rejected the optimization profile of {onnx_path}: {inputs}")

    cache_path = config.timing_cache or out_path.parent / TIMING_CACHE_NAME
    _attach_timing_cache(trt, builder_config, cache_path)

    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        detail = "; ".join(logger.errors[-3:]) or "see its log above"
        raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_path} ({detail})")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(out_path, bytes(memoryview(serialized)))
    _write_atomically(cache_path, bytes(memoryview(builder_config.get_timing_cache().serialize())))
    outputs = tuple(network.get_output(i).name for i in range(network.num_outputs))
    return inputs, outputs, cache_path


def _write_atomically(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder: a reader never sees half a file."""
    staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staged.write_bytes(data)
    os.replace(staged, path)


def _relative(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` where possible (the engine folder may move as a whole)."""
    try:
        return os.path.relpath(path.resolve(), base.resolve())
    except ValueError:  # another drive on Windows
        return str(path.resolve())
