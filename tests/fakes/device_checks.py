"""Checks of the CUDA half of the TensorRT backend, with the stand-in TensorRT and either cuda driver.

On a GPU machine with cuda-python but without TensorRT, run ``python tests/fakes/device_checks.py``
(``scripts/gpu-check.sh --cuda`` does): each check runs with the real cuda-python driver, a table says
what passed, and the exit status is 0 only when all did (2: something to install first). The same checks
run in CI with the stand-in driver (tests/test_tensorrt_cuda_device.py). Needs numpy, onnxruntime and
cuda-python; pytest and onnx are not needed. A check raises AssertionError (or the backend's error) on
failure.
"""

from __future__ import annotations

import importlib
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"


def check_device_and_context(cu) -> str:
    from engine.backends import cuda_driver

    device = cuda_driver.Device(0)
    assert device.name and "." in device.compute_capability, (device.name, device.compute_capability)
    version = cuda_driver.driver_version()
    assert version >= 12000, version
    before = int(cu.cuCtxGetCurrent()[1])
    context = cuda_driver.PrimaryContext(device)
    with context.active():
        assert int(cu.cuCtxGetCurrent()[1]) == int(context.handle), "pushed context is not current"
    assert int(cu.cuCtxGetCurrent()[1]) == before, "the thread's context changed after the pop"
    context.release()
    try:
        cuda_driver.Device(99)
    except cuda_driver.CudaError as exc:
        assert "does not exist" in str(exc), exc
    else:
        raise AssertionError("device 99 accepted")
    cuda = f"{version // 1000}.{version % 1000 // 10}"
    return f"{device.name}, cc {device.compute_capability}, driver for CUDA {cuda}"


def check_copies(cu, rng: np.random.Generator) -> str:
    from engine.backends import cuda_driver

    context = cuda_driver.PrimaryContext(cuda_driver.Device(0))
    count = 1 << 22  # 16 MiB of float32
    with context.active():
        source, target = (cuda_driver.PinnedBuffer(count, np.float32) for _ in range(2))
        device = cuda_driver.DeviceBuffer(source.nbytes)
        stream = cuda_driver.Stream()
        source.array[:] = rng.standard_normal(count).astype(np.float32)
        target.array[:] = 0
        start = time.perf_counter()
        stream.copy_to_device(device, source.address, source.nbytes)
        stream.copy_to_host(target.address, device, source.nbytes)
        stream.synchronize()
        seconds = time.perf_counter() - start
        assert np.array_equal(target.array, source.array), "data changed on the round trip"
        for resource in (device, source, target):
            resource.free()
        stream.destroy()
    context.release()
    try:
        cuda_driver.DeviceBuffer(1024)  # no context current in this thread now
    except cuda_driver.CudaError as exc:
        assert "cuMemAlloc" in str(exc), exc
    else:
        raise AssertionError("allocation without a current context succeeded")
    return f"16 MiB there and back in {seconds * 1e3:.1f} ms; allocation outside a context refused"


def check_backend(cu, rng: np.random.Generator, stem: str, workdir: Path) -> str:
    """Build (stand-in TensorRT) and run a shipped FP32 model through real device buffers, from several
    threads at once, against ONNX Runtime on the CPU; then close and check the context stack."""
    from calibration.tensorrt_build import BuildConfig, build_engine
    from engine.backends import load_backend

    source = workdir / f"{stem}.onnx"
    shutil.copy(MODELS / source.name, source)
    engine = workdir / f"{stem}.plan"
    build_engine(source, engine, BuildConfig(max_batch=4, workspace_mb=64))
    backend = load_backend(engine)
    reference = load_backend(source, providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch_size in (1, 4, 2):
        batch = rng.standard_normal((batch_size, *reference.input_shape[1:])).astype(np.float32)
        worst = max(worst, float(np.abs(backend.run(batch) - reference.run(batch)).max()))
    batches = [rng.standard_normal((1, *reference.input_shape[1:])).astype(np.float32) for _ in range(6)]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            results[index] = backend.run(batches[index])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, f"a thread failed: {errors[0]!r}"
    for index, batch in enumerate(batches):
        worst = max(worst, float(np.abs(results[index] - reference.run(batch)).max()))
    assert worst <= 1e-5, f"largest difference from ONNX Runtime {worst:g}"
    backend.close()
    assert int(cu.cuCtxGetCurrent()[1]) == 0, "a context was left current"
    return f"batches 1/4/2 and 6 threads agree with ONNX Runtime (max diff {worst:.1e}); closed cleanly"


def checks(cu, workdir: Path, rng: np.random.Generator) -> list[tuple[str, Callable[[], str]]]:
    return [
        ("driver, device, context", lambda: check_device_and_context(cu)),
        ("pinned/device copies", lambda: check_copies(cu, rng)),
        ("backend roi_cnn", lambda: check_backend(cu, rng, "roi_cnn", workdir)),
        ("backend g_cnn", lambda: check_backend(cu, rng, "g_cnn", workdir)),
    ]


def _install_stand_in_tensorrt() -> None:
    """Stand-in TensorRT in sys.modules; the real cuda-python stays."""
    for folder in (str(REPO / "tests"), str(REPO)):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    import fakes

    sys.modules["tensorrt"] = fakes.load_tensorrt(fakes.TENSORRT_10)
    fakes.purge_bound_modules()


def main(*, install_tensorrt: bool = True) -> int:
    """Run every check with the cuda driver importable as ``cuda.bindings.driver``; print the table.
    ``install_tensorrt=False``: the caller has put a stand-in TensorRT in place already (tests)."""
    missing = []
    for module in ("numpy", "onnxruntime", "cuda.bindings.driver"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            missing.append(f"{module} ({exc})")
    if missing:
        print("device check: missing " + "; ".join(missing) + ". cuda.bindings comes from the cuda-bindings "
              "wheel (with cuda-pathfinder)", file=sys.stderr)
        return 2
    if install_tensorrt:
        _install_stand_in_tensorrt()
    from cuda.bindings import driver as cu

    rows = []
    with tempfile.TemporaryDirectory(prefix="sonograde-cuda-check-") as tmp:
        for name, run in checks(cu, Path(tmp), np.random.default_rng(2026)):
            start = time.perf_counter()
            try:
                detail, ok = run(), True
            except BaseException as exc:  # every check reports, none ends the run
                detail, ok = f"{type(exc).__name__}: {exc}"[:300], False
                traceback.print_exc(file=sys.stderr)
            rows.append((name, ok, time.perf_counter() - start, detail))
    print(f"\n{'check':<26} {'result':<7} {'s':>6}  detail")
    for name, ok, seconds, detail in rows:
        print(f"{name:<26} {'ok' if ok else 'FAILED':<7} {seconds:>6.1f}  {detail}")
    print("(stand-in TensorRT runs the models with ONNX Runtime on the CPU: times are not TensorRT speeds)")
    return 0 if all(ok for _, ok, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
