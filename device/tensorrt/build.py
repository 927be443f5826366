"""Build a TensorRT engine from one bundle variant's ONNX file (TensorRT 10 Python API)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from device.tensorrt.library import import_tensorrt, log, trt_logger
from device.tensorrt.progress import ProgressCallback, make_monitor
from models import atomic

PRECISIONS = ("fp32", "fp16", "int8")


class EngineBuildError(Exception):
    """The engine could not be built; the message carries TensorRT's own errors."""


class BuildCancelled(EngineBuildError):
    """The build was cancelled through the progress monitor."""


@dataclass(frozen=True)
class ParserIssue:
    """One ONNX parser error (nvonnxparser::IParserError)."""

    code: str
    description: str
    node: int  # index of the ONNX node, -1 where the error is not about one node
    node_name: str
    operator: str

    def __str__(self) -> str:
        where = f"node {self.node} {self.node_name!r} ({self.operator})" if self.node >= 0 else "graph"
        return f"{self.code} at {where}: {self.description}"


class OnnxParseError(EngineBuildError):
    """Every error the ONNX parser reported, not just the first."""

    def __init__(self, onnx_path: Path, issues: list[ParserIssue]):
        self.onnx_path = onnx_path
        self.issues = issues
        listing = "\n".join(f"  - {issue}" for issue in issues) or "  (the parser gave no details)"
        super().__init__(f"TensorRT cannot parse {onnx_path.name}: {len(issues)} error(s)\n{listing}")


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp32"  # used only where the network cannot be strongly typed (TensorRT < 9)
    max_batch: int = 16
    opt_batch: int = 1  # the kiosk triages one image at a time: tune kernels for that
    workspace_bytes: int = 1 << 30
    dla_core: int | None = None  # AGX Orin has 2 DLA cores; layers they cannot run fall back to the GPU

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ValueError(f"need 1 <= opt_batch ({self.opt_batch}) <= max_batch ({self.max_batch})")
        if self.workspace_bytes <= 0:
            raise ValueError("workspace_bytes must be positive")
        if self.dla_core is not None and self.dla_core < 0:
            raise ValueError("dla_core must be >= 0")

    def profile_shapes(self, chw: tuple[int, int, int]) -> tuple[tuple[int, ...], ...]:
        """(min, opt, max) input shapes: batch 1..max_batch."""
        return tuple((n, *chw) for n in (1, self.opt_batch, self.max_batch))


def build_engine(
    onnx_path: Path,
    input_name: str,
    input_chw: tuple[int, int, int],
    options: BuildOptions,
    engine_path: Path,
    timing_cache: Path | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Build and write the engine atomically to ``engine_path``; returns it.

    ``timing_cache`` (if given) is loaded when present and saved after the build, so a rebuild
    (new model, same GPU and TensorRT) reuses the kernel timings instead of measuring again.
    """
    trt = import_tensorrt()
    logger, errors = trt_logger(trt)
    errors.take()
    builder = trt.Builder(logger)
    strongly_typed, flags = _network_flags(trt)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise OnnxParseError(Path(onnx_path), _parser_issues(parser))
    _check_input(network, input_name, tuple(input_chw))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    if not strongly_typed:
        _set_precision_flags(trt, config, options.precision)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, *options.profile_shapes(tuple(input_chw)))
    if config.add_optimization_profile(profile) < 0:
        raise EngineBuildError(f"TensorRT rejected the optimisation profile {options.profile_shapes(input_chw)}")
    if options.dla_core is not None:
        _use_dla(trt, builder, config, options.dla_core)
    if timing_cache is not None:
        _attach_timing_cache(config, timing_cache)
    monitor = None
    if hasattr(config, "progress_monitor"):  # TensorRT >= 10.0
        monitor = make_monitor(trt, progress, cancel)
        config.progress_monitor = monitor

    started = time.monotonic()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        if monitor is not None and monitor.cancelled:
            raise BuildCancelled(f"engine build for {Path(onnx_path).name} was cancelled")
        raise EngineBuildError(
            f"TensorRT failed to build an engine for {Path(onnx_path).name}: "
            + ("; ".join(errors.take()) or "no error was logged")
        )
    log.info("built %s in %.1f s", Path(engine_path).name, time.monotonic() - started)
    if timing_cache is not None:
        atomic.write_bytes(timing_cache, memoryview(config.get_timing_cache().serialize()))
    return atomic.write_bytes(engine_path, memoryview(plan))


def _network_flags(trt) -> tuple[bool, int]:
    """Strongly typed where the flag exists (9.x, 10.x, 11.x): the ONNX's types are the precision.

    Older TensorRT needs explicit batch asked for (implicit batch cannot take a batch profile).
    TensorRT 10 networks are always explicit-batch and that flag is deprecated there, so it is
    not passed alongside STRONGLY_TYPED.
    """
    flag = trt.NetworkDefinitionCreationFlag
    if hasattr(flag, "STRONGLY_TYPED"):
        return True, 1 << int(flag.STRONGLY_TYPED)
    return False, 1 << int(flag.EXPLICIT_BATCH)


def _parser_issues(parser) -> list[ParserIssue]:
    issues = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        code = err.code()
        issues.append(ParserIssue(
            code=getattr(code, "name", str(code)),
            description=err.desc(),
            node=int(err.node()),
            # node_name/node_operator exist from TensorRT 10.0 on.
            node_name=err.node_name() if hasattr(err, "node_name") else "",
            operator=err.node_operator() if hasattr(err, "node_operator") else "",
        ))
    return issues


def _check_input(network, input_name: str, chw: tuple[int, int, int]) -> None:
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    names = [t.name for t in inputs]
    if names != [input_name]:
        raise EngineBuildError(f"the bundle declares one input {input_name!r}; the ONNX has {names}")
    dims = tuple(inputs[0].shape)
    if len(dims) != 4 or dims[1:] != chw:
        raise EngineBuildError(f"input {input_name!r} has shape {dims}; the bundle declares (N, {chw})")
    if dims[0] != -1:
        raise EngineBuildError(
            f"input {input_name!r} has a fixed batch of {dims[0]}: export it with a dynamic batch axis"
        )


def _set_precision_flags(trt, config, precision: str) -> None:
    """TensorRT < 9 only: let the builder honour the FP16 graph or the Q/DQ nodes."""
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)


def _use_dla(trt, builder, config, core: int) -> None:
    available = builder.num_DLA_cores
    if core >= available:
        raise EngineBuildError(f"DLA core {core} was asked for; this device has {available} DLA core(s)")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def _attach_timing_cache(config, path: Path) -> None:
    """Reuse earlier kernel timings; a corrupt or foreign cache is replaced, never fatal."""
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is None or not config.set_timing_cache(cache, False):
        log.warning("timing cache %s is unusable here; starting an empty one", path)
        config.set_timing_cache(config.create_timing_cache(b""), False)
