"""A stand-in for the ``tensorrt`` Python bindings (10.x and 11.x) that follows their documented behaviour.

What it checks, so that a wrong call fails a test:
- network creation flags: TensorRT 10 has ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` (deprecated,
  ignored) and ``STRONGLY_TYPED``; TensorRT 11 has no explicit-batch flag and no precision builder flags
  (``BuilderFlag.FP16`` / ``INT8``) and its networks are always strongly typed. Unknown flag bits raise.
  The engine records whether its network was strongly typed.
- the ONNX parser: standard-domain ops only, INT8 QuantizeLinear/DequantizeLinear with zero points 0 only
  (TensorRT's explicit quantization is symmetric); errors through ``num_errors`` / ``get_error``.
- builder: a dynamic input needs an optimization profile with min <= opt <= max; the build needs a CUDA
  context current in the calling thread and builds for that context's device.
- timing cache: ``create_timing_cache`` returns None for a cache of another TensorRT version and raises
  for damaged bytes; ``set_timing_cache(cache, ignore_mismatch=False)`` returns False for a cache of
  another GPU.
- runtime: ``deserialize_cuda_engine`` returns None (and logs an error) for an engine of another TensorRT
  version or GPU or for bytes that are not an engine; it needs a current CUDA context.
- execution: I/O tensors are bound by name (``set_tensor_address``), input shapes set with
  ``set_input_shape`` within the profile; ``execute_async_v3(stream)`` needs a CUDA context current in the
  calling thread, every address bound and every input shape set, else it logs an error and returns False.
  It synchronizes the stream, reads the inputs from device memory, runs the ONNX model with ONNX Runtime
  on the CPU and writes the outputs to device memory, all through ``cuda.bindings.driver`` - the stand-in
  of ``fake_cuda`` in tests, the real driver on a GPU machine without TensorRT (``gpu-check.sh --cuda``).
- logging: ``trt.Logger`` writes to file descriptor 1, as TensorRT's C++ logger writes to the C++ standard
  output; a ``trt.ILogger`` subclass receives ``log(severity, msg)``.

``configure(module, version)`` gives a fresh module the surface of that TensorRT version.
"""

from __future__ import annotations

import enum
import json
import os
import struct

import numpy as np

__version__ = "10.16.1.11"
ENGINE_MAGIC = b"FAKETRT1"
CACHE_MAGIC = b"FAKETCACHE1"
STANDARD_DOMAINS = ("", "ai.onnx")


# ------------------------------------------------------------------------------------------- logging

class ILogger:
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    def __init__(self) -> None:
        self._initialized = True

    def log(self, severity, msg) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class Logger(ILogger):
    """TensorRT's own logger: prints on the process's standard output (file descriptor 1)."""

    INTERNAL_ERROR = ILogger.Severity.INTERNAL_ERROR
    ERROR = ILogger.Severity.ERROR
    WARNING = ILogger.Severity.WARNING
    INFO = ILogger.Severity.INFO
    VERBOSE = ILogger.Severity.VERBOSE

    def __init__(self, min_severity=ILogger.Severity.WARNING) -> None:
        super().__init__()
        self.min_severity = min_severity

    def log(self, severity, msg) -> None:
        if severity <= self.min_severity:
            os.write(1, f"[TRT] [{severity.name[0]}] {msg}\n".encode())


def _log(logger: ILogger, severity: ILogger.Severity, message: str) -> None:
    logger.log(severity, message)


def _require_logger(logger) -> ILogger:
    if not isinstance(logger, ILogger) or not getattr(logger, "_initialized", False):
        raise TypeError("incompatible constructor arguments: logger must be a tensorrt.ILogger whose "
                        "__init__ was called")
    return logger


# ------------------------------------------------------------------------------------------- types

class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    INT64 = 8


_NUMPY = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
          DataType.INT32: np.int32, DataType.BOOL: np.bool_, DataType.UINT8: np.uint8,
          DataType.INT64: np.int64}
_FROM_ONNX = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 9: DataType.BOOL,
              2: DataType.UINT8, 7: DataType.INT64}


def nptype(trt_type: DataType):
    return _NUMPY[DataType(trt_type)]


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1


class Dims(tuple):
    pass


class IHostMemory(bytearray):
    """Serialized engine or cache; supports the buffer protocol like the real IHostMemory."""

    @property
    def nbytes(self) -> int:
        return len(self)


# ------------------------------------------------------------------------------------------- CUDA side

def _cuda():
    from cuda.bindings import driver

    return driver


def _ok(result) -> bool:
    return int(result[0]) == 0


def _current_device() -> tuple[str, str] | None:
    """(name, compute capability) of the device whose context is current in this thread, else None."""
    cu = _cuda()
    status, context = cu.cuCtxGetCurrent()
    if not _ok((status,)) or context is None or int(context) == 0:
        return None
    status, device = cu.cuCtxGetDevice()
    if not _ok((status,)):
        return None
    attr = cu.CUdevice_attribute
    major = cu.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device)[1]
    minor = cu.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device)[1]
    name = cu.cuDeviceGetName(256, device)[1].split(b"\0", 1)[0].decode()
    return name, f"{int(major)}.{int(minor)}"


# ------------------------------------------------------------------------------------------- network

class ITensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: DataType) -> None:
        self.name, self.shape, self.dtype = name, Dims(shape), dtype


class INetworkDefinition:
    def __init__(self, strongly_typed: bool) -> None:
        self.strongly_typed = strongly_typed
        self._inputs: list[ITensor] = []
        self._outputs: list[ITensor] = []
        self.onnx_bytes = b""

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_input(self, index: int) -> ITensor:
        return self._inputs[index]

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]


class ParserError:
    def __init__(self, node: str, text: str) -> None:
        self.node_name, self.text = node, text

    def desc(self) -> str:
        return self.text

    def __str__(self) -> str:
        return f"In node {self.node_name}: {self.text}"


def _value_shape(value) -> tuple[int, ...]:
    return tuple(d.dim_value if d.dim_value > 0 else -1 for d in value.type.tensor_type.shape.dim)


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger) -> None:
        self.network, self.logger = network, _require_logger(logger)
        self._errors: list[ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> ParserError:
        return self._errors[index]

    def clear_errors(self) -> None:
        self._errors.clear()

    def parse_from_file(self, model: str) -> bool:
        try:
            import onnx
            from onnx import numpy_helper
        except ImportError:  # a GPU machine with ONNX Runtime but without onnx: I/O only, no op checks
            return self._parse_with_onnxruntime(model)
        try:
            with open(model, "rb") as f:
                data = f.read()
            proto = onnx.load_from_string(data)
        except Exception as exc:  # the real parser reports, it does not raise
            self._errors.append(ParserError("", f"failed to parse ONNX model: {exc}"))
            return False
        opset = max((o.version for o in proto.opset_import if o.domain in STANDARD_DOMAINS), default=0)
        if opset < 13:
            self._errors.append(ParserError("", f"opset {opset}: per-channel quantization needs opset 13"))
        weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
        for node in proto.graph.node:
            if node.domain not in STANDARD_DOMAINS:
                self._errors.append(ParserError(node.name, f"no importer registered for op {node.domain}::"
                                                           f"{node.op_type}"))
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
                zero = weights.get(node.input[2])
                if zero is not None and np.any(zero != 0):
                    self._errors.append(ParserError(node.name, "TensorRT only supports symmetric "
                                                               "quantization: the zero point must be 0"))
                if zero is not None and zero.dtype != np.int8:
                    self._errors.append(ParserError(node.name, f"unsupported zero point type {zero.dtype}"))
        if self._errors:
            return False
        names = set(weights)
        for value in proto.graph.input:
            if value.name not in names:
                self.network._inputs.append(ITensor(value.name, _value_shape(value),
                                                    _FROM_ONNX[value.type.tensor_type.elem_type]))
        for value in proto.graph.output:
            self.network._outputs.append(ITensor(value.name, _value_shape(value),
                                                 _FROM_ONNX[value.type.tensor_type.elem_type]))
        self.network.onnx_bytes = data
        return True

    def _parse_with_onnxruntime(self, model: str) -> bool:
        import onnxruntime as ort

        types = {"tensor(float)": DataType.FLOAT, "tensor(float16)": DataType.HALF,
                 "tensor(int8)": DataType.INT8, "tensor(int64)": DataType.INT64}
        with open(model, "rb") as f:
            data = f.read()
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])

        def shape(value) -> tuple[int, ...]:
            return tuple(d if isinstance(d, int) and d > 0 else -1 for d in value.shape)

        self.network._inputs = [ITensor(v.name, shape(v), types[v.type]) for v in session.get_inputs()]
        self.network._outputs = [ITensor(v.name, shape(v), types[v.type]) for v in session.get_outputs()]
        self.network.onnx_bytes = data
        return True


# ------------------------------------------------------------------------------------------- builder

class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}
        self.valid = True

    def set_shape(self, input: str, min, opt, max) -> None:  # the bindings' parameter names
        lo, mid, hi = (tuple(int(d) for d in s) for s in (min, opt, max))
        if not len(lo) == len(mid) == len(hi) or any(
                not a <= b <= c for a, b, c in zip(lo, mid, hi, strict=True)):
            self.valid = False
        self.shapes[input] = (lo, mid, hi)


class ITimingCache:
    def __init__(self, version: str | None, compute_capability: str | None, entries: int = 0) -> None:
        self.version, self.compute_capability, self.entries = version, compute_capability, entries

    def serialize(self) -> IHostMemory:
        header = json.dumps({"version": self.version, "cc": self.compute_capability,
                             "entries": self.entries}).encode()
        return IHostMemory(CACHE_MAGIC + header)

    def combine(self, input_cache: ITimingCache, ignore_mismatch: bool) -> bool:
        if input_cache.version != self.version:
            return False
        if input_cache.compute_capability != self.compute_capability and not ignore_mismatch:
            return False
        self.entries += input_cache.entries
        return True

    def reset(self) -> bool:
        self.entries = 0
        return True


class IBuilderConfig:
    def __init__(self, logger: ILogger) -> None:
        self._logger = logger
        self.pool_limits: dict[MemoryPoolType, int] = {}
        self.profiles: list[IOptimizationProfile] = []
        self.timing_cache: ITimingCache | None = None
        self.flags = 0

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        if int(pool_size) < 0:
            raise ValueError("pool size must be >= 0")
        self.pool_limits[MemoryPoolType(pool)] = int(pool_size)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        if not profile.valid:
            _log(self._logger, ILogger.Severity.ERROR, "optimization profile has min > opt or opt > max")
            return -1
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def set_flag(self, flag) -> None:
        self.flags |= 1 << int(flag)

    def create_timing_cache(self, serialized_timing_cache) -> ITimingCache | None:
        data = bytes(serialized_timing_cache)
        if not data:
            return ITimingCache(None, None)
        if not data.startswith(CACHE_MAGIC):
            raise RuntimeError("Error Code 1: Internal Error (timing cache: invalid blob header)")
        header = json.loads(data[len(CACHE_MAGIC):])
        if header["version"] != __version__:
            _log(self._logger, ILogger.Severity.ERROR, f"timing cache was created by TensorRT "
                 f"{header['version']}, this is {__version__}")
            return None
        return ITimingCache(header["version"], header["cc"], header["entries"])

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        here = _current_device()
        if cache.compute_capability is not None and here is not None \
                and cache.compute_capability != here[1] and not ignore_mismatch:
            _log(self._logger, ILogger.Severity.ERROR, "timing cache was created on a device with other "
                 "properties; set ignore_mismatch to use it")
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self.timing_cache


class Builder:
    def __init__(self, logger) -> None:
        self.logger = _require_logger(logger)

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        known = 0
        for member in NetworkDefinitionCreationFlag:
            known |= 1 << int(member)
        if int(flags) & ~known:
            raise TypeError(f"create_network(): unknown network creation flag bits {int(flags):#x}")
        strongly_typed = MAJOR >= 11
        if hasattr(NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            strongly_typed |= bool(int(flags) & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
        return INetworkDefinition(strongly_typed)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig(self.logger)

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig):
        device = _current_device()
        if device is None:
            _log(self.logger, ILogger.Severity.ERROR, "CUDA initialization failure: no current context")
            return None
        if not network.onnx_bytes:
            _log(self.logger, ILogger.Severity.ERROR, "network has no layers")
            return None
        profile = config.profiles[0] if config.profiles else None
        inputs = {}
        for tensor in network._inputs:
            shapes = profile.shapes.get(tensor.name) if profile else None
            if shapes is None:
                if any(d < 0 for d in tensor.shape):
                    _log(self.logger, ILogger.Severity.ERROR, f"network has dynamic or shape inputs, but no "
                         f"optimization profile has been defined for {tensor.name}")
                    return None
                shapes = (tuple(tensor.shape),) * 3
            for lo, hi, dim in zip(shapes[0], shapes[2], tensor.shape, strict=True):
                if dim >= 0 and not lo == hi == dim:
                    _log(self.logger, ILogger.Severity.ERROR, f"profile of {tensor.name} changes the static "
                         f"dimension {dim}")
                    return None
            inputs[tensor.name] = {"dtype": int(tensor.dtype), "shape": list(tensor.shape),
                                   "profile": [list(s) for s in shapes]}
        outputs = {t.name: {"dtype": int(t.dtype), "shape": list(t.shape)} for t in network._outputs}
        _log(self.logger, ILogger.Severity.INFO, f"building for {device[0]} ({len(inputs)} input(s))")
        _log(self.logger, ILogger.Severity.WARNING,
             "stand-in TensorRT: the engine runs ONNX Runtime on the CPU")
        cache = config.timing_cache
        if cache is not None:
            cache.version, cache.compute_capability = __version__, device[1]
            cache.entries += len(network.onnx_bytes) % 97 + 1
        header = json.dumps({"version": __version__, "device": device[0], "cc": device[1],
                             "strongly_typed": network.strongly_typed, "inputs": inputs,
                             "outputs": outputs,
                             "workspace": config.pool_limits.get(MemoryPoolType.WORKSPACE)}).encode()
        return IHostMemory(ENGINE_MAGIC + struct.pack("<I", len(header)) + header + network.onnx_bytes)


def split_engine(data: bytes) -> tuple[dict, bytes]:
    """The stand-in engine's header and ONNX bytes."""
    (length,) = struct.unpack("<I", data[len(ENGINE_MAGIC):len(ENGINE_MAGIC) + 4])
    start = len(ENGINE_MAGIC) + 4
    return json.loads(data[start:start + length]), data[start + length:]


# ------------------------------------------------------------------------------------------- runtime

class Runtime:
    def __init__(self, logger) -> None:
        self.logger = _require_logger(logger)

    def deserialize_cuda_engine(self, serialized_engine) -> ICudaEngine | None:
        data = bytes(serialized_engine)
        device = _current_device()
        if device is None:
            _log(self.logger, ILogger.Severity.ERROR, "CUDA initialization failure: no current context")
            return None
        if not data.startswith(ENGINE_MAGIC):
            _log(self.logger, ILogger.Severity.ERROR, "Serialization assertion failed: magic tag mismatch")
            return None
        header, onnx_bytes = split_engine(data)
        if header["version"] != __version__:
            _log(self.logger, ILogger.Severity.ERROR, f"the engine plan file was built by TensorRT "
                 f"{header['version']}; this is {__version__}")
            return None
        if header["cc"] != device[1]:
            _log(self.logger, ILogger.Severity.ERROR, f"the engine plan file was built for compute "
                 f"capability {header['cc']}; this device has {device[1]}")
            return None
        return ICudaEngine(header, onnx_bytes, self.logger)


class ICudaEngine:
    def __init__(self, header: dict, onnx_bytes: bytes, logger: ILogger) -> None:
        import onnxruntime as ort

        self.header, self.logger = header, logger
        self._names = [*header["inputs"], *header["outputs"]]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])

    @property
    def num_io_tensors(self) -> int:
        return len(self._names)

    def get_tensor_name(self, index: int) -> str:
        return self._names[index]

    def _spec(self, name: str) -> dict:
        return self.header["inputs"].get(name) or self.header["outputs"][name]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        if name in self.header["inputs"]:
            return TensorIOMode.INPUT
        return TensorIOMode.OUTPUT if name in self.header["outputs"] else TensorIOMode.NONE

    def get_tensor_shape(self, name: str) -> Dims:
        return Dims(self._spec(name)["shape"])

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType(self._spec(name)["dtype"])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
        if profile_index != 0 or name not in self.header["inputs"]:
            raise RuntimeError(f"no profile {profile_index} shape for {name!r}")
        return [Dims(s) for s in self.header["inputs"][name]["profile"]]

    def create_execution_context(self) -> IExecutionContext:
        return IExecutionContext(self)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine
        self._input_shapes: dict[str, tuple[int, ...]] = {}
        self._addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape) -> bool:
        spec = self.engine.header["inputs"].get(name)
        shape = tuple(int(d) for d in shape)
        if spec is None:
            return False
        lo, _, hi = spec["profile"]
        if len(shape) != len(lo) or any(not a <= d <= b for a, d, b in zip(lo, shape, hi, strict=True)):
            _log(self.engine.logger, ILogger.Severity.ERROR, f"set_input_shape: {shape} is outside the "
                 f"profile [{lo}, {hi}] of {name}")
            return False
        self._input_shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> Dims:
        header = self.engine.header
        if name in header["inputs"]:
            return Dims(self._input_shapes.get(name, header["inputs"][name]["shape"]))
        batch = next(iter(self._input_shapes.values()), None)
        shape = header["outputs"][name]["shape"]
        if batch is None:
            return Dims(shape)
        return Dims([batch[0] if i == 0 and d < 0 else d for i, d in enumerate(shape)])

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if name not in self.engine._names or not isinstance(memory, int):
            _log(self.engine.logger, ILogger.Severity.ERROR, f"set_tensor_address: no I/O tensor {name!r}")
            return False
        self._addresses[name] = memory
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        logger, header = self.engine.logger, self.engine.header
        if not isinstance(stream_handle, int):
            raise TypeError("execute_async_v3(): stream_handle must be an int")
        if _current_device() is None:
            _log(logger, ILogger.Severity.ERROR, "execute_async_v3: no CUDA context current in this thread")
            return False
        missing = [n for n in self.engine._names if n not in self._addresses]
        unset = [n for n in header["inputs"] if n not in self._input_shapes]
        if missing or unset:
            _log(logger, ILogger.Severity.ERROR, f"execute_async_v3: address not set for {missing}, "
                 f"shape not set for {unset}")
            return False
        cu = _cuda()
        if not _ok(cu.cuStreamSynchronize(stream_handle)):  # the input copies queued on this stream
            _log(logger, ILogger.Severity.ERROR, "execute_async_v3: invalid stream")
            return False
        feeds = {}
        for name, spec in header["inputs"].items():
            array = np.empty(self._input_shapes[name], dtype=nptype(DataType(spec["dtype"])))
            if not _ok(cu.cuMemcpyDtoH(array.ctypes.data, self._addresses[name], array.nbytes)):
                _log(logger, ILogger.Severity.ERROR, f"execute_async_v3: cannot read input {name}")
                return False
            feeds[name] = array
        results = self.engine.session.run(list(header["outputs"]), feeds)
        for name, value in zip(header["outputs"], results, strict=True):
            value = np.ascontiguousarray(value, dtype=nptype(DataType(header["outputs"][name]["dtype"])))
            if tuple(value.shape) != tuple(self.get_tensor_shape(name)):
                _log(logger, ILogger.Severity.ERROR, f"output {name} has shape {value.shape}")
                return False
            if not _ok(cu.cuMemcpyHtoD(self._addresses[name], value.ctypes.data, value.nbytes)):
                _log(logger, ILogger.Severity.ERROR, f"execute_async_v3: cannot write output {name}")
                return False
        return True


# ------------------------------------------------------------------------------------------- versions

class NetworkDefinitionCreationFlag(enum.IntEnum):  # TensorRT 10.x
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


class BuilderFlag(enum.IntEnum):  # TensorRT 10.x (subset)
    FP16 = 0
    INT8 = 1
    TF32 = 6


MAJOR = 10


def configure(module, version: str) -> None:
    """Give ``module`` (a fresh copy of this one) the surface of TensorRT ``version``."""
    major = int(version.split(".")[0])
    module.__version__ = version
    module.MAJOR = major
    if major >= 11:
        # 11.x: no explicit-batch flag, no precision builder flags; networks always strongly typed. The
        # STRONGLY_TYPED member is kept only with version suffix "+flag" (both shapes must work).
        members = {"STRONGLY_TYPED": 1} if version.endswith("+flag") else {"PREFER_AOT_PYTHON_PLUGINS": 2}
        module.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", members)
        module.BuilderFlag = enum.IntEnum("BuilderFlag", {"TF32": 6, "REFIT": 4})
        module.__version__ = version.removesuffix("+flag")
