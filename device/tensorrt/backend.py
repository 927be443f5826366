"""TensorRT on a CUDA GPU (Jetson), through pycuda.

The engine comes from the engine cache (engine_cache.py), keyed by the model's content, the
TensorRT build and the GPU; a miss builds it here, synchronously, because whoever asked for this
backend by name (``bedside infer --backend tensorrt``) wants it. A device that must keep serving
while an engine builds calls ``TensorRTBackend.start_preparation`` (through the registry) and
switches backends when that build is done. Settings: ``[models.tensorrt]`` in the kiosk's config
(settings.py), each overridable by its environment variable.

All CUDA work (deserialising, buffers, execution, release) runs on one CudaWorker thread; ``run``
may be called from any thread.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from device.runtime.base import Availability, Backend, ModelIO, RuntimeFailure, RuntimeUnavailable, VariantFile
from device.runtime.stage_report import trtexec_report
from device.tensorrt.build import EngineBuildError
from device.tensorrt.cuda_io import StreamBuffers
from device.tensorrt.cuda_worker import CudaWorker
from device.tensorrt.engine_cache import BuildJob, CacheNotWritable, EngineCache, EngineKey, tensorrt_build
from device.tensorrt.library import TensorRTUnavailable, detect_platform, import_tensorrt, trt_logger
from device.tensorrt.progress import BuildProgress
from device.tensorrt.settings import EngineSettings

log = logging.getLogger("bedside.tensorrt")


class StaleEngine(RuntimeFailure):
    """TensorRT refused to deserialise a cached engine (another TensorRT build or GPU made it)."""


class TensorRTBackend(Backend):
    name = "tensorrt"
    target = "gpu"

    @classmethod
    def availability(cls) -> Availability:
        try:
            trt = import_tensorrt()
        except TensorRTUnavailable as exc:
            return Availability(False, str(exc))
        try:
            p = detect_platform(trt.__version__)
        except TensorRTUnavailable as exc:
            return Availability(False, str(exc), trt.__version__)
        except Exception as exc:  # availability never raises: whatever broke is the reason
            return Availability(False, f"CUDA device query failed: {exc}", trt.__version__)
        return Availability(True, f"{p.gpu_name} (compute {p.compute_capability}, {p.sm_count} SMs)",
                            trt.__version__)

    def __init__(self, model: VariantFile, io: ModelIO, threads: int, settings: EngineSettings | None = None):
        self._trt = _require_tensorrt()
        self.io = io
        self._session: _EngineSession | None = None
        self._worker = CudaWorker()
        try:
            self._cache, self._key, build = _engine_plan(self._trt, model, io, settings)
            self._session = self._load(build)
            self.engine_path = self._cache.engine_path(self._key)
            self.warm_up((1,))
        except BaseException:
            self.close()
            raise

    @classmethod
    def start_preparation(cls, model: VariantFile, io: ModelIO, on_done: Callable[[BuildJob], None],
                          settings: EngineSettings | None = None) -> BuildJob:
        """Build (or find in the cache) the variant's engine on a background thread.

        An engine build takes minutes on a Jetson; opening the backend after ``on_done`` finds it cached.
        """
        cache, key, build = _engine_plan(_require_tensorrt(), model, io, settings)
        return BuildJob(cache, key, build, on_done).start()

    def _load(self, build) -> "_EngineSession":
        """Load the cached engine; one that TensorRT refuses to deserialise is dropped and rebuilt once."""
        try:
            return self._open(self._engine(build))
        except StaleEngine as exc:
            log.warning("%s; rebuilding", exc)
            self._cache.invalidate(self._key)
            return self._open(self._engine(build))

    def _engine(self, build) -> Path:
        try:
            return self._cache.get_or_build(self._key, build, _log_progress())
        except (EngineBuildError, TensorRTUnavailable) as exc:
            raise RuntimeFailure(str(exc)) from None

    def _open(self, path: Path) -> "_EngineSession":
        return self._worker.call(_EngineSession, self._trt, self._worker.cuda, path.read_bytes(), self.io)

    @property
    def max_batch(self) -> int:
        return self._session.max_batch if self._session is not None else 1

    def profile(self, batch: np.ndarray, iterations: int) -> dict[str, dict[str, float]]:
        """trtexec's report of ``iterations`` runs of ``batch``: H2D latency, GPU compute, D2H
        latency, their sum (latency) and the enqueue time, each as min/mean/median/p90/p95/p99/max ms."""
        session = self._checked(batch)
        runs = [self._worker.call(session.infer_timed, np.ascontiguousarray(batch)) for _ in range(iterations)]
        return trtexec_report(runs)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        session = self._checked(batch)
        return self._worker.call(session.infer, np.ascontiguousarray(batch))

    def _checked(self, batch: np.ndarray) -> "_EngineSession":
        session = self._session
        if session is None:
            raise RuntimeFailure("backend was closed")
        c, h, w = self.io.input_shape
        if batch.dtype != np.float32:
            raise RuntimeFailure(f"input must be float32, not {batch.dtype}")
        if batch.ndim != 4 or batch.shape[1:] != (c, h, w):
            raise RuntimeFailure(f"input shape {batch.shape} is not (N, {c}, {h}, {w})")
        if not 1 <= batch.shape[0] <= session.max_batch:
            raise RuntimeFailure(
                f"batch of {batch.shape[0]} is outside the engine's profile 1..{session.max_batch} "
                "([models.tensorrt] max_batch or BEDSIDE_TRT_MAX_BATCH sets the maximum; the engine is rebuilt for a new one)"
            )
        return session

    def close(self) -> None:
        """Free buffers and TensorRT objects on the worker thread, then stop it. Idempotent."""
        session, self._session = self._session, None
        worker = getattr(self, "_worker", None)
        if worker is None:
            return
        if session is not None:
            worker.call(session.release)
        worker.close()


class _EngineSession:
    """A deserialised engine, its execution context and I/O buffers. Lives on the worker thread."""

    def __init__(self, trt, cuda, plan: bytes, io: ModelIO):
        logger, self._errors = trt_logger(trt)
        self._errors.take()
        self.io = io
        self.buffers: StreamBuffers | None = None
        self.context = self.engine = self.runtime = None
        try:
            self._set_up(trt, cuda, plan, logger)
        except BaseException:
            # Free what was allocated here, on this (the worker) thread: garbage collection would
            # free pycuda memory on another thread, where pycuda refuses it.
            self.release()
            raise

    def _set_up(self, trt, cuda, plan: bytes, logger) -> None:
        io = self.io
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise StaleEngine("TensorRT cannot deserialise the cached engine: "
                              + ("; ".join(self._errors.take()) or "no reason logged"))
        self.context = self.engine.create_execution_context()
        if self.context is None:
            self._fail("create_execution_context")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        modes = {n: self.engine.get_tensor_mode(n) for n in names}
        if modes.get(io.input_name) != trt.TensorIOMode.INPUT:
            raise RuntimeFailure(f"engine has no input {io.input_name!r} (its tensors: {names})")
        missing = [n for n in io.output_names if modes.get(n) != trt.TensorIOMode.OUTPUT]
        if missing:
            raise RuntimeFailure(f"engine lacks outputs {missing} (its tensors: {names})")
        if trt.nptype(self.engine.get_tensor_dtype(io.input_name)) != np.float32:
            raise RuntimeFailure(f"engine input {io.input_name!r} is not float32")
        _, _, max_shape = self.engine.get_tensor_profile_shape(io.input_name, 0)
        max_shape = tuple(max_shape)
        self.max_batch = max_shape[0]
        self._ok(self.context.set_input_shape(io.input_name, max_shape), "set_input_shape")
        # Every output of the engine needs an address, including ones the bundle does not read.
        outputs = {n: (tuple(self.context.get_tensor_shape(n)), trt.nptype(self.engine.get_tensor_dtype(n)))
                   for n in names if modes[n] == trt.TensorIOMode.OUTPUT}
        self.buffers = StreamBuffers(cuda, {io.input_name: (max_shape, np.float32)}, outputs)
        for name, address in self.buffers.addresses().items():
            self._ok(self.context.set_tensor_address(name, address), f"set_tensor_address({name})")

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self.buffers.run({self.io.input_name: batch}, self._shapes(batch), self._execute)

    def infer_timed(self, batch: np.ndarray) -> dict[str, float]:
        return self.buffers.run_timed({self.io.input_name: batch}, self._shapes(batch), self._execute)[1]

    def _shapes(self, batch: np.ndarray) -> dict[str, tuple[int, ...]]:
        self._ok(self.context.set_input_shape(self.io.input_name, batch.shape), "set_input_shape")
        return {n: tuple(self.context.get_tensor_shape(n)) for n in self.io.output_names}

    def _execute(self, stream_handle: int) -> None:
        self._ok(self.context.execute_async_v3(stream_handle), "execute_async_v3")

    def _ok(self, result: bool, what: str) -> None:
        """TensorRT reports most failures as a False return plus a logged error: raise both."""
        if not result:
            self._fail(what)

    def _fail(self, what: str) -> None:
        raise RuntimeFailure(f"TensorRT {what} failed: " + ("; ".join(self._errors.take()) or "no reason logged"))

    def release(self) -> None:
        if self.buffers is not None:
            self.buffers.free()
            self.buffers = None
        # TensorRT objects are freed when their last reference goes: drop them here, on this thread.
        self.context = self.engine = self.runtime = None


def _engine_plan(trt, model: VariantFile, io: ModelIO, settings: EngineSettings | None):
    """The cache, the key of this variant's engine on this GPU and TensorRT build, and how to build it."""
    settings = (settings or EngineSettings()).with_env()
    options = settings.build_options(model.precision)
    try:
        cache = EngineCache(settings.cache_dir)
        platform = detect_platform(trt.__version__)
    except CacheNotWritable as exc:
        raise RuntimeFailure(str(exc)) from None
    except TensorRTUnavailable as exc:
        raise RuntimeUnavailable(str(exc)) from None
    key = EngineKey.for_model(model.path, model.precision, platform, io.input_name, io.input_shape, options)
    return cache, key, tensorrt_build(model.path, key, options, cache.timing_cache_path(platform))


def _require_tensorrt():
    """The tensorrt module, or RuntimeUnavailable saying why (the runtime seam's exception)."""
    try:
        return import_tensorrt()
    except TensorRTUnavailable as exc:
        raise RuntimeUnavailable(str(exc)) from None


def _log_progress():
    """Log a synchronous build every 10%: minutes of silence look like a hang."""
    last = [-1]

    def report(progress: BuildProgress) -> None:
        tenth = int(progress.fraction * 10)
        if tenth != last[0]:
            last[0] = tenth
            log.info("building TensorRT engine: %d%% (%s)", tenth * 10, progress.phase)

    return report
