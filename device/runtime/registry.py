"""The explicit list of inference backends. Adding one means adding a file and a line here."""

from __future__ import annotations

import importlib

from device.runtime.base import Availability, Backend, RuntimeUnavailable

# name -> "module:Class"; modules are imported lazily so a missing library only
# makes its own backend unavailable.
BACKENDS: dict[str, str] = {
    "onnxruntime": "device.runtime.onnxruntime_backend:OnnxRuntimeBackend",
    "openvino": "device.runtime.openvino_backend:OpenVinoBackend",
    "tensorrt": "device.tensorrt.backend:TensorRTBackend",
    "remote": "device.runtime.remote_backend:RemoteBackend",
}


def backend_class(name: str) -> type[Backend]:
    try:
        target = BACKENDS[name]
    except KeyError:
        raise RuntimeUnavailable(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})") from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RuntimeUnavailable(f"backend {name} cannot be imported: {exc}") from None
    return getattr(module, class_name)


def availability(name: str) -> Availability:
    try:
        return backend_class(name).availability()
    except RuntimeUnavailable as exc:
        return Availability(False, str(exc))


def all_availability() -> dict[str, Availability]:
    return {name: availability(name) for name in BACKENDS}


def require(name: str) -> type[Backend]:
    """The backend class, or RuntimeUnavailable naming why it cannot run here (no silent fallback)."""
    cls = backend_class(name)
    status = cls.availability()
    if not status.ok:
        raise RuntimeUnavailable(f"backend {name} is unavailable: {status.reason}")
    return cls


def available(target: str) -> list[str]:
    """The backends ``auto`` may choose here for a variant target ("cpu" or "gpu"), in registry order."""
    return [name for name, status in all_availability().items()
            if status.ok and backend_class(name).target == target and not backend_class(name).remote]
