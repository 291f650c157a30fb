"""Stand-ins for the ``tensorrt`` and ``cuda.bindings.driver`` modules (see their docstrings), loaded
fresh for each test so that no state leaks between tests."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Modules of ours that bind tensorrt / cuda-python at import time: imported anew with the stand-ins.
BOUND_MODULES = ("engine.backends.tensorrt", "engine.backends.cuda_driver")
TENSORRT_10 = "10.16.1.11"
TENSORRT_11 = "11.1.0.8"


def _load(name: str, filename: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, HERE / filename)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # enum/dataclass machinery looks the module up while it executes
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def load_tensorrt(version: str = TENSORRT_10) -> types.ModuleType:
    """A fresh stand-in ``tensorrt`` module with the surface of ``version`` (suffix "+flag": an 11.x
    whose NetworkDefinitionCreationFlag still has STRONGLY_TYPED)."""
    module = _load("tensorrt", "fake_tensorrt.py")
    module.configure(module, version)
    return module


def load_cuda_driver() -> types.ModuleType:
    return _load("cuda.bindings.driver", "fake_cuda.py")


def purge_bound_modules() -> None:
    """Forget our modules bound to tensorrt / cuda-python, also as attributes of their package
    (``from engine.backends import cuda_driver`` takes the attribute before looking in sys.modules)."""
    for name in BOUND_MODULES:
        sys.modules.pop(name, None)
        parent, _, child = name.rpartition(".")
        if parent in sys.modules and hasattr(sys.modules[parent], child):
            delattr(sys.modules[parent], child)


def install(monkeypatch, *, tensorrt_version: str | None = TENSORRT_10, cuda: bool = True):
    """Put the stand-ins in ``sys.modules`` for one test (monkeypatch undoes it); returns
    (tensorrt module or None, cuda driver module or None). ``cuda=False`` keeps whatever cuda-python is
    installed (the real driver on a GPU machine)."""
    trt = driver = None
    if tensorrt_version is not None:
        trt = load_tensorrt(tensorrt_version)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
    if cuda:
        driver = load_cuda_driver()
        package, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
        package.__path__, bindings.__path__ = [], []
        package.bindings, bindings.driver = bindings, driver
        monkeypatch.setitem(sys.modules, "cuda", package)
        monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
        monkeypatch.setitem(sys.modules, "cuda.bindings.driver", driver)
    purge_bound_modules()
    return trt, driver
