"""The few CUDA driver calls the TensorRT path needs, through cuda-python (``cuda.bindings.driver``).

cuda-python is what TensorRT's own Python samples use; it supports CUDA 12 and 13 drivers (pycuda gained
CUDA 13 support only in 2025.1.2). Every call returns ``(CUresult, values...)``; ``_check`` turns a failed
result into ``CudaError``, a ``ModelLoadError`` that names the call and the driver's error, so callers of
``load_backend`` catch one error type. A driver that cannot be loaded at all (no NVIDIA driver: cuda-python
raises ``RuntimeError("Failed to dlopen libcuda.so.1")``) is reported the same way.

Contexts: the driver keeps a stack of current contexts per CPU thread. ``PrimaryContext`` retains a
device's primary context (the one the CUDA runtime, TensorRT and PyTorch share) and ``active()`` pushes it
on the calling thread's stack and pops it afterwards, so one object may be used from any thread.
Allocations, streams and copies need a current context: call them inside ``with context.active():``.

Importing this module raises ImportError where cuda-python is not installed.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from cuda.bindings import driver as cu  # ImportError: the TensorRT path is unavailable here

from engine.backends.base import ModelLoadError

NAME_LENGTH = 256  # bytes reserved for a device name (cuDeviceGetName)


class CudaError(ModelLoadError):
    """A CUDA driver call failed, or there is no usable NVIDIA driver or device."""


def _error_name(result) -> str:
    try:
        err, name = cu.cuGetErrorName(result)
        if err == cu.CUresult.CUDA_SUCCESS and name:
            return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # an unknown code: fall back to its number
        pass
    return f"CUresult {int(result)}"


def _check(result: tuple, what: str):
    """``(CUresult, *values)`` -> the value (or tuple of values, or None); CudaError on failure."""
    status, *values = result
    if status != cu.CUresult.CUDA_SUCCESS:
        raise CudaError(f"CUDA {what} failed: {_error_name(status)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


_init_lock = threading.Lock()
_initialized = False


def init() -> None:
    """Initialize the driver once per process; CudaError (with what to check) when it cannot start."""
    global _initialized
    with _init_lock:
        if _initialized:
            return
        try:
            status = cu.cuInit(0)[0]
        except RuntimeError as exc:  # cuda-python could not load libcuda.so at all
            raise CudaError(f"the NVIDIA driver cannot be loaded ({exc}); TensorRT engines need an NVIDIA "
                            "GPU with its driver installed (check `nvidia-smi`), otherwise use the .onnx "
                            "models with ONNX Runtime") from exc
        if status != cu.CUresult.CUDA_SUCCESS:
            raise CudaError(f"CUDA cannot start ({_error_name(status)}): is an NVIDIA GPU visible here? "
                            "Check `nvidia-smi` and CUDA_VISIBLE_DEVICES, or use the .onnx models with ONNX "
                            "Runtime")
        _initialized = True


def driver_version() -> int:
    """The CUDA version the driver supports, as 1000 * major + 10 * minor (13000 for CUDA 13.0)."""
    init()
    return int(_check(cu.cuDriverGetVersion(), "cuDriverGetVersion"))


class Device:
    """One CUDA device by index; CudaError when the index does not exist here."""

    def __init__(self, index: int = 0) -> None:
        init()
        count = int(_check(cu.cuDeviceGetCount(), "cuDeviceGetCount"))
        if not 0 <= index < count:
            raise CudaError(f"CUDA device {index} does not exist: this machine has {count} CUDA device(s) "
                            f"(0..{count - 1}); pass --device with one of them")
        self.index = index
        self.handle = _check(cu.cuDeviceGet(index), f"cuDeviceGet({index})")

    @property
    def name(self) -> str:
        raw = _check(cu.cuDeviceGetName(NAME_LENGTH, self.handle), "cuDeviceGetName")
        return raw.split(b"\0", 1)[0].decode(errors="replace").strip()

    @property
    def compute_capability(self) -> str:
        """"9.0" for an H100/H200."""
        attr = cu.CUdevice_attribute
        major, minor = (_check(cu.cuDeviceGetAttribute(which, self.handle), "cuDeviceGetAttribute")
                        for which in (attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                                      attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR))
        return f"{int(major)}.{int(minor)}"


class PrimaryContext:
    """The primary context of one device, retained until ``release``; ``active()`` makes it current in
    the calling thread for the duration of a ``with`` block."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.handle = _check(cu.cuDevicePrimaryCtxRetain(device.handle), "cuDevicePrimaryCtxRetain")
        self._released = False

    @contextmanager
    def active(self) -> Iterator[PrimaryContext]:
        if self._released:
            raise CudaError("the CUDA context was already released (the backend was closed)")
        _check(cu.cuCtxPushCurrent(self.handle), "cuCtxPushCurrent")
        try:
            yield self
        finally:
            popped = _check(cu.cuCtxPopCurrent(), "cuCtxPopCurrent")
            if int(popped) != int(self.handle):  # someone pushed without popping inside our block
                raise CudaError("CUDA context stack out of balance: popped another context than pushed")

    def release(self) -> None:
        if not self._released:
            self._released = True
            _check(cu.cuDevicePrimaryCtxRelease(self.device.handle), "cuDevicePrimaryCtxRelease")


class DeviceBuffer:
    """``nbytes`` of device memory (needs a current context to allocate and free)."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        self.pointer = _check(cu.cuMemAlloc(self.nbytes), f"cuMemAlloc({self.nbytes})")

    @property
    def address(self) -> int:
        return int(self.pointer)

    def free(self) -> None:
        if self.pointer is not None:
            _check(cu.cuMemFree(self.pointer), "cuMemFree")
            self.pointer = None


class PinnedBuffer:
    """Page-locked host memory seen as a flat numpy array of ``count`` items of ``dtype`` (asynchronous
    copies need page-locked memory; from pageable memory they are synchronous)."""

    def __init__(self, count: int, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self.nbytes = int(count) * self.dtype.itemsize
        self.address = int(_check(cu.cuMemAllocHost(self.nbytes), f"cuMemAllocHost({self.nbytes})"))
        raw = (ctypes.c_byte * self.nbytes).from_address(self.address)
        self.array = np.frombuffer(raw, dtype=self.dtype, count=int(count))

    def free(self) -> None:
        if self.address:
            self.array = None
            _check(cu.cuMemFreeHost(self.address), "cuMemFreeHost")
            self.address = 0


class Stream:
    """A CUDA stream of the current context; ``handle`` is what TensorRT's ``execute_async_v3`` takes."""

    def __init__(self) -> None:
        self.stream = _check(cu.cuStreamCreate(0), "cuStreamCreate")

    @property
    def handle(self) -> int:
        return int(self.stream)

    def copy_to_device(self, device: DeviceBuffer, host_address: int, nbytes: int) -> None:
        _check(cu.cuMemcpyHtoDAsync(device.pointer, host_address, nbytes, self.stream), "cuMemcpyHtoDAsync")

    def copy_to_host(self, host_address: int, device: DeviceBuffer, nbytes: int) -> None:
        _check(cu.cuMemcpyDtoHAsync(host_address, device.pointer, nbytes, self.stream), "cuMemcpyDtoHAsync")

    def synchronize(self) -> None:
        _check(cu.cuStreamSynchronize(self.stream), "cuStreamSynchronize")

    def destroy(self) -> None:
        if self.stream is not None:
            _check(cu.cuStreamDestroy(self.stream), "cuStreamDestroy")
            self.stream = None
