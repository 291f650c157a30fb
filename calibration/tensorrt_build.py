"""Build a TensorRT engine from an ONNX model: strongly typed, one optimization profile, a timing cache.

Precision lives in the ONNX (TensorRT 10.12 deprecated and TensorRT 11 removed the FP16/INT8 builder
flags and implicit INT8 calibration): an explicit Q/DQ model (``calibrate int8 --target tensorrt``) gives
an INT8 engine, an FP16-typed model (``calibrate fp16``) an FP16 engine, the FP32 model a TF32/FP32 one.
The network is created STRONGLY_TYPED (on TensorRT 11 always so; the flag is then ignored).

The dynamic batch dimension gets one optimization profile: min 1, opt ``opt_batch``, max ``max_batch``.
The timing cache (``tensorrt.timing.cache`` beside the engine by default) is read before and written after
the build, so rebuilding the same layers on the same GPU is quick. The sidecar (``M.plan.json``) records
what the engine is tied to (``calibration.sidecar``).

Written against the TensorRT 10 Python API (Builder.create_network, OnnxParser.parse_from_file,
IBuilderConfig.set_memory_pool_limit / create_timing_cache / set_timing_cache, build_serialized_network).
UNVERIFIED: no GPU was available when this was written; scripts/gpu-check.sh exercises it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from calibration.sidecar import EngineSidecar, TensorProfile, detect_environment, write_sidecar

TIMING_CACHE_NAME = "tensorrt.timing.cache"


class EngineBuildError(RuntimeError):
    """The ONNX could not be parsed or the engine could not be built; the message has TensorRT's errors."""


@dataclass(frozen=True)
class BuildConfig:
    """max_batch / opt_batch: profile of the batch dimension. workspace_mb: builder workspace limit (MiB).
    timing_cache: cache file (default ``tensorrt.timing.cache`` beside the engine). device: CUDA device."""

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


def build_engine(onnx_path: str | os.PathLike, out_path: str | os.PathLike,
                 config: BuildConfig | None = None) -> EngineSidecar:
    """Build ``out_path`` (serialized engine) from ``onnx_path`` and write its sidecar; returns the sidecar.

    Raises ImportError where TensorRT/pycuda are missing, EngineBuildError when parsing or building fails.
    """
    import onnx
    import tensorrt as trt

    from calibration.quantize import sha256_file

    config = config or BuildConfig()
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    environment = detect_environment(config.device)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
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
    builder_config.add_optimization_profile(profile)

    cache_path = config.timing_cache or out_path.parent / TIMING_CACHE_NAME
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    timing_cache = builder_config.create_timing_cache(cache_bytes)
    # A cache from another GPU/TensorRT is ignored rather than trusted (ignore_mismatch=False).
    builder_config.set_timing_cache(timing_cache, False)

    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(bytes(memoryview(serialized)))
    cache_path.write_bytes(bytes(memoryview(builder_config.get_timing_cache().serialize())))

    model = onnx.load(str(onnx_path), load_external_data=False)
    metadata = {p.key: p.value for p in model.metadata_props}
    outputs = tuple(network.get_output(i).name for i in range(network.num_outputs))
    sidecar = EngineSidecar(
        tensorrt_version=environment.tensorrt_version,
        gpu_name=environment.gpu_name,
        compute_capability=environment.compute_capability,
        inputs=inputs,
        outputs=outputs,
        source_onnx=_relative(onnx_path, out_path.parent),
        source_sha256=sha256_file(onnx_path),
        max_batch=config.max_batch,
        workspace_mb=config.workspace_mb,
        precision=metadata.get("sonograde.precision", "fp32"),
        timing_cache=_relative(cache_path, out_path.parent),
        built_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        metadata=metadata,
    )
    write_sidecar(out_path, sidecar)
    return sidecar


def _relative(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` where possible (the engine folder may move as a whole)."""
    try:
        return os.path.relpath(path.resolve(), base.resolve())
    except ValueError:  # another drive on Windows
        return str(path.resolve())
