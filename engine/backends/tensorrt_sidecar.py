"""The sidecar of a TensorRT engine (``M.plan.json``) and the check that an engine fits this machine.

A serialized TensorRT engine only runs with the TensorRT version (and the CUDA major version of that
TensorRT build) that built it, on the GPU model it was built for. ``sonograde build-engine``
(``calibration.tensorrt_build``) writes the facts beside the engine, with the SHA-256 of the engine file
itself; the TensorRT backend reads them and refuses an engine built elsewhere, one whose source ONNX has
changed since, or an engine file that is not the one the sidecar describes, with the exact command that
rebuilds it. This is the engine file's contract, so it lives in the engine layer; the builder imports it
to write sidecars. Pure Python: this module imports neither TensorRT nor CUDA, except
``detect_environment``, which imports them when called.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from dataclasses import asdict, dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path

from engine.backends.base import ModelLoadError

SIDECAR_FORMAT = 2  # 2: cuda_major and plan_sha256 added (format-1 sidecars read with them empty)
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
    """What an engine is tied to: TensorRT version, GPU name, compute capability ("9.0") and the CUDA
    major version TensorRT was built for ("13"; "" where unknown, which is then not compared)."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    cuda_major: str = ""


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
    cuda_major: str = ""
    plan_sha256: str = ""
    format: int = SIDECAR_FORMAT

    @property
    def environment(self) -> Environment:
        return Environment(self.tensorrt_version, self.gpu_name, self.compute_capability, self.cuda_major)

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


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    elif sidecar.cuda_major and here.cuda_major and sidecar.cuda_major != here.cuda_major:
        found.append(f"a CUDA {sidecar.cuda_major} build of TensorRT built it, this machine's TensorRT is "
                     f"built for CUDA {here.cuda_major}")
    if sidecar.gpu_name != here.gpu_name or sidecar.compute_capability != here.compute_capability:
        found.append(f"it was built for {sidecar.gpu_name} (compute capability "
                     f"{sidecar.compute_capability}), this GPU is {here.gpu_name} (compute capability "
                     f"{here.compute_capability})")
    return found


def check_engine(engine_path: str | os.PathLike, sidecar: EngineSidecar, here: Environment, *,
                 check_source: bool = True) -> None:
    """Raise EngineMismatchError (naming every difference and the rebuild command) when the engine was
    built for another TensorRT version, CUDA major version or GPU, when the engine file is not the one the
    sidecar was written for (its SHA-256 differs), or, with ``check_source``, when its source ONNX exists
    but has changed since (a stale engine of an old model)."""
    problems = mismatches(sidecar, here)
    if (sidecar.plan_sha256 and Path(engine_path).is_file()
            and sha256_file(engine_path) != sidecar.plan_sha256):
        problems.append("the engine file is not the one its sidecar describes (its SHA-256 differs: replaced "
                        "or damaged since it was built)")
    if check_source and sidecar.source_sha256:
        source = Path(sidecar.source_onnx)
        if not source.is_absolute():
            source = Path(engine_path).parent / source
        if source.is_file() and sha256_file(source) != sidecar.source_sha256:
            problems.append(f"its source {sidecar.source_onnx} has changed since the engine was built")
    if problems:
        raise EngineMismatchError(
            f"refusing TensorRT engine {engine_path}: {'; '.join(problems)}. Rebuild it on this machine with "
            f"`{rebuild_command(engine_path, sidecar)}`"
        )


TENSORRT_DISTRIBUTIONS = ("tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11",
                          "tensorrt-cu13-libs", "tensorrt-cu12-libs", "tensorrt-cu11-libs")


def tensorrt_cuda_major() -> str:
    """The CUDA major version of the installed TensorRT build ("13"), from the name of its wheel
    (``tensorrt-cu13`` ...); "" where TensorRT was not installed from a wheel (a tar or Debian install)."""
    for name in TENSORRT_DISTRIBUTIONS:
        try:
            importlib_metadata.distribution(name)
        except importlib_metadata.PackageNotFoundError:
            continue
        return name.split("-cu", 1)[1].split("-", 1)[0]
    return ""


def detect_environment(device: int = 0) -> Environment:
    """This machine's TensorRT version and CUDA device ``device`` (imports tensorrt and cuda-python:
    ImportError where absent; ``engine.backends.cuda_driver.CudaError`` where CUDA cannot start)."""
    import tensorrt as trt

    from engine.backends.cuda_driver import Device

    gpu = Device(device)
    return Environment(str(trt.__version__), gpu.name, gpu.compute_capability, tensorrt_cuda_major())
