"""A fake ``tensorrt`` (10.x Python API) that enforces the contract our glue relies on.

The "engine" really computes: execute_async_v3 runs the ONNX file recorded at build time through
ONNX Runtime on the bytes in (fake) device memory, so outputs can be checked against ORT FP32.
Where real TensorRT logs an error and returns False/None, so does this fake (our code must check
those returns); where real TensorRT's behaviour on a bad name is merely a logged error and a
default value, the fake raises (stricter). References are to the TensorRT 10.x Python API docs.
"""

from __future__ import annotations

import enum
import json
import threading

import numpy as np

__version__ = "10.3.0.30"
DLA_CORES = 0  # tests set 2 to play an AGX Orin
LAST_BUILD: dict = {}  # what the last build was configured with, for tests to inspect

SUPPORTED_OPS = {
    "Conv", "Relu", "GlobalAveragePool", "Flatten", "Gemm", "MatMul", "Add", "Mul", "Sub", "Div",
    "Sigmoid", "Softmax", "QuantizeLinear", "DequantizeLinear", "Cast", "Reshape", "Transpose",
    "BatchNormalization", "MaxPool", "AveragePool", "Concat", "Identity", "Clip", "ReduceMean", "Abs", "Unsqueeze",
}


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    INT64 = 8


float32, float16 = DataType.FLOAT, DataType.HALF
_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
       DataType.INT32: np.int32, DataType.BOOL: np.bool_, DataType.INT64: np.int64}
_ONNX_TYPES = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 7: DataType.INT64}


def nptype(dtype: DataType):
    return _NP[dtype]


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0  # deprecated and ignored in 10.x
    STRONGLY_TYPED = 1


class BuilderFlag(enum.Enum):
    FP16 = 0
    INT8 = 1
    GPU_FALLBACK = 4


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class DeviceType(enum.Enum):
    GPU = 0
    DLA = 1


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class ErrorCode(enum.Enum):
    SUCCESS = 0
    INTERNAL_ERROR = 1
    MODEL_DESERIALIZE_FAILED = 3
    INVALID_NODE = 6
    UNSUPPORTED_NODE = 8


class ILogger:
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    def __init__(self) -> None:
        pass

    def log(self, severity, msg) -> None:  # overridden
        raise NotImplementedError


class Logger(ILogger):
    WARNING = ILogger.Severity.WARNING

    def __init__(self, min_severity=ILogger.Severity.WARNING) -> None:
        self.min_severity = min_severity

    def log(self, severity, msg) -> None:
        pass


class IProgressMonitor:
    def __init__(self) -> None:
        pass


class ITensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: DataType):
        self.name, self.shape, self.dtype = name, tuple(shape), dtype


class INetworkDefinition:
    def __init__(self, flags: int):
        self.strongly_typed = bool(flags & (1 << 1))  # bit of STRONGLY_TYPED
        self.inputs: list[ITensor] = []
        self.outputs: list[ITensor] = []
        self.onnx_path: str | None = None
        self.ops: list[str] = []

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, index: int) -> ITensor:
        return self.inputs[index]


class ParserError:
    def __init__(self, code: ErrorCode, desc: str, node: int = -1, node_name: str = "", op: str = ""):
        self._code, self._desc, self._node, self._name, self._op = code, desc, node, node_name, op

    def code(self) -> ErrorCode:
        return self._code

    def desc(self) -> str:
        return self._desc

    def node(self) -> int:
        return self._node

    def node_name(self) -> str:
        return self._name

    def node_operator(self) -> str:
        return self._op


def _dims(value_info) -> tuple[int, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim)


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: ILogger):
        self.network, self.logger, self.errors = network, logger, []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> ParserError:
        return self.errors[index]

    def parse_from_file(self, path: str) -> bool:
        import onnx

        try:
            model = onnx.load(path)
        except Exception as exc:
            self.errors.append(ParserError(ErrorCode.MODEL_DESERIALIZE_FAILED, f"cannot read {path}: {exc}"))
            return False
        graph = model.graph
        for i, node in enumerate(graph.node):
            if node.op_type not in SUPPORTED_OPS:
                self.errors.append(ParserError(
                    ErrorCode.UNSUPPORTED_NODE, f"No importer registered for op: {node.op_type}",
                    i, node.name, node.op_type))
        if self.errors:
            return False
        initializers = {t.name for t in graph.initializer}
        net = self.network
        net.inputs = [ITensor(v.name, _dims(v), _ONNX_TYPES[v.type.tensor_type.elem_type])
                      for v in graph.input if v.name not in initializers]
        net.outputs = [ITensor(v.name, _dims(v), _ONNX_TYPES[v.type.tensor_type.elem_type]) for v in graph.output]
        net.onnx_path, net.ops = str(path), [n.op_type for n in graph.node]
        return True


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, name: str, min, opt, max) -> None:
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))

    def valid(self) -> bool:
        return all(len(lo) == len(mid) == len(hi) and all(a <= b <= c for a, b, c in zip(lo, mid, hi))
                   for lo, mid, hi in self.shapes.values())


class ITimingCache:
    MAGIC = "FAKE-TRT-TIMING-CACHE"

    def __init__(self, entries: dict[str, float]):
        self.entries = dict(entries)

    def serialize(self) -> bytes:
        return json.dumps({"magic": self.MAGIC, "version": __version__, "entries": self.entries}).encode()


class IBuilderConfig:
    def __init__(self) -> None:
        self.pools: dict = {}
        self.flags: set = set()
        self.profiles: list[IOptimizationProfile] = []
        self.default_device_type = DeviceType.GPU
        self.DLA_core = -1
        self.progress_monitor = None
        self.timing_cache: ITimingCache | None = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.pools[pool] = int(size)

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(flag)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        if not profile.valid():
            return -1
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> ITimingCache | None:
        if not data:
            return ITimingCache({})
        try:
            record = json.loads(bytes(data))
        except ValueError:
            return None
        if record.get("magic") != ITimingCache.MAGIC:
            return None
        return ITimingCache(record["entries"])

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self.timing_cache


def _error(logger: ILogger, message: str) -> None:
    logger.log(ILogger.Severity.ERROR, message)


class Builder:
    def __init__(self, logger: ILogger):
        self.logger = logger

    @property
    def num_DLA_cores(self) -> int:  # noqa: N802 (TensorRT's name)
        return DLA_CORES

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> bytes | None:
        problem = self._config_problem(network, config)
        if problem:
            _error(self.logger, problem)
            return None
        monitor = config.progress_monitor
        cache = config.timing_cache
        hits = 0
        steps = ["Parsing", "Tactic search", "Serialisation"]
        if monitor is not None:
            monitor.phase_start("Building engine", None, len(steps))
        for i, step in enumerate(steps):
            if step == "Tactic search":
                if monitor is not None:
                    monitor.phase_start("Tactic search", "Building engine", len(network.ops))
                for j, op in enumerate(network.ops):
                    key = f"{op}#{j}@{json.dumps(config.profiles[0].shapes, sort_keys=True)}"
                    if cache is not None:
                        hits += key in cache.entries
                        cache.entries[key] = 0.1
                    if monitor is not None and not monitor.step_complete("Tactic search", j):
                        _error(self.logger, "Build cancelled by the progress monitor")
                        return None
                if monitor is not None:
                    monitor.phase_finish("Tactic search")
            if monitor is not None and not monitor.step_complete("Building engine", i):
                _error(self.logger, "Build cancelled by the progress monitor")
                return None
        if monitor is not None:
            monitor.phase_finish("Building engine")
        LAST_BUILD.clear()
        LAST_BUILD.update(strongly_typed=network.strongly_typed, flags=set(config.flags), pools=dict(config.pools),
                          device=config.default_device_type, dla_core=config.DLA_core, timing_cache_hits=hits,
                          thread=threading.current_thread())
        profile = config.profiles[0].shapes
        return json.dumps({
            "magic": "FAKE-TRT-ENGINE", "version": __version__, "gpu": _gpu_identity(),
            "onnx": network.onnx_path,
            "inputs": {t.name: {"shape": t.shape, "dtype": t.dtype.name, "profile": profile[t.name]}
                       for t in network.inputs},
            "outputs": {t.name: {"shape": t.shape, "dtype": t.dtype.name} for t in network.outputs},
        }).encode()

    def _config_problem(self, network: INetworkDefinition, config: IBuilderConfig) -> str | None:
        if network.onnx_path is None:
            return "Network has no layers (nothing was parsed)"
        if network.strongly_typed and config.flags & {BuilderFlag.FP16, BuilderFlag.INT8}:
            return "Precision flags must not be set for a strongly typed network"
        if not config.profiles:
            return "Network has dynamic or shape inputs, but no optimization profile has been defined."
        shapes = config.profiles[0].shapes
        for t in network.inputs:
            if t.name not in shapes:
                return f"Optimization profile is missing values for input {t.name}"
            for bound in shapes[t.name]:
                if len(bound) != len(t.shape) or any(d != -1 and d != b for d, b in zip(t.shape, bound)):
                    return f"Profile dimensions {bound} do not match input {t.name} dimensions {t.shape}"
        unknown = set(shapes) - {t.name for t in network.inputs}
        if unknown:
            return f"Optimization profile names tensors that are not network inputs: {sorted(unknown)}"
        if config.default_device_type == DeviceType.DLA:
            if not 0 <= config.DLA_core < DLA_CORES:
                return f"DLA core {config.DLA_core} is not available (device has {DLA_CORES})"
            if BuilderFlag.GPU_FALLBACK not in config.flags:
                return "Layer GlobalAveragePool cannot run on DLA and GPU fallback is not enabled"
        return None


def _gpu_identity() -> list:
    import pycuda.driver as cuda

    return [cuda.DEVICE["name"], list(cuda.DEVICE["compute_capability"])]


class Runtime:
    def __init__(self, logger: ILogger):
        self.logger = logger

    def deserialize_cuda_engine(self, data) -> "ICudaEngine | None":
        try:
            record = json.loads(bytes(data))
        except ValueError:
            record = None
        if not isinstance(record, dict) or record.get("magic") != "FAKE-TRT-ENGINE":
            _error(self.logger, "Serialization assertion failed: magic tag does not match")
            return None
        if record["version"] != __version__:
            _error(self.logger, f"The engine plan file is not compatible with this version of TensorRT, "
                                f"expecting library version {__version__} got {record['version']}")
            return None
        if record["gpu"] != _gpu_identity():
            _error(self.logger, "The engine plan file is generated on an incompatible device")
            return None
        return ICudaEngine(record, self.logger)


class ICudaEngine:
    def __init__(self, record: dict, logger: ILogger):
        self.record, self.logger = record, logger
        self.tensors = {**{n: ("INPUT", v) for n, v in record["inputs"].items()},
                        **{n: ("OUTPUT", v) for n, v in record["outputs"].items()}}
        self._session = None

    def _tensor(self, name: str):
        if name not in self.tensors:
            raise KeyError(f"fake TensorRT: no tensor named {name!r} (real TensorRT logs an error)")
        return self.tensors[name]

    @property
    def num_io_tensors(self) -> int:
        return len(self.tensors)

    @property
    def num_optimization_profiles(self) -> int:
        return 1

    def get_tensor_name(self, index: int) -> str:
        return list(self.tensors)[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode[self._tensor(name)[0]]

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType[self._tensor(name)[1]["dtype"]]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensor(name)[1]["shape"])

    def get_tensor_profile_shape(self, name: str, profile_index: int):
        mode, info = self._tensor(name)
        if mode != "INPUT" or profile_index != 0:
            raise KeyError(f"fake TensorRT: no profile {profile_index} shape for {name!r}")
        return [tuple(s) for s in info["profile"]]

    def create_execution_context(self) -> "IExecutionContext":
        return IExecutionContext(self)

    def session(self):
        if self._session is None:
            import onnxruntime as ort

            self._session = ort.InferenceSession(self.record["onnx"], providers=["CPUExecutionProvider"])
        return self._session


class IExecutionContext:
    def __init__(self, engine: ICudaEngine):
        self.engine = engine
        self.input_shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.executions = 0
        self.threads: set[threading.Thread] = set()

    def set_input_shape(self, name: str, shape) -> bool:
        mode, info = self.engine._tensor(name)
        shape = tuple(shape)
        lo, _, hi = info["profile"]
        if mode != "INPUT" or len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            _error(self.engine.logger, f"set_input_shape: {shape} for {name} is outside the profile [{lo}, {hi}]")
            return False
        self.input_shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        mode, info = self.engine._tensor(name)
        if mode == "INPUT":
            return self.input_shapes.get(name, tuple(info["shape"]))
        batch = next(iter(self.input_shapes.values()), (-1,))[0]
        return tuple(batch if d == -1 else d for d in info["shape"])

    def set_tensor_address(self, name: str, address: int) -> bool:
        if name not in self.engine.tensors:
            _error(self.engine.logger, f"set_tensor_address: no tensor named {name}")
            return False
        self.addresses[name] = int(address)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        import pycuda.driver as cuda

        logger = self.engine.logger
        missing = [n for n, (m, _) in self.engine.tensors.items() if m == "INPUT" and n not in self.input_shapes]
        if missing:
            _error(logger, f"execute_async_v3: input shapes not specified for {missing}")
            return False
        unset = [n for n in self.engine.tensors if n not in self.addresses]
        if unset:
            _error(logger, f"execute_async_v3: neither address nor allocator is set for {unset}")
            return False
        try:
            cuda.stream_for(stream_handle, "execute_async_v3")
            feeds = {}
            for name, shape in self.input_shapes.items():
                dtype = np.dtype(nptype(self.engine.get_tensor_dtype(name)))
                raw = cuda.device_memory(self.addresses[name], int(np.prod(shape)) * dtype.itemsize, name)
                feeds[name] = raw.view(dtype).reshape(shape).copy()
            outputs = [n for n, (m, _) in self.engine.tensors.items() if m == "OUTPUT"]
            values = self.engine.session().run(outputs, feeds)
            for name, value in zip(outputs, values):
                if tuple(value.shape) != self.get_tensor_shape(name):
                    raise cuda.LogicError(f"fake: output {name} shape {value.shape} != {self.get_tensor_shape(name)}")
                data = np.ascontiguousarray(value, nptype(self.engine.get_tensor_dtype(name)))
                cuda.device_memory(self.addresses[name], data.nbytes, name)[:] = data.reshape(-1).view(np.uint8)
        except cuda.LogicError as exc:
            _error(logger, f"execute_async_v3: {exc}")
            return False
        self.executions += 1
        self.threads.add(threading.current_thread())
        return True
