"""The TensorRT builder and backend against stand-ins of ``tensorrt`` (10.x and 11.x) and of cuda-python's
driver (tests/fakes): build, load, inference and every refusal path, without a GPU.

The stand-ins follow the bindings' documented behaviour (see their docstrings): a call without a current
CUDA context in the calling thread, a tensor bound by the wrong name, a precision flag TensorRT 11 removed
or a refused timing cache fails here as it would on a GPU.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from fakes import TENSORRT_10, TENSORRT_11, install, purge_bound_modules
from fakes.fake_cuda import FakeGpu

from engine.backends import InputSpecError, ModelLoadError, load_backend
from engine.backends.dev_models import make_grader_model, make_roi_model
from engine.backends.tensorrt_sidecar import EngineMismatchError, read_sidecar, sha256_file, sidecar_path

MODELS = Path(__file__).resolve().parents[1] / "models"
VERSIONS = [TENSORRT_10, TENSORRT_11, TENSORRT_11 + "+flag"]


@pytest.fixture
def stand_ins(monkeypatch):
    """Install the stand-ins (TensorRT 10 unless a test reinstalls); afterwards drop our modules that bound
    them, so later tests import the real (absent) packages again."""
    trt, driver = install(monkeypatch)
    yield trt, driver
    purge_bound_modules()


def _reinstall(monkeypatch, version=TENSORRT_10, gpus=None, **cuda_options):
    trt, driver = install(monkeypatch, tensorrt_version=version)
    driver.reset(gpus, **cuda_options)
    return trt, driver


def _build(onnx_path: Path, out: Path, **options):
    from calibration.tensorrt_build import BuildConfig, build_engine

    return build_engine(onnx_path, out, BuildConfig(**{"max_batch": 4, "workspace_mb": 64, **options}))


def _grader(tmp_path: Path) -> Path:
    return make_grader_model(tmp_path / "g_cnn.onnx", size=32)


@pytest.mark.parametrize("version", VERSIONS)
def test_build_load_and_run_match_onnxruntime(stand_ins, monkeypatch, tmp_path, rng, capfd, version):
    trt, driver = _reinstall(monkeypatch, version)
    onnx_path = _grader(tmp_path)
    engine = tmp_path / "g_cnn.plan"
    sidecar = _build(onnx_path, engine)
    build_out, build_err = capfd.readouterr()
    assert build_out == ""  # TensorRT's log went to stderr, not into the command's JSON
    assert "[TensorRT WARNING] stand-in TensorRT" in build_err
    header, _ = trt.split_engine(engine.read_bytes())
    assert header["strongly_typed"] is True  # precision comes from the ONNX types
    assert header["workspace"] == 64 << 20
    assert sidecar.tensorrt_version == trt.__version__ and sidecar.gpu_name == "NVIDIA H200"
    assert sidecar.compute_capability == "9.0"
    assert sidecar.plan_sha256 == sha256_file(engine) and sidecar.source_sha256 == sha256_file(onnx_path)
    assert sidecar.inputs["image"].max[0] == 4 and read_sidecar(engine) == sidecar
    assert (tmp_path / "tensorrt.timing.cache").is_file()

    backend = load_backend(engine)
    reference = load_backend(onnx_path, providers=["CPUExecutionProvider"])
    assert backend.name == "tensorrt" and backend.max_batch == 4
    assert backend.metadata["sonograde.model"] == "grader" and backend.input_shape[0] is None
    for batch_size in (1, 3, 4, 2):  # shapes change between calls on the same buffers
        batch = rng.standard_normal((batch_size, *reference.input_shape[1:])).astype(np.float32)
        np.testing.assert_allclose(backend.run(batch), reference.run(batch), rtol=1e-6, atol=1e-7)
    assert int(driver.cuCtxGetCurrent()[1]) == 0  # every push was popped
    backend.close()
    backend.close()  # twice is harmless
    assert driver.STATE.device_memory == {} and driver.STATE.host_memory == {} and driver.STATE.streams == {}
    assert all(count == 0 for count in driver.STATE.primary_refs.values())
    with pytest.raises(RuntimeError, match="closed"):
        backend.run(np.zeros((1, *reference.input_shape[1:]), np.float32))


def test_runs_from_other_threads(stand_ins, tmp_path, rng):
    _, driver = stand_ins
    onnx_path = make_roi_model(tmp_path / "roi_cnn.onnx", size=64)
    engine = tmp_path / "roi_cnn.plan"
    _build(onnx_path, engine, max_batch=2)
    backend, reference = load_backend(engine), load_backend(onnx_path, providers=["CPUExecutionProvider"])
    batches = [rng.standard_normal((1, 1, 64, 64)).astype(np.float32) for _ in range(4)]
    results: dict[int, np.ndarray] = {}

    def work(index: int) -> None:
        results[index] = backend.run(batches[index])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [0, 1, 2, 3]  # a thread without the context pushed would have failed
    for index, batch in enumerate(batches):
        np.testing.assert_allclose(results[index], reference.run(batch), rtol=1e-6, atol=1e-7)
    assert len(driver.STATE.threads_seen) >= 2  # thread ids may be reused once a thread ends
    # Every allocation, copy and stream call ran with the backend's context current in its thread.
    device_calls = [c for c in driver.STATE.calls if c[0].startswith(("cuMem", "cuStream"))]
    assert device_calls and all(context is not None for _, context in device_calls)


def test_builds_on_the_requested_device(stand_ins, monkeypatch, tmp_path):
    gpus = [FakeGpu("NVIDIA H200", 9, 0), FakeGpu("NVIDIA A100-SXM4-80GB", 8, 0)]
    trt, _ = _reinstall(monkeypatch, gpus=gpus)
    onnx_path = _grader(tmp_path)
    engine = tmp_path / "g_cnn.plan"
    sidecar = _build(onnx_path, engine, device=1)
    assert sidecar.gpu_name == "NVIDIA A100-SXM4-80GB" and sidecar.compute_capability == "8.0"
    assert trt.split_engine(engine.read_bytes())[0]["cc"] == "8.0"  # built on device 1, not the current one
    from engine.backends.tensorrt import TensorRTBackend

    TensorRTBackend(engine, device=1).close()
    with pytest.raises(EngineMismatchError, match="built for NVIDIA A100"):
        TensorRTBackend(engine, device=0)
    with pytest.raises(ModelLoadError, match="CUDA device 2 does not exist: this machine has 2"):
        _build(onnx_path, tmp_path / "other.plan", device=2)


def _cache_bytes(trt, version: str, compute_capability: str) -> bytes:
    return bytes(trt.ITimingCache(version, compute_capability, 5).serialize())


@pytest.mark.parametrize("version", [TENSORRT_10, TENSORRT_11])
@pytest.mark.parametrize("case", ["other-version", "other-gpu", "damaged"])
def test_refused_timing_cache_is_replaced(stand_ins, monkeypatch, tmp_path, capfd, version, case):
    trt, _ = _reinstall(monkeypatch, version)
    cache = tmp_path / "tensorrt.timing.cache"
    cache.write_bytes({"other-version": _cache_bytes(trt, "9.3.0.1", "9.0"),
                       "other-gpu": _cache_bytes(trt, trt.__version__, "8.6"),
                       "damaged": b"not a timing cache"}[case])
    _build(_grader(tmp_path), tmp_path / "g_cnn.plan")
    assert f"ignoring timing cache {cache}" in capfd.readouterr().err
    rewritten = trt.IBuilderConfig(trt.Logger()).create_timing_cache(cache.read_bytes())
    assert rewritten.version == trt.__version__ and rewritten.compute_capability == "9.0"


def test_matching_timing_cache_is_reused(stand_ins, tmp_path, capfd):
    trt, _ = stand_ins
    onnx_path = _grader(tmp_path)
    _build(onnx_path, tmp_path / "a.plan", timing_cache=tmp_path / "cache.bin")
    first = trt.IBuilderConfig(trt.Logger()).create_timing_cache((tmp_path / "cache.bin").read_bytes())
    _build(onnx_path, tmp_path / "b.plan", timing_cache=tmp_path / "cache.bin")
    assert "ignoring timing cache" not in capfd.readouterr().err
    again = trt.IBuilderConfig(trt.Logger()).create_timing_cache((tmp_path / "cache.bin").read_bytes())
    assert again.entries > first.entries  # the second build started from the first one's cache


def test_parser_refusals(stand_ins, tmp_path):
    from calibration.tensorrt_build import EngineBuildError

    # The CPU-target INT8 model has uint8 activations with nonzero zero points: not for TensorRT.
    with pytest.raises(EngineBuildError, match="symmetric quantization"):
        _build(MODELS / "g_cnn.int8.onnx", tmp_path / "g_cnn.int8.plan")
    import onnx

    model = onnx.load(str(_grader(tmp_path)))
    model.graph.node[0].domain = "com.microsoft"
    model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    custom = tmp_path / "custom.onnx"
    onnx.save(model, str(custom))
    with pytest.raises(EngineBuildError, match="no importer registered"):
        _build(custom, tmp_path / "custom.plan")
    assert not (tmp_path / "custom.plan").exists()


def test_builds_shipped_tensorrt_int8_models(stand_ins, tmp_path, rng):
    for stem in ("roi_cnn", "g_cnn"):
        source = tmp_path / f"{stem}.int8.trt.onnx"
        shutil.copy(MODELS / source.name, source)
        engine = tmp_path / f"{stem}.int8.plan"
        sidecar = _build(source, engine, max_batch=2)
        assert sidecar.precision == "int8"
        backend = load_backend(engine)
        reference = load_backend(source, providers=["CPUExecutionProvider"])
        batch = rng.standard_normal((1, *reference.input_shape[1:])).astype(np.float32)
        np.testing.assert_allclose(backend.run(batch), reference.run(batch), rtol=1e-5, atol=1e-6)
        backend.close()


@pytest.fixture
def built(stand_ins, tmp_path) -> tuple[Path, Path]:
    onnx_path = _grader(tmp_path)
    engine = tmp_path / "g_cnn.plan"
    _build(onnx_path, engine, max_batch=2)
    return onnx_path, engine


def _rewrite_sidecar(engine: Path, **changes) -> None:
    data = json.loads(sidecar_path(engine).read_text())
    data.update(changes)
    sidecar_path(engine).write_text(json.dumps(data))


def test_load_refusals(built, monkeypatch, tmp_path):
    _, engine = built
    _rewrite_sidecar(engine, tensorrt_version="10.3.0.26")
    with pytest.raises(EngineMismatchError, match=r"TensorRT 10\.3\.0\.26 built it"):
        load_backend(engine)
    _rewrite_sidecar(engine, tensorrt_version=TENSORRT_10, cuda_major="12")
    monkeypatch.setattr("engine.backends.tensorrt_sidecar.tensorrt_cuda_major", lambda: "13")
    with pytest.raises(EngineMismatchError, match="a CUDA 12 build of TensorRT built it"):
        load_backend(engine)
    _rewrite_sidecar(engine, cuda_major="")
    engine.write_bytes(engine.read_bytes() + b"\0")
    with pytest.raises(EngineMismatchError, match="not the one its sidecar describes"):
        load_backend(engine)
    engine.write_bytes(b"garbage, not an engine")
    _rewrite_sidecar(engine, plan_sha256=sha256_file(engine))
    with pytest.raises(ModelLoadError, match=r"could not deserialize .*magic tag mismatch"):
        load_backend(engine)
    sidecar_path(engine).unlink()
    with pytest.raises(EngineMismatchError, match="no sidecar"):
        load_backend(engine)


def test_engine_of_another_tensorrt_refused_by_the_runtime(built, monkeypatch):
    _, engine = built
    install(monkeypatch, tensorrt_version="10.16.2.3")
    from engine.backends.tensorrt import TensorRTBackend

    with pytest.raises(ModelLoadError, match=r"could not deserialize .*built by TensorRT 10\.16\.1\.11"):
        TensorRTBackend(engine, check=False)  # past the sidecar: the runtime itself refuses


def test_input_refusals(built):
    _, engine = built
    backend = load_backend(engine)
    with pytest.raises(InputSpecError, match="exceeds the engine's maximum 2"):
        backend.run(np.zeros((3, *backend.input_shape[1:]), np.float32))
    with pytest.raises(InputSpecError, match="dtype"):
        backend.run(np.zeros((1, *backend.input_shape[1:]), np.float64))
    with pytest.raises(InputSpecError, match="expects shape"):
        backend.run(np.zeros((1, 1, 8, 8), np.float32))
    backend.close()


@pytest.mark.parametrize("failure, phrase", [
    ({"load_failure": True}, "NVIDIA driver cannot be loaded"),
    ({"init_result": 100}, r"CUDA cannot start \(CUDA_ERROR_NO_DEVICE\)"),
])
def test_cuda_that_cannot_start_is_a_model_load_error(built, monkeypatch, failure, phrase):
    _, engine = built
    from fakes.fake_cuda import CUresult

    options = {k: CUresult(v) if k == "init_result" else v for k, v in failure.items()}
    _reinstall(monkeypatch, **options)
    with pytest.raises(ModelLoadError, match=phrase):
        load_backend(engine)
    from calibration.tensorrt_build import EngineBuildError  # noqa: F401 - the builder says the same
    with pytest.raises(ModelLoadError, match=phrase):
        _build(engine.with_name("g_cnn.onnx"), engine.with_name("again.plan"))


def test_build_engine_command_prints_json_only(stand_ins, tmp_path, capfd):
    from sonograde.cli import main

    onnx_path = _grader(tmp_path)
    engine = tmp_path / "g_cnn.plan"
    assert main(["build-engine", "--onnx", str(onnx_path), "--out", str(engine), "--max-batch", "2"]) == 0
    out, err = capfd.readouterr()
    summary = json.loads(out)  # all of standard output is the one JSON object
    assert summary["engine"] == str(engine) and summary["plan_sha256"] == sha256_file(engine)
    assert "[TensorRT" in err


def test_trt_logger_would_have_polluted_stdout(stand_ins, capfd):
    """The stand-in's trt.Logger writes to file descriptor 1 as TensorRT's does: the reason for
    StderrLogger (guards the stand-in itself)."""
    trt, _ = stand_ins
    trt.Logger(trt.Logger.WARNING).log(trt.ILogger.Severity.WARNING, "hello")
    assert "hello" in capfd.readouterr().out


def test_removed_flags_fail_on_tensorrt_11(stand_ins, monkeypatch):
    trt, _ = _reinstall(monkeypatch, TENSORRT_11)
    assert not hasattr(trt.BuilderFlag, "FP16") and not hasattr(trt.BuilderFlag, "INT8")
    assert not hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
    with pytest.raises(TypeError, match="unknown network creation flag"):
        trt.Builder(trt.Logger()).create_network(1 << 0)
