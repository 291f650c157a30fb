"""TensorRT backend: a serialized engine (``.plan`` / ``.engine``) behind the engine interface.

Loading checks the engine's sidecar (``M.plan.json``, written by ``sonograde build-engine``) against this
machine's TensorRT version and GPU and refuses a mismatched engine with the command that rebuilds it
(``calibration.sidecar``). Running uses the TensorRT 10 tensor API on one CUDA stream: page-locked
(pinned) host buffers and device buffers sized for the profile's largest batch, allocated once;
``set_input_shape`` for the batch, ``set_tensor_address`` for every I/O tensor, asynchronous
host-to-device copy, ``execute_async_v3``, asynchronous device-to-host copies, one stream synchronize.

CUDA contexts are per thread: the backend holds the device's primary context and pushes it around each
call, so it may be used from any thread (the pipeline runs each stage in its own); a lock serializes
calls because one execution context is not reentrant.

Needs ``tensorrt`` (>= 10.1) and ``pycuda`` (the ``tensorrt`` extra). UNVERIFIED: written without a GPU;
``scripts/gpu-check.sh`` exercises it on a GPU machine.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pycuda.driver as cuda  # ImportError here tells load_backend that the backend is unavailable
import tensorrt as trt

from engine.backends.base import InferenceBackend, InputSpecError, ModelLoadError


class TensorRTBackend(InferenceBackend):
    """One TensorRT engine and execution context.

    Parameters
    ----------
    path : the serialized engine; its sidecar ``path + ".json"`` must exist and match this machine.
    device : CUDA device index (default 0).
    check : compare the sidecar with this machine (default True; False only for inspection tools).
    """

    name = "tensorrt"

    def __init__(self, path: str | os.PathLike, *, device: int = 0, check: bool = True) -> None:
        from calibration.sidecar import check_engine, detect_environment, read_sidecar

        self.path = Path(path)
        if not self.path.is_file() or self.path.stat().st_size == 0:
            raise ModelLoadError(f"TensorRT engine not found or empty: {self.path}")
        self.sidecar = read_sidecar(self.path)
        if check:
            check_engine(self.path, self.sidecar, detect_environment(device))
        self.metadata = dict(self.sidecar.metadata)
        self._lock = threading.Lock()
        cuda.init()
        self._cuda_context = cuda.Device(device).retain_primary_context()
        self._cuda_context.push()
        try:
            self._load()
        finally:
            cuda.Context.pop()

    # ---------------------------------------------------------------------------------------- loading

    def _load(self) -> None:
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise ModelLoadError(f"TensorRT could not deserialize {self.path} (corrupt, or built by another "
                                 "TensorRT version); rebuild it with `sonograde build-engine`")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1:
            raise ModelLoadError(f"{self.path}: {len(inputs)} inputs ({inputs}); sonograde models have one")
        self.input_name = inputs[0]
        self.output_names = tuple(outputs)
        dims = self._engine.get_tensor_shape(self.input_name)
        self.input_shape = tuple(d if d >= 0 else None for d in dims)
        self.input_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self.input_name)))
        max_shape = tuple(self._engine.get_tensor_profile_shape(self.input_name, 0)[2])
        self.max_batch = int(max_shape[0])

        self._context = self._engine.create_execution_context()
        self._stream = cuda.Stream()
        self._context.set_input_shape(self.input_name, max_shape)
        self._host: dict[str, np.ndarray] = {}
        self._device: dict[str, cuda.DeviceAllocation] = {}
        for name in names:
            shape = tuple(self._context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise ModelLoadError(f"{self.path}: tensor {name!r} has no size at the largest batch "
                                     f"({shape})")
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            size = int(np.prod(shape))
            self._host[name] = cuda.pagelocked_empty(size, dtype)
            self._device[name] = cuda.mem_alloc(self._host[name].nbytes)
            # Addresses never change: buffers are allocated once for the largest batch.
            self._context.set_tensor_address(name, int(self._device[name]))

    # ---------------------------------------------------------------------------------------- running

    def run_all(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = self.check_input(batch)
        if batch.shape[0] > self.max_batch:
            raise InputSpecError(f"{self.path.name}: batch of {batch.shape[0]} exceeds the engine's maximum "
                                 f"{self.max_batch}; rebuild with `sonograde build-engine --max-batch N`")
        with self._lock:
            self._cuda_context.push()
            try:
                return self._run_locked(batch)
            finally:
                cuda.Context.pop()

    def _run_locked(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        host_in = self._host[self.input_name][:batch.size]
        host_in[:] = batch.ravel()
        if not self._context.set_input_shape(self.input_name, batch.shape):
            raise InputSpecError(f"{self.path.name}: TensorRT rejected input shape {batch.shape}")
        cuda.memcpy_htod_async(self._device[self.input_name], host_in, self._stream)
        if not self._context.execute_async_v3(self._stream.handle):
            raise RuntimeError(f"{self.path.name}: TensorRT execution failed")
        shapes = {}
        for name in self.output_names:
            shape = tuple(self._context.get_tensor_shape(name))
            shapes[name] = shape
            cuda.memcpy_dtoh_async(self._host[name][:int(np.prod(shape))], self._device[name], self._stream)
        self._stream.synchronize()
        return {name: self._host[name][:int(np.prod(shape))].reshape(shape).copy()
                for name, shape in shapes.items()}

    def describe(self) -> str:
        s = self.sidecar
        return (f"{super().describe()} [TensorRT {s.tensorrt_version}, {s.gpu_name}, {s.precision}, "
                f"max batch {self.max_batch}]")

    def close(self) -> None:
        """Free device buffers now (otherwise when the object is collected)."""
        with self._lock:
            self._cuda_context.push()
            try:
                for allocation in self._device.values():
                    allocation.free()
                self._device.clear()
            finally:
                cuda.Context.pop()
