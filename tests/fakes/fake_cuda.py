"""A stand-in for ``cuda.bindings.driver`` (cuda-python) with the documented behaviour the backend relies on.

Every function returns a tuple whose first item is a ``CUresult``, as cuda-python does. The driver keeps a
stack of current contexts per CPU thread (``cuCtxPushCurrent`` / ``cuCtxPopCurrent``); allocations,
streams and copies need a current context in the *calling thread* and fail with
``CUDA_ERROR_INVALID_CONTEXT`` otherwise, and device memory or streams used while another device's context
is current fail too, so a call made outside ``PrimaryContext.active()`` or on the wrong device fails a test.
Device memory is host memory behind fake addresses; page-locked host memory is real (ctypes) memory whose
address numpy can view. ``load_failure`` simulates a machine without a driver (cuda-python's ``cuInit``
raises ``RuntimeError("Failed to dlopen libcuda.so.1")``), ``init_result`` a driver that refuses to start.
"""

# ruff: noqa: N802 - cuda-python's function and parameter names
from __future__ import annotations

import ctypes
import enum
import itertools
import threading
from dataclasses import dataclass, field


class CUresult(enum.IntEnum):
    CUDA_SUCCESS = 0
    CUDA_ERROR_INVALID_VALUE = 1
    CUDA_ERROR_OUT_OF_MEMORY = 2
    CUDA_ERROR_NOT_INITIALIZED = 3
    CUDA_ERROR_NO_DEVICE = 100
    CUDA_ERROR_INVALID_DEVICE = 101
    CUDA_ERROR_INVALID_CONTEXT = 201
    CUDA_ERROR_INVALID_HANDLE = 400


class CUdevice_attribute(enum.IntEnum):  # noqa: N801 - cuda-python's name
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


class _Handle:
    """cuda-python's handle types (CUdevice, CUcontext, CUstream, CUdeviceptr) convert with int()."""

    def __init__(self, value: int) -> None:
        self._value = int(value)

    def __int__(self) -> int:
        return self._value

    def __repr__(self) -> str:
        return f"<{type(self).__name__} 0x{self._value:x}>"


class CUdevice(_Handle):
    pass


class CUcontext(_Handle):
    pass


class CUstream(_Handle):
    pass


class CUdeviceptr(_Handle):
    pass


@dataclass
class FakeGpu:
    name: str = "NVIDIA H200"
    major: int = 9
    minor: int = 0
    memory_bytes: int = 1 << 30


@dataclass
class _Allocation:
    context: int
    data: bytearray


@dataclass
class _State:
    gpus: list[FakeGpu] = field(default_factory=lambda: [FakeGpu()])
    driver_version: int = 13000
    load_failure: bool = False
    init_result: CUresult = CUresult.CUDA_SUCCESS
    initialized: bool = False
    primary_refs: dict[int, int] = field(default_factory=dict)  # device -> retain count
    device_memory: dict[int, _Allocation] = field(default_factory=dict)
    host_memory: dict[int, ctypes.Array] = field(default_factory=dict)
    streams: dict[int, int] = field(default_factory=dict)  # stream -> context
    calls: list[tuple[str, int | None]] = field(default_factory=list)  # (name, current context)
    threads_seen: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


STATE = _State()
_local = threading.local()
_next_address = [0x7F00_0000_0000]  # device addresses: 256-byte aligned ranges that never overlap
_stream_ids = itertools.count(0x5000)
CONTEXT_BASE = 0xC0C0_0000


def reset(gpus: list[FakeGpu] | None = None, **options) -> _State:
    """Fresh driver state (one H200 unless ``gpus``); options: driver_version, load_failure, init_result."""
    global STATE
    STATE = _State(gpus=gpus or [FakeGpu()], **options)
    _local.__dict__.clear()
    return STATE


def _stack() -> list[int]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def _current() -> int | None:
    stack = _stack()
    return stack[-1] if stack else None


def _record(name: str) -> None:
    STATE.calls.append((name, _current()))
    STATE.threads_seen.add(threading.get_ident())


def _need_init() -> CUresult | None:
    return None if STATE.initialized else CUresult.CUDA_ERROR_NOT_INITIALIZED


def _need_context() -> CUresult | None:
    if not STATE.initialized:
        return CUresult.CUDA_ERROR_NOT_INITIALIZED
    context = _current()
    if context is None or STATE.primary_refs.get(context - CONTEXT_BASE, 0) <= 0:
        return CUresult.CUDA_ERROR_INVALID_CONTEXT
    return None


def context_device(context: int) -> int:
    return context - CONTEXT_BASE


# ------------------------------------------------------------------------------------- init and devices

def cuInit(flags: int):
    if STATE.load_failure:
        raise RuntimeError("Failed to dlopen libcuda.so.1")
    _record("cuInit")
    if STATE.init_result != CUresult.CUDA_SUCCESS:
        return (STATE.init_result,)
    if not STATE.gpus:
        return (CUresult.CUDA_ERROR_NO_DEVICE,)
    STATE.initialized = True
    return (CUresult.CUDA_SUCCESS,)


def cuGetErrorName(error):
    try:
        return (CUresult.CUDA_SUCCESS, CUresult(int(error)).name.encode())
    except ValueError:
        return (CUresult.CUDA_ERROR_INVALID_VALUE, None)


def cuDriverGetVersion():
    return (CUresult.CUDA_SUCCESS, STATE.driver_version)


def cuDeviceGetCount():
    return (_need_init() or CUresult.CUDA_SUCCESS, len(STATE.gpus))


def cuDeviceGet(ordinal: int):
    if (err := _need_init()) is not None:
        return (err, None)
    if not 0 <= ordinal < len(STATE.gpus):
        return (CUresult.CUDA_ERROR_INVALID_DEVICE, None)
    return (CUresult.CUDA_SUCCESS, CUdevice(ordinal))


def cuDeviceGetName(length: int, dev):
    if (err := _need_init()) is not None:
        return (err, None)
    name = STATE.gpus[int(dev)].name.encode()[:length - 1]
    return (CUresult.CUDA_SUCCESS, name + b"\0" * (length - len(name)))


def cuDeviceGetAttribute(attrib, dev):
    gpu = STATE.gpus[int(dev)]
    if attrib == CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR:
        return (CUresult.CUDA_SUCCESS, gpu.major)
    if attrib == CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR:
        return (CUresult.CUDA_SUCCESS, gpu.minor)
    return (CUresult.CUDA_ERROR_INVALID_VALUE, 0)


# ------------------------------------------------------------------------------------------- contexts

def cuDevicePrimaryCtxRetain(dev):
    if (err := _need_init()) is not None:
        return (err, None)
    with STATE.lock:
        STATE.primary_refs[int(dev)] = STATE.primary_refs.get(int(dev), 0) + 1
    _record("cuDevicePrimaryCtxRetain")
    return (CUresult.CUDA_SUCCESS, CUcontext(CONTEXT_BASE + int(dev)))


def cuDevicePrimaryCtxRelease(dev):
    with STATE.lock:
        if STATE.primary_refs.get(int(dev), 0) <= 0:
            return (CUresult.CUDA_ERROR_INVALID_CONTEXT,)
        STATE.primary_refs[int(dev)] -= 1
    _record("cuDevicePrimaryCtxRelease")
    return (CUresult.CUDA_SUCCESS,)


def cuCtxPushCurrent(ctx):
    if (err := _need_init()) is not None:
        return (err,)
    if STATE.primary_refs.get(context_device(int(ctx)), 0) <= 0:
        return (CUresult.CUDA_ERROR_INVALID_CONTEXT,)
    _stack().append(int(ctx))
    _record("cuCtxPushCurrent")
    return (CUresult.CUDA_SUCCESS,)


def cuCtxPopCurrent():
    stack = _stack()
    if not stack:
        return (CUresult.CUDA_ERROR_INVALID_CONTEXT, None)
    _record("cuCtxPopCurrent")
    return (CUresult.CUDA_SUCCESS, CUcontext(stack.pop()))


def cuCtxGetCurrent():
    context = _current()
    return (CUresult.CUDA_SUCCESS, CUcontext(context or 0))


def cuCtxGetDevice():
    if (err := _need_context()) is not None:
        return (err, None)
    return (CUresult.CUDA_SUCCESS, CUdevice(context_device(_current())))


# --------------------------------------------------------------------------------------------- memory

def cuMemAlloc(bytesize: int):
    if (err := _need_context()) is not None:
        return (err, None)
    if bytesize <= 0:
        return (CUresult.CUDA_ERROR_INVALID_VALUE, None)
    gpu = STATE.gpus[context_device(_current())]
    in_use = sum(len(a.data) for a in STATE.device_memory.values())
    if in_use + bytesize > gpu.memory_bytes:
        return (CUresult.CUDA_ERROR_OUT_OF_MEMORY, None)
    with STATE.lock:
        address = _next_address[0]
        _next_address[0] += (bytesize + 4096 + 255) // 256 * 256  # a gap: overruns hit no allocation
    STATE.device_memory[address] = _Allocation(_current(), bytearray(bytesize))
    _record("cuMemAlloc")
    return (CUresult.CUDA_SUCCESS, CUdeviceptr(address))


def cuMemFree(dptr):
    if (err := _need_context()) is not None:
        return (err,)
    allocation = STATE.device_memory.get(int(dptr))
    if allocation is None or allocation.context != _current():
        return (CUresult.CUDA_ERROR_INVALID_VALUE,)
    del STATE.device_memory[int(dptr)]
    _record("cuMemFree")
    return (CUresult.CUDA_SUCCESS,)


def cuMemAllocHost(bytesize: int):
    if (err := _need_context()) is not None:
        return (err, None)
    buffer = (ctypes.c_byte * bytesize)()
    address = ctypes.addressof(buffer)
    STATE.host_memory[address] = buffer
    _record("cuMemAllocHost")
    return (CUresult.CUDA_SUCCESS, address)


def cuMemFreeHost(p):
    if (err := _need_context()) is not None:
        return (err,)
    if STATE.host_memory.pop(int(p), None) is None:
        return (CUresult.CUDA_ERROR_INVALID_VALUE,)
    _record("cuMemFreeHost")
    return (CUresult.CUDA_SUCCESS,)


def _device_view(dptr, nbytes: int) -> memoryview | CUresult:
    """The device bytes [dptr, dptr + nbytes) of an allocation of the current context."""
    address = int(dptr)
    for base, allocation in STATE.device_memory.items():
        if base <= address < base + len(allocation.data):
            if allocation.context != _current():
                return CUresult.CUDA_ERROR_INVALID_VALUE  # another device's memory
            if address + nbytes > base + len(allocation.data):
                return CUresult.CUDA_ERROR_INVALID_VALUE
            return memoryview(allocation.data)[address - base:address - base + nbytes]
    return CUresult.CUDA_ERROR_INVALID_VALUE


def _host_address(src) -> int:
    return int(src) if not hasattr(src, "ctypes") else int(src.ctypes.data)


def _copy_to_device(dst, src, nbytes: int) -> CUresult:
    view = _device_view(dst, nbytes)
    if isinstance(view, CUresult):
        return view
    ctypes.memmove((ctypes.c_char * nbytes).from_buffer(view), _host_address(src), nbytes)
    return CUresult.CUDA_SUCCESS


def _copy_to_host(dst, src, nbytes: int) -> CUresult:
    view = _device_view(src, nbytes)
    if isinstance(view, CUresult):
        return view
    ctypes.memmove(_host_address(dst), (ctypes.c_char * nbytes).from_buffer(view), nbytes)
    return CUresult.CUDA_SUCCESS


def _check_stream(hStream) -> CUresult | None:
    owner = STATE.streams.get(int(hStream))
    if owner is None:
        return CUresult.CUDA_ERROR_INVALID_HANDLE
    if owner != _current():
        return CUresult.CUDA_ERROR_INVALID_CONTEXT
    return None


def cuMemcpyHtoDAsync(dstDevice, srcHost, ByteCount: int, hStream):
    if (err := _need_context() or _check_stream(hStream)) is not None:
        return (err,)
    _record("cuMemcpyHtoDAsync")
    return (_copy_to_device(dstDevice, srcHost, ByteCount),)


def cuMemcpyDtoHAsync(dstHost, srcDevice, ByteCount: int, hStream):
    if (err := _need_context() or _check_stream(hStream)) is not None:
        return (err,)
    _record("cuMemcpyDtoHAsync")
    return (_copy_to_host(dstHost, srcDevice, ByteCount),)


def cuMemcpyHtoD(dstDevice, srcHost, ByteCount: int):
    if (err := _need_context()) is not None:
        return (err,)
    return (_copy_to_device(dstDevice, srcHost, ByteCount),)


def cuMemcpyDtoH(dstHost, srcDevice, ByteCount: int):
    if (err := _need_context()) is not None:
        return (err,)
    return (_copy_to_host(dstHost, srcDevice, ByteCount),)


# -------------------------------------------------------------------------------------------- streams

def cuStreamCreate(Flags: int):
    if (err := _need_context()) is not None:
        return (err, None)
    handle = next(_stream_ids)
    STATE.streams[handle] = _current()
    _record("cuStreamCreate")
    return (CUresult.CUDA_SUCCESS, CUstream(handle))


def cuStreamSynchronize(hStream):
    if (err := _need_context() or _check_stream(hStream)) is not None:
        return (err,)
    _record("cuStreamSynchronize")
    return (CUresult.CUDA_SUCCESS,)


def cuStreamDestroy(hStream):
    if (err := _need_context() or _check_stream(hStream)) is not None:
        return (err,)
    del STATE.streams[int(hStream)]
    _record("cuStreamDestroy")
    return (CUresult.CUDA_SUCCESS,)
