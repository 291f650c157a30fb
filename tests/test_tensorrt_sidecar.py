"""TensorRT engine sidecar: round trip and refusal of mismatched engines (pure Python, no GPU), and, where
TensorRT and cuda-python are installed, a real engine build compared with ONNX Runtime."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from calibration.quantize import sha256_file
from engine.backends import ModelLoadError
from engine.backends.tensorrt_sidecar import (
    EngineMismatchError,
    EngineSidecar,
    Environment,
    TensorProfile,
    check_engine,
    read_sidecar,
    rebuild_command,
    sidecar_path,
    write_sidecar,
)

HERE = Environment("10.8.0.43", "NVIDIA H200", "9.0", "13")


def _engine(tmp_path: Path, rng) -> tuple[Path, EngineSidecar]:
    source = tmp_path / "roi_cnn.int8.onnx"
    source.write_bytes(rng.bytes(256))  # stands in for the ONNX: only its checksum matters here
    engine = tmp_path / "roi_cnn.int8.plan"
    engine.write_bytes(b"not really an engine")
    sidecar = EngineSidecar(
        tensorrt_version=HERE.tensorrt_version, gpu_name=HERE.gpu_name,
        compute_capability=HERE.compute_capability, cuda_major=HERE.cuda_major,
        inputs={"image": TensorProfile((1, 1, 288, 288), (1, 1, 288, 288), (4, 1, 288, 288))},
        outputs=("prob",),
        source_onnx="roi_cnn.int8.onnx", source_sha256=sha256_file(source), max_batch=4, workspace_mb=512,
        precision="int8", metadata={"sonograde.model": "roi"}, plan_sha256=sha256_file(engine),
    )
    write_sidecar(engine, sidecar)
    return engine, sidecar


def test_sidecar_round_trip(tmp_path, rng):
    engine, sidecar = _engine(tmp_path, rng)
    assert sidecar_path(engine).name == "roi_cnn.int8.plan.json"
    assert read_sidecar(engine) == sidecar
    check_engine(engine, read_sidecar(engine), HERE)  # matches: no error


@pytest.mark.parametrize("here, phrase", [
    (replace(HERE, tensorrt_version="10.9.0.34"), "TensorRT 10.8.0.43 built it"),
    (replace(HERE, gpu_name="NVIDIA A100-SXM4-80GB", compute_capability="8.0"), "built for NVIDIA H200"),
    (replace(HERE, cuda_major="12"), "a CUDA 13 build of TensorRT built it"),
])
def test_mismatch_refused_with_rebuild_command(tmp_path, rng, here, phrase):
    engine, sidecar = _engine(tmp_path, rng)
    with pytest.raises(EngineMismatchError) as caught:
        check_engine(engine, read_sidecar(engine), here)
    message = str(caught.value)
    assert phrase in message
    expected = (f"sonograde build-engine --onnx {tmp_path / 'roi_cnn.int8.onnx'} --out {engine} "
                "--max-batch 4 --workspace-mb 512")
    assert expected in message and expected == rebuild_command(engine, sidecar)
    assert isinstance(caught.value, ModelLoadError)  # callers of load_backend catch one error type


def test_changed_source_onnx_refused(tmp_path, rng):
    engine, _ = _engine(tmp_path, rng)
    (tmp_path / "roi_cnn.int8.onnx").write_bytes(rng.bytes(256))
    with pytest.raises(EngineMismatchError, match="has changed since the engine was built"):
        check_engine(engine, read_sidecar(engine), HERE)


def test_unknown_cuda_major_is_not_compared(tmp_path, rng):
    engine, _ = _engine(tmp_path, rng)
    check_engine(engine, read_sidecar(engine), replace(HERE, cuda_major=""))  # a tar install: unknown


def test_replaced_engine_file_refused(tmp_path, rng):
    engine, _ = _engine(tmp_path, rng)
    engine.write_bytes(b"another engine")
    with pytest.raises(EngineMismatchError, match="not the one its sidecar describes"):
        check_engine(engine, read_sidecar(engine), HERE)


def test_format_1_sidecar_still_read(tmp_path, rng):
    engine, sidecar = _engine(tmp_path, rng)
    old = sidecar.to_dict()
    for key in ("cuda_major", "plan_sha256"):
        old.pop(key)
    old["format"] = 1
    sidecar_path(engine).write_text(json.dumps(old), encoding="utf-8")
    read = read_sidecar(engine)
    assert read.cuda_major == "" and read.plan_sha256 == ""
    check_engine(engine, read, HERE)


def test_missing_or_corrupt_sidecar_refused(tmp_path, rng):
    engine, _ = _engine(tmp_path, rng)
    sidecar_path(engine).write_text("{not json", encoding="utf-8")
    with pytest.raises(EngineMismatchError, match="unreadable"):
        read_sidecar(engine)
    sidecar_path(engine).unlink()
    with pytest.raises(EngineMismatchError, match=r"no sidecar .*sonograde build-engine --onnx"):
        read_sidecar(engine)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_engine_without_tensorrt_gives_clear_error(tmp_path, rng):
    from engine.backends import load_backend

    engine, _ = _engine(tmp_path, rng)
    with pytest.raises(ModelLoadError, match="TensorRT"):
        load_backend(engine)


def test_build_engine_cli_without_tensorrt(tmp_path, capsys):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here: the GPU test below covers the command")
    from sonograde.cli import main

    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    assert main(["build-engine", "--onnx", str(model), "--out", str(tmp_path / "m.plan")]) == 2
    assert "TensorRT is not available" in capsys.readouterr().err


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False


def _gpu_stack_missing() -> str | None:
    for module in ("tensorrt", "cuda.bindings"):
        if not _installed(module):
            return f"{module} is not installed (needs an NVIDIA GPU and `pip install 'sonograde[tensorrt]'`)"
    return None


@pytest.mark.skipif(_gpu_stack_missing() is not None, reason=str(_gpu_stack_missing()))
def test_tensorrt_engine_matches_onnxruntime(tmp_path, rng):  # pragma: no cover - needs a GPU
    from calibration.tensorrt_build import BuildConfig, build_engine
    from engine.backends import load_backend
    from engine.backends.dev_models import make_roi_model

    onnx_path = make_roi_model(tmp_path / "roi_cnn.onnx")
    engine = tmp_path / "roi_cnn.plan"
    sidecar = build_engine(onnx_path, engine, BuildConfig(max_batch=2, workspace_mb=256))
    assert engine.is_file() and (tmp_path / "tensorrt.timing.cache").is_file()
    assert sidecar.source_sha256 == sha256_file(onnx_path)
    trt_backend, ort_backend = load_backend(engine), load_backend(onnx_path)
    assert trt_backend.name == "tensorrt" and trt_backend.metadata.get("sonograde.model") == "roi"
    batch = rng.standard_normal((2, *ort_backend.input_shape[1:])).astype(np.float32)
    assert np.abs(trt_backend.run(batch) - ort_backend.run(batch)).max() < 1e-2


def test_cuda_major_of_the_tensorrt_wheel(monkeypatch):
    from engine.backends import tensorrt_sidecar

    installed = {"tensorrt-cu13"}

    def distribution(name):
        if name not in installed:
            raise tensorrt_sidecar.importlib_metadata.PackageNotFoundError(name)
        return object()

    monkeypatch.setattr(tensorrt_sidecar.importlib_metadata, "distribution", distribution)
    assert tensorrt_sidecar.tensorrt_cuda_major() == "13"
    installed.clear()
    installed.add("tensorrt-cu12-libs")
    assert tensorrt_sidecar.tensorrt_cuda_major() == "12"
    installed.clear()  # a tar or Debian install: unknown, and then not compared
    assert tensorrt_sidecar.tensorrt_cuda_major() == ""
