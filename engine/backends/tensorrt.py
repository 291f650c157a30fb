"""TensorRT backend: a serialized engine (``.plan`` / ``.engine``) behind the engine interface.

Loading checks the engine's sidecar (``M.plan.json``, written by ``sonograde build-engine``,
``engine.backends.tensorrt_sidecar``) against this machine's TensorRT version, its CUDA major version and
the GPU, and the engine file against the SHA-256 the sidecar recorded; a mismatched engine is refused with
the command that rebuilds it. Running uses the TensorRT 10/11 I/O-tensor API on one CUDA stream: page-locked
host buffers and device buffers sized for the profile's largest batch, allocated once, bound by tensor name
with ``set_tensor_address``; per call ``set_input_shape``, an asynchronous host-to-device copy,
``execute_async_v3``, asynchronous device-to-host copies and one stream synchronize.

CUDA contexts are per thread: the backend retains the device's primary context and pushes it on the
calling thread around every CUDA or TensorRT call (``engine.backends.cuda_driver``), so it may be used
from any thread (the pipeline runs each stage in its own); a lock serializes calls because one execution
context is not reentrant.

TensorRT's messages go to standard error (``StderrLogger``): ``trt.Logger`` writes to the C++ standard
output, where they would land after (and inside) the JSON that commands print.

Needs ``tensorrt`` (>= 10.1) and ``cuda-python`` (the ``tensorrt`` extra); importing this module raises
ImportError where either is missing.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import numpy as np
import tensorrt as trt  # ImportError here tells load_backend that the backend is unavailable

from engine.backends import cuda_driver
from engine.backends.base import InferenceBackend, InputSpecError, ModelLoadError
from engine.backends.tensorrt_sidecar import check_engine, detect_environment, read_sidecar


class StderrLogger(trt.ILogger):
    """TensorRT's log on ``sys.stderr``, one line per message, from ``min_severity`` (WARNING) up."""

    def __init__(self, min_severity=None) -> None:
        trt.ILogger.__init__(self)
        self.min_severity = trt.ILogger.Severity.WARNING if min_severity is None else min_severity
        self.errors: list[str] = []  # the build/parse errors, for the exception that follows them

    def log(self, severity, msg) -> None:
        # Severity values: INTERNAL_ERROR 0 < ERROR 1 < WARNING 2 < INFO 3 < VERBOSE 4.
        if int(severity) <= int(trt.ILogger.Severity.ERROR):
            self.errors.append(str(msg))
        if int(severity) <= int(self.min_severity):
            print(f"[TensorRT {getattr(severity, 'name', severity)}] {msg}", file=sys.stderr, flush=True)


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
        self.path = Path(path)
        if not self.path.is_file() or self.path.stat().st_size == 0:
            raise ModelLoadError(f"TensorRT engine not found or empty: {self.path}")
        self.sidecar = read_sidecar(self.path)
        if check:
            check_engine(self.path, self.sidecar, detect_environment(device))
        self.metadata = dict(self.sidecar.metadata)
        self._lock = threading.Lock()
        self._device_buffers: dict[str, cuda_driver.DeviceBuffer] = {}
        self._host_buffers: dict[str, cuda_driver.PinnedBuffer] = {}
        self._stream: cuda_driver.Stream | None = None
        self._context_cuda = cuda_driver.PrimaryContext(cuda_driver.Device(device))
        try:
            with self._context_cuda.active():
                self._load()
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------------------------------- loading

    def _load(self) -> None:
        self._logger = StderrLogger()
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            detail = f" ({self._logger.errors[-1]})" if self._logger.errors else ""
            raise ModelLoadError(f"TensorRT could not deserialize {self.path}{detail}: corrupt, or built by "
                                 "another TensorRT version; rebuild it with `sonograde build-engine`")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1:
            raise ModelLoadError(f"{self.path}: {len(inputs)} inputs ({inputs}); sonograde models have one")
        self.input_name = inputs[0]
        self.output_names = tuple(outputs)
        dims = tuple(self._engine.get_tensor_shape(self.input_name))
        self.input_shape = tuple(int(d) if d >= 0 else None for d in dims)
        self.input_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self.input_name)))
        max_shape = tuple(int(d) for d in self._engine.get_tensor_profile_shape(self.input_name, 0)[2])
        self.max_batch = int(max_shape[0])

        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise ModelLoadError(f"TensorRT could not create an execution context for {self.path} "
                                 "(out of GPU memory?)")
        self._stream = cuda_driver.Stream()
        if not self._context.set_input_shape(self.input_name, max_shape):
            raise ModelLoadError(f"{self.path}: TensorRT rejected the profile's largest input {max_shape}")
        for name in names:
            shape = tuple(self._context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise ModelLoadError(f"{self.path}: tensor {name!r} has no size at the largest batch "
                                     f"({shape})")
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            host = self._host_buffers[name] = cuda_driver.PinnedBuffer(int(np.prod(shape)), dtype)
            device = self._device_buffers[name] = cuda_driver.DeviceBuffer(host.nbytes)
            # Addresses never change: buffers are allocated once for the largest batch.
            if not self._context.set_tensor_address(name, device.address):
                raise ModelLoadError(f"{self.path}: TensorRT refused the device address of tensor {name!r}")

    # ---------------------------------------------------------------------------------------- running

    def run_all(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = self.check_input(batch)
        if batch.shape[0] > self.max_batch:
            raise InputSpecError(f"{self.path.name}: batch of {batch.shape[0]} exceeds the engine's maximum "
                                 f"{self.max_batch}; rebuild with `sonograde build-engine --max-batch N`")
        with self._lock:
            if self._stream is None:
                raise RuntimeError(f"{self.path.name}: the TensorRT backend was closed")
            with self._context_cuda.active():
                return self._run_locked(batch)

    def _run_locked(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        host_in = self._host_buffers[self.input_name]
        host_in.array[:batch.size] = batch.ravel()
        if not self._context.set_input_shape(self.input_name, batch.shape):
            raise InputSpecError(f"{self.path.name}: TensorRT rejected input shape {batch.shape}")
        self._stream.copy_to_device(self._device_buffers[self.input_name], host_in.address, batch.nbytes)
        if not self._context.execute_async_v3(self._stream.handle):
            raise RuntimeError(f"{self.path.name}: TensorRT execution failed (see its log on stderr)")
        shapes = {}
        for name in self.output_names:
            shape = tuple(int(d) for d in self._context.get_tensor_shape(name))
            shapes[name] = shape
            host = self._host_buffers[name]
            nbytes = int(np.prod(shape)) * host.dtype.itemsize
            self._stream.copy_to_host(host.address, self._device_buffers[name], nbytes)
        self._stream.synchronize()
        return {name: self._host_buffers[name].array[:int(np.prod(shape))].reshape(shape).copy()
                for name, shape in shapes.items()}

    def describe(self) -> str:
        s = self.sidecar
        return (f"{super().describe()} [TensorRT {s.tensorrt_version}, {s.gpu_name}, {s.precision}, "
                f"max batch {self.max_batch}]")

    def close(self) -> None:
        """Free the buffers, the stream and the TensorRT objects now and release the CUDA context
        (otherwise when the process ends). Safe to call twice."""
        with self._lock:
            context = getattr(self, "_context_cuda", None)
            if context is None or context._released:
                return
            with context.active():
                for buffer in (*self._device_buffers.values(), *self._host_buffers.values()):
                    buffer.free()
                self._device_buffers.clear()
                self._host_buffers.clear()
                if self._stream is not None:
                    self._stream.destroy()
                    self._stream = None
                # TensorRT objects own GPU memory of this context: drop them while it is current.
                for attribute in ("_context", "_engine", "_runtime"):
                    if hasattr(self, attribute):
                        delattr(self, attribute)
            context.release()
