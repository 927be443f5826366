"""The one place that imports TensorRT (and pycuda for device facts), and the shared logger."""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass

log = logging.getLogger("bedside.tensorrt")


class TensorRTUnavailable(Exception):
    """TensorRT (or the CUDA device it needs) is not usable here; the message says why."""


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTUnavailable(
            f"TensorRT unavailable: the 'tensorrt' Python module cannot be imported ({exc}); "
            "on a Jetson it ships with JetPack (python3-libnvinfer)"
        ) from None
    return tensorrt


@dataclass(frozen=True)
class Platform:
    """What makes an engine valid: engines are portable across neither TensorRT builds nor GPUs."""

    tensorrt_version: str  # the full version, build number included (10.3.0.30)
    gpu_name: str
    compute_capability: str  # "8.7"
    sm_count: int


def detect_platform(tensorrt_version: str, device_index: int = 0) -> Platform:
    """Read the GPU's identity through pycuda. Device queries need no context, so any thread may ask."""
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise TensorRTUnavailable(f"pycuda cannot be imported ({exc}); install the 'jetson' extra") from None
    try:
        cuda.init()
        if cuda.Device.count() <= device_index:
            raise TensorRTUnavailable(f"no CUDA device {device_index} (found {cuda.Device.count()})")
        dev = cuda.Device(device_index)
        major, minor = dev.compute_capability()
        sms = dev.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT)
        return Platform(tensorrt_version, dev.name(), f"{major}.{minor}", int(sms))
    except cuda.Error as exc:
        raise TensorRTUnavailable(f"CUDA device query failed: {exc}") from None


class _LogBuffer:
    """Keeps TensorRT's recent errors so a failed call can say why, not just 'returned None'.

    The logger is shared by the whole process (TensorRT wants one), while an engine build can run
    in the background beside inference on other threads: each thread takes only the errors that
    TensorRT logged on it, so one call's failure never quotes, or wipes, another's.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._errors: collections.deque[tuple[int, str]] = collections.deque(maxlen=64)

    def add(self, message: str) -> None:
        with self._lock:
            self._errors.append((threading.get_ident(), message))

    def take(self) -> list[str]:
        me = threading.get_ident()
        with self._lock:
            mine = [m for t, m in self._errors if t == me]
            others = [(t, m) for t, m in self._errors if t != me]
            self._errors.clear()
            self._errors.extend(others)
            return mine


_LOGGER: tuple[object, object, _LogBuffer] | None = None
_LOGGER_LOCK = threading.Lock()


def trt_logger(trt) -> tuple[object, _LogBuffer]:
    """One ILogger per process: TensorRT warns when builders and runtimes are given different ones."""
    global _LOGGER
    with _LOGGER_LOCK:
        if _LOGGER is None or _LOGGER[0] is not trt:
            buffer = _LogBuffer()

            class _Logger(trt.ILogger):
                def __init__(self) -> None:
                    trt.ILogger.__init__(self)

                def log(self, severity, msg) -> None:
                    if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                        buffer.add(msg)
                        log.error("TensorRT: %s", msg)
                    elif severity == trt.ILogger.Severity.WARNING:
                        log.warning("TensorRT: %s", msg)
                    else:
                        log.debug("TensorRT: %s", msg)

            _LOGGER = (trt, _Logger(), buffer)
        return _LOGGER[1], _LOGGER[2]
