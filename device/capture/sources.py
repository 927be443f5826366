"""Capture source URIs: what a configured string means, checked once at start-up.

    v4l2:///dev/video0?width=1280&height=720&fps=30&fourcc=MJPG   a USB camera or HDMI capture dongle
    csi://0?width=1920&height=1080&fps=30&flip=0                   a Jetson CSI camera (GStreamer)
    rtsp://user:pass@host/path                                     a network camera (FFmpeg)
    http(s)://host/path                                            an MJPEG stream (our own reader)
    file:///path/video.mp4?loop=1  file:///path/folder?fps=5       a recording, or a folder of images

For rtsp and http the whole URI, query included, belongs to the camera and is passed on unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

V4L2, CSI, RTSP, HTTP, FILE = "v4l2", "csi", "rtsp", "http", "file"
_SCHEMES = {"v4l2": V4L2, "csi": CSI, "rtsp": RTSP, "rtsps": RTSP, "http": HTTP, "https": HTTP, "file": FILE}
# Query keys each kind understands; anything else is a typo we refuse rather than ignore.
_OPTIONS = {
    V4L2: {"width", "height", "fps", "fourcc"},
    CSI: {"width", "height", "fps", "flip"},
    FILE: {"loop", "fps"},
}


class SourceError(ValueError):
    """A capture URI that cannot be used; the message names the URI and what is wrong."""


@dataclass(frozen=True)
class SourceSpec:
    uri: str
    kind: str
    target: str  # device path, sensor id, URL or filesystem path
    options: dict[str, str] = field(default_factory=dict)

    def option_int(self, name: str) -> int | None:
        return self._option(name, int, "a whole number", lambda n: n >= 0, "must not be negative")

    def option_float(self, name: str) -> float | None:
        return self._option(name, float, "a number", lambda n: n > 0, "must be positive")

    def _option(self, name: str, convert: Callable, noun: str, valid: Callable, rule: str):
        value = self.options.get(name)
        if value is None:
            return None
        try:
            number = convert(value)
        except ValueError:
            raise SourceError(f"{redact(self.uri)}: {name} must be {noun}, not {value!r}") from None
        if not valid(number):
            raise SourceError(f"{redact(self.uri)}: {name} {rule}")
        return number

    @property
    def loop(self) -> bool:
        return self.options.get("loop", "0").lower() in ("1", "true", "yes")


def parse_source(uri: str) -> SourceSpec:
    """Parse and check a capture URI. Raises SourceError with the reason."""
    text = uri.strip()
    parts = urlsplit(text)
    kind = _SCHEMES.get(parts.scheme.lower())
    if kind is None:
        raise SourceError(f"{redact(text)}: unsupported source; use one of {', '.join(sorted(_SCHEMES))}://...")
    if kind in (RTSP, HTTP):
        if not parts.hostname:
            raise SourceError(f"{redact(text)}: no host in the URL")
        try:
            parts.port  # urlsplit checks the port only when it is read
        except ValueError as exc:
            raise SourceError(f"{redact(text)}: {exc}") from None
        return SourceSpec(text, kind, text)
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - _OPTIONS[kind])
    if unknown:
        raise SourceError(
            f"{text}: unknown option {unknown[0]!r} for {kind} sources; known: {', '.join(sorted(_OPTIONS[kind]))}"
        )
    if kind == CSI:
        sensor = parts.netloc or parts.path.strip("/") or "0"
        if not sensor.isdigit():
            raise SourceError(f"{text}: the CSI sensor id must be a number, like csi://0")
        spec = SourceSpec(text, kind, sensor, options)
    else:
        # file://relative/path puts the first component in netloc; file:///abs/path does not.
        path = parts.netloc + parts.path
        if not path:
            raise SourceError(f"{text}: no path")
        spec = SourceSpec(text, kind, path, options)
    for name in ("width", "height", "flip"):
        spec.option_int(name)
    spec.option_float("fps")
    fourcc = options.get("fourcc")
    if fourcc is not None and len(fourcc) != 4:
        raise SourceError(f"{text}: fourcc must be 4 characters, like MJPG or YUYV")
    return spec


def redact(uri: str) -> str:
    """The URI with any password replaced, fit for the API, logs and the screen."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    # The host and port as written: parsing the port would raise on a bad one (and lose IPv6 brackets).
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def csi_pipeline(spec: SourceSpec) -> str:
    """The GStreamer pipeline for a Jetson CSI sensor: NVMM capture, hardware conversion to BGR, and an
    appsink that keeps one buffer and drops the rest, so OpenCV always reads the newest frame."""
    width = spec.option_int("width") or 1920
    height = spec.option_int("height") or 1080
    fps = round(spec.option_float("fps") or 30)
    flip = spec.option_int("flip") or 0
    return (
        f"nvarguscamerasrc sensor-id={spec.target} ! "
        f"video/x-raw(memory:NVMM),width={width},height={height},framerate={fps}/1,format=NV12 ! "
        f"nvvidconv flip-method={flip} ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
        "appsink drop=true max-buffers=1 sync=false"
    )


def is_folder(spec: SourceSpec) -> bool:
    return spec.kind == FILE and Path(spec.target).is_dir()
