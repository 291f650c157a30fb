"""The CUDA half of the TensorRT backend on a real GPU: cuda-python's driver for real, TensorRT stood in.

On a machine with an NVIDIA GPU and cuda-python but without TensorRT this exercises everything of the
backend that touches CUDA: driver start, device queries, the primary context pushed and popped in the
calling thread (also from several threads at once), page-locked and device allocations, asynchronous
host-to-device and device-to-host copies on a stream, and the release of all of it; the stand-in
TensorRT (tests/fakes) reads its inputs from and writes its outputs to real device memory. Every test
runs twice: with the stand-in driver (always, so CI covers this file) and with the real one (skipped
where cuda-python or a GPU is missing; ``SONOGRADE_REQUIRE_GPU=1`` turns that skip into a failure, as
``scripts/gpu-check.sh --cuda`` sets it).
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fakes import install, purge_bound_modules

MODELS = Path(__file__).resolve().parents[1] / "models"


def _real_driver_problem() -> str | None:
    try:
        if importlib.util.find_spec("cuda.bindings") is None:
            return "cuda-python (cuda-bindings) is not installed"
    except ModuleNotFoundError:
        return "cuda-python (cuda-bindings) is not installed"
    from cuda.bindings import driver

    try:
        status = driver.cuInit(0)[0]
    except RuntimeError as exc:
        return f"no NVIDIA driver ({exc})"
    if int(status) != 0 or int(driver.cuDeviceGetCount()[1]) == 0:
        return "no CUDA device"
    return None


@pytest.fixture(params=["stand-in", "real"])
def driver(request, monkeypatch):
    """The cuda driver module in use: the stand-in, or the real cuda-python on a GPU machine."""
    if request.param == "real":
        problem = _real_driver_problem()
        if problem is not None:
            if os.environ.get("SONOGRADE_REQUIRE_GPU") == "1":
                pytest.fail(f"SONOGRADE_REQUIRE_GPU=1 but {problem}")
            pytest.skip(problem)
        install(monkeypatch, cuda=False)  # stand-in TensorRT, real cuda-python
        from cuda.bindings import driver as module
    else:
        _, module = install(monkeypatch)
    yield module
    purge_bound_modules()


def test_device_and_context(driver):
    from engine.backends import cuda_driver

    device = cuda_driver.Device(0)
    assert device.name and "." in device.compute_capability
    assert cuda_driver.driver_version() >= 12000
    before = int(driver.cuCtxGetCurrent()[1])
    context = cuda_driver.PrimaryContext(device)
    with context.active():
        assert int(driver.cuCtxGetCurrent()[1]) == int(context.handle)
    assert int(driver.cuCtxGetCurrent()[1]) == before  # popped: the thread is as it was
    context.release()
    with pytest.raises(cuda_driver.CudaError, match="does not exist"):
        cuda_driver.Device(99)


def test_copies_round_trip_through_device_memory(driver, rng):
    from engine.backends import cuda_driver

    context = cuda_driver.PrimaryContext(cuda_driver.Device(0))
    count = 1 << 22  # 16 MiB of float32
    with context.active():
        source, target = (cuda_driver.PinnedBuffer(count, np.float32) for _ in range(2))
        device = cuda_driver.DeviceBuffer(source.nbytes)
        stream = cuda_driver.Stream()
        source.array[:] = rng.standard_normal(count).astype(np.float32)
        target.array[:] = 0
        stream.copy_to_device(device, source.address, source.nbytes)
        stream.copy_to_host(target.address, device, source.nbytes)
        stream.synchronize()
        np.testing.assert_array_equal(target.array, source.array)
        for resource in (device, source, target):
            resource.free()
        stream.destroy()
    context.release()
    # Outside any context, allocation fails with the driver's own error, as a ModelLoadError.
    with pytest.raises(cuda_driver.CudaError, match="cuMemAlloc"):
        cuda_driver.DeviceBuffer(1024)


@pytest.mark.parametrize("stem", ["roi_cnn", "g_cnn"])
def test_backend_on_device_memory_matches_onnxruntime(driver, tmp_path, rng, stem):
    """Build (stand-in TensorRT) and run the shipped FP32 model through real device buffers."""
    import shutil

    from calibration.tensorrt_build import BuildConfig, build_engine
    from engine.backends import load_backend

    source = tmp_path / f"{stem}.onnx"
    shutil.copy(MODELS / source.name, source)
    engine = tmp_path / f"{stem}.plan"
    build_engine(source, engine, BuildConfig(max_batch=4, workspace_mb=64))
    backend = load_backend(engine)
    reference = load_backend(source, providers=["CPUExecutionProvider"])
    for batch_size in (1, 4, 2):
        batch = rng.standard_normal((batch_size, *reference.input_shape[1:])).astype(np.float32)
        np.testing.assert_allclose(backend.run(batch), reference.run(batch), rtol=1e-5, atol=1e-6)

    batches = [rng.standard_normal((1, *reference.input_shape[1:])).astype(np.float32) for _ in range(6)]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            results[index] = backend.run(batches[index])
        except BaseException as exc:  # reported below, with the thread's error
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for index, batch in enumerate(batches):
        np.testing.assert_allclose(results[index], reference.run(batch), rtol=1e-5, atol=1e-6)
    start = time.perf_counter()
    for _ in range(5):
        backend.run(batches[0])
    per_call_ms = (time.perf_counter() - start) / 5 * 1e3
    print(f"{stem}: {per_call_ms:.2f} ms per call (stand-in TensorRT runs ONNX Runtime on the CPU: not a "
          "TensorRT speed)")
    backend.close()
    assert int(driver.cuCtxGetCurrent()[1]) == 0
