"""The CUDA half of the TensorRT backend (tests/fakes/device_checks.py), with the stand-in TensorRT.

Each check runs twice: with the stand-in cuda driver (always, so CI covers the checks themselves) and with
the real cuda-python driver (skipped where cuda-python or a GPU is missing; ``SONOGRADE_REQUIRE_GPU=1``
turns that skip into a failure). On a GPU machine without pytest, ``python tests/fakes/device_checks.py``
runs the real-driver half and prints a table (``scripts/gpu-check.sh --cuda``).
"""

from __future__ import annotations

import os
import sys

import pytest
from fakes import install, purge_bound_modules
from fakes.device_checks import check_backend, check_copies, check_device_and_context, main


def _real_driver_problem() -> str | None:
    try:
        from cuda.bindings import driver
    except ImportError:
        return "cuda-python (cuda-bindings) is not installed"
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
    assert ", cc " in check_device_and_context(driver)


def test_copies_round_trip_through_device_memory(driver, rng):
    assert "refused" in check_copies(driver, rng)


@pytest.mark.parametrize("stem", ["roi_cnn", "g_cnn"])
def test_backend_on_device_memory_matches_onnxruntime(driver, tmp_path, rng, stem):
    assert "closed cleanly" in check_backend(driver, rng, stem, tmp_path)


def test_device_check_runner_table_and_exit_status(monkeypatch, capsys):
    """`python tests/fakes/device_checks.py` as gpu-check.sh --cuda runs it, here on the stand-in driver and
    without the onnx package (a runtime-only GPU machine)."""
    _, driver = install(monkeypatch)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx fails: the ONNX Runtime paths are used
    try:
        assert main(install_tensorrt=False) == 0
        table = capsys.readouterr().out
        for row in ("driver, device, context", "pinned/device copies", "backend roi_cnn", "backend g_cnn"):
            assert f"{row:<26} ok" in table
        driver.reset(load_failure=True)  # a machine whose driver cannot be loaded
        purge_bound_modules()
        assert main(install_tensorrt=False) == 1
        table = capsys.readouterr().out
        assert f"{'backend g_cnn':<26} FAILED" in table and "NVIDIA driver cannot be loaded" in table
    finally:
        purge_bound_modules()
