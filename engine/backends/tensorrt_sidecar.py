"""The sidecar of a TensorRT engine (``M.plan.json``) and the check that an engine fits this machine.

A serialized TensorRT engine only runs with the TensorRT version that built it, on the GPU model it was
built for. ``sonograde build-engine`` writes the facts beside the engine; the TensorRT backend reads them
and refuses an engine built elsewhere (or one whose source ONNX has changed since) with the exact command
that rebuilds it. Pure Python: this module imports neither TensorRT nor CUDA, except
``detect_environment``, which imports them when called.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.backends.base import ModelLoadError

SIDECAR_FORMAT = 1
SIDECAR_SUFFIX = ".json"


class EngineMismatchError(ModelLoadError):
    """An engine built for another GPU or TensorRT version, from another ONNX, or without a sidecar."""


@dataclass(frozen=True)
class TensorProfile:
    """Shapes of one input in the optimization profile (min, opt, max) and its dtype name."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class Environment:
    """What an engine is tied to: TensorRT version, GPU name, compute capability ("9.0")."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str


@dataclass(frozen=True)
class EngineSidecar:
    """Facts about one engine file. ``metadata`` is the source ONNX's metadata (``sonograde.*``), which
    the engine itself does not keep; the backend exposes it as the model metadata."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    inputs: dict[str, TensorProfile]
    outputs: tuple[str, ...]
    source_onnx: str
    source_sha256: str
    max_batch: int
    workspace_mb: int
    precision: str = "fp32"
    timing_cache: str = ""
    built_utc: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    format: int = SIDECAR_FORMAT

    @property
    def environment(self) -> Environment:
        return Environment(self.tensorrt_version, self.gpu_name, self.compute_capability)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["outputs"] = list(self.outputs)
        data["inputs"] = {name: {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(p).items()}
                          for name, p in self.inputs.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> EngineSidecar:
        inputs = {name: TensorProfile(tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]),
                                      p.get("dtype", "float32"))
                  for name, p in data["inputs"].items()}
        scalars = set(cls.__dataclass_fields__) - {"inputs", "outputs"}
        known = {k: v for k, v in data.items() if k in scalars}
        return cls(inputs=inputs, outputs=tuple(data["outputs"]), **known)


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """``M.plan`` -> ``M.plan.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


def write_sidecar(engine_path: str | os.PathLike, sidecar: EngineSidecar) -> Path:
    path = sidecar_path(engine_path)
    path.write_text(json.dumps(sidecar.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path


def rebuild_command(engine_path: str | os.PathLike, sidecar: EngineSidecar | None = None) -> str:
    """The ``sonograde build-engine`` command that (re)builds ``engine_path`` on this machine."""
    engine_path = Path(engine_path)
    if sidecar is not None:
        source = sidecar.source_onnx
        if not Path(source).is_absolute():  # stored relative to the engine's folder
            source = os.path.normpath(engine_path.parent / source)
        extra = f" --max-batch {sidecar.max_batch} --workspace-mb {sidecar.workspace_mb}"
    else:
        source = str(engine_path.with_suffix(".onnx"))
        extra = ""
    return f"sonograde build-engine --onnx {shlex.quote(source)} --out {shlex.quote(str(engine_path))}{extra}"


def read_sidecar(engine_path: str | os.PathLike) -> EngineSidecar:
    """Read the sidecar of ``engine_path``; EngineMismatchError (with the rebuild command) if it is
    missing or unreadable: without it nothing says what the engine was built for."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise EngineMismatchError(
            f"TensorRT engine {engine_path} has no sidecar {path.name} saying which GPU and TensorRT version "
            f"it was built for; rebuild it here with `{rebuild_command(engine_path)}`"
        )
    try:
        return EngineSidecar.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EngineMismatchError(
            f"sidecar {path} of TensorRT engine {engine_path} is unreadable ({exc}); rebuild the engine with "
            f"`{rebuild_command(engine_path)}`"
        ) from exc


def mismatches(sidecar: EngineSidecar, here: Environment) -> list[str]:
    """Differences between what the engine was built for and this machine, as phrases."""
    found = []
    if sidecar.tensorrt_version != here.tensorrt_version:
        found.append(f"TensorRT {sidecar.tensorrt_version} built it, this machine has TensorRT "
                     f"{here.tensorrt_version}")
    if sidecar.gpu_name != here.gpu_name or sidecar.compute_capability != here.compute_capability:
        found.append(f"it was built for {sidecar.gpu_name} (compute capability "
                     f"{sidecar.compute_capability}), this GPU is {here.gpu_name} (compute capability "
                     f"{here.compute_capability})")
    return found


def check_engine(engine_path: str | os.PathLike, sidecar: EngineSidecar, here: Environment, *,
                 check_source: bool = True) -> None:
    """Raise EngineMismatchError (naming every difference and the rebuild command) when the engine was
    built for another TensorRT version or GPU, or, with ``check_source``, when its source ONNX exists but
    has changed since (a stale engine of an old model)."""
    problems = mismatches(sidecar, here)
    if check_source and sidecar.source_sha256:
        source = Path(sidecar.source_onnx)
        if not source.is_absolute():
            source = Path(engine_path).parent / source
        if source.is_file():
            from calibration.quantize import sha256_file

            if sha256_file(source) != sidecar.source_sha256:
                problems.append(f"its source {sidecar.source_onnx} has changed since the engine was built")
    if problems:
        raise EngineMismatchError(
            f"refusing TensorRT engine {engine_path}: {'; '.join(problems)}. Rebuild it on this machine with "
            f"`{rebuild_command(engine_path, sidecar)}`"
        )


def detect_environment(device: int = 0) -> Environment:
    """This machine's TensorRT version and GPU (imports tensorrt and pycuda; ImportError where absent)."""
    import pycuda.driver as cuda
    import tensorrt as trt

    cuda.init()
    gpu = cuda.Device(device)
    major, minor = gpu.compute_capability()
    return Environment(str(trt.__version__), str(gpu.name()), f"{major}.{minor}")
