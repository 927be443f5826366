"""One reader per kind of source. A reader is opened (connects) in its constructor, then ``read``
returns the next frame as JPEG bytes or BGR pixels, None at the end of a finite source, or raises
CaptureError. ``interrupt`` may be called from another thread to make a blocked read give up;
``close`` (from the owning thread) releases the device, socket or file.

OpenCV readers get explicit open/read timeouts where the backend honours them (FFmpeg: rtsp and
files; V4L2 since OpenCV 4.8), because cv2.VideoCapture.read cannot be interrupted from outside.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from device.capture.errors import CaptureError
from device.capture.mjpeg import MjpegReader
from device.capture.sources import CSI, FILE, HTTP, RTSP, V4L2, SourceSpec, csi_pipeline, is_folder, redact

log = logging.getLogger(__name__)
Payload = bytes | np.ndarray
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
DEFAULT_FOLDER_FPS = 5.0
DEFAULT_VIDEO_FPS = 30.0


class Reader(Protocol):
    skipped: int  # files or frames left out as unreadable (a folder source's bad files)

    def read(self) -> Payload | None: ...
    def interrupt(self) -> None: ...
    def close(self) -> None: ...


def open_reader(spec: SourceSpec, open_timeout_s: float, read_timeout_s: float) -> Reader:
    """Connect to the source. Raises CaptureError (with the reason) when it cannot."""
    if spec.kind == HTTP:
        return HttpReader(spec, open_timeout_s, read_timeout_s)
    if spec.kind == FILE:
        if is_folder(spec):
            return FolderReader(spec)
        return VideoFileReader(spec, open_timeout_s, read_timeout_s)
    return OpenCVReader(spec, open_timeout_s, read_timeout_s)


class HttpReader:
    skipped = 0

    def __init__(self, spec: SourceSpec, open_timeout_s: float, read_timeout_s: float):
        self._mjpeg = MjpegReader(spec.target, open_timeout_s, read_timeout_s)

    def read(self) -> Payload:
        return self._mjpeg.read()

    def interrupt(self) -> None:
        self._mjpeg.interrupt()

    def close(self) -> None:
        self._mjpeg.close()


def _timeouts(open_timeout_s: float, read_timeout_s: float) -> list[int]:
    return [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_s * 1000),
    ]


# (backend, target) of the OpenCV sources whose last open failed: OpenCV's own warnings about them
# (V4L2's "can't be used to capture by name"...) were shown once; a reconnect loop does not repeat them.
_FAILING: set[tuple[int, str]] = set()
_QUIET_LOCK = threading.Lock()


@contextlib.contextmanager
def _opencv_warnings(show: bool) -> Iterator[None]:
    """OpenCV's log level is process-wide: it is lowered to errors only for the open, under a lock."""
    if show:
        yield
        return
    with _QUIET_LOCK:
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            yield
        finally:
            cv2.utils.logging.setLogLevel(level)


def _open_capture(target: str | int, api: int, params: list[int], what: str) -> cv2.VideoCapture:
    """Open, with OpenCV's warnings shown once per change: on the first failure after a success."""
    key = (api, str(target))
    with _opencv_warnings(show=key not in _FAILING):
        cap = cv2.VideoCapture(target, api, params)
    if not cap.isOpened():
        cap.release()
        _FAILING.add(key)
        raise CaptureError(f"cannot open {what}")
    _FAILING.discard(key)
    return cap


class OpenCVReader:
    """Live devices and network cameras through cv2.VideoCapture: v4l2, csi (GStreamer), rtsp."""

    skipped = 0

    def __init__(self, spec: SourceSpec, open_timeout_s: float, read_timeout_s: float):
        self._interrupted = threading.Event()
        params = _timeouts(open_timeout_s, read_timeout_s)
        if spec.kind == V4L2:
            self._cap = _open_capture(spec.target, cv2.CAP_V4L2, params, spec.target)
            _configure_v4l2(self._cap, spec)
        elif spec.kind == CSI:
            if not cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
                raise CaptureError("this OpenCV has no GStreamer support (use the JetPack OpenCV for CSI cameras)")
            self._cap = _open_capture(csi_pipeline(spec), cv2.CAP_GSTREAMER, [], f"CSI sensor {spec.target}")
        elif spec.kind == RTSP:
            self._cap = _open_capture(spec.target, cv2.CAP_FFMPEG, params, redact(spec.uri))
        else:
            raise CaptureError(f"no OpenCV reader for {spec.kind} sources")

    def read(self) -> Payload:
        ok, image = self._cap.read()
        if self._interrupted.is_set():
            raise CaptureError("interrupted")
        if not ok or image is None:
            raise CaptureError("the device returned no frame")
        return image

    def interrupt(self) -> None:
        self._interrupted.set()

    def close(self) -> None:
        self._cap.release()


def _image_file(path: Path) -> Payload | None:
    """A regular file's JPEG bytes or decoded pixels; None for anything else or a file that does not
    decode. Opened without blocking, so a FIFO or device node is seen for what it is, unread."""
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            data = fh.read()
    except OSError:  # removed since listed, unreadable
        return None
    if data.startswith(b"\xff\xd8"):
        return data
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def _configure_v4l2(cap: cv2.VideoCapture, spec: SourceSpec) -> None:
    """Pixel format first (it decides which sizes and rates exist), then size, then rate; one
    buffer so that a read returns the newest frame rather than one queued in the driver."""
    fourcc = spec.options.get("fourcc")
    if fourcc:
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*fourcc.upper()))
    for prop, name in ((cv2.CAP_PROP_FRAME_WIDTH, "width"), (cv2.CAP_PROP_FRAME_HEIGHT, "height")):
        value = spec.option_int(name)
        if value:
            cap.set(prop, value)
    fps = spec.option_float("fps")
    if fps:
        cap.set(cv2.CAP_PROP_FPS, fps)
    cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)


class Pacer:
    """Releases frames of a recording at the recording's rate, as a live camera would."""

    def __init__(self, fps: float, interrupted: threading.Event):
        self._period = 1.0 / fps
        self._interrupted = interrupted
        self._due = time.monotonic()

    def wait(self) -> None:
        now = time.monotonic()
        if self._due < now - self._period:  # fell behind (the machine was busy): do not burst
            self._due = now
        if self._interrupted.wait(max(0.0, self._due - now)):
            raise CaptureError("interrupted")
        self._due += self._period


class VideoFileReader:
    """A video file played in real time; ``?loop=1`` starts again at the end, ``?fps=`` overrides its rate."""

    skipped = 0

    def __init__(self, spec: SourceSpec, open_timeout_s: float, read_timeout_s: float):
        self._spec = spec
        self._interrupted = threading.Event()
        if not Path(spec.target).is_file():
            raise CaptureError(f"no such file or folder: {spec.target}")
        self._params = _timeouts(open_timeout_s, read_timeout_s)
        self._cap = _open_capture(spec.target, cv2.CAP_FFMPEG, self._params, spec.target)
        native = self._cap.get(cv2.CAP_PROP_FPS)
        fps = spec.option_float("fps") or (native if 0 < native <= 240 else DEFAULT_VIDEO_FPS)
        self._pacer = Pacer(fps, self._interrupted)

    def read(self) -> Payload | None:
        self._pacer.wait()
        ok, image = self._cap.read()
        if not ok and self._spec.loop:
            # Reopening is more reliable than seeking back across containers and codecs.
            self._cap.release()
            self._cap = _open_capture(self._spec.target, cv2.CAP_FFMPEG, self._params, self._spec.target)
            ok, image = self._cap.read()
        if not ok or image is None:
            return None
        return image

    def interrupt(self) -> None:
        self._interrupted.set()

    def close(self) -> None:
        self._cap.release()


class FolderReader:
    """The images of a folder in name order, at ``?fps=`` (default 5); JPEGs stay undecoded.

    A file that is not a regular file (a FIFO named ``*.jpg`` would block a read, and shutdown, for
    ever) or that does not decode is skipped and counted in ``skipped``: one bad file neither
    stalls the source nor makes it flap between streaming and stalled."""

    def __init__(self, spec: SourceSpec):
        self._spec = spec
        self._interrupted = threading.Event()
        self._files = sorted(p for p in Path(spec.target).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise CaptureError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {spec.target}")
        self._next = 0
        self._bad: set[Path] = set()
        self.skipped = 0
        self._pacer = Pacer(spec.option_float("fps") or DEFAULT_FOLDER_FPS, self._interrupted)

    def read(self) -> Payload | None:
        for _ in range(len(self._files)):
            if self._next >= len(self._files):
                if not self._spec.loop:
                    return None
                self._next = 0
            path = self._files[self._next]
            self._next += 1
            payload = None if path in self._bad else _image_file(path)
            if payload is not None:
                self._pacer.wait()
                return payload
            if path not in self._bad:
                self._bad.add(path)
                self.skipped += 1
                log.warning("capture folder %s: skipped %s (not a regular, readable image file)",
                            self._spec.target, path.name)
        raise CaptureError(f"no readable images in {self._spec.target} ({self.skipped} skipped)")

    def interrupt(self) -> None:
        self._interrupted.set()

    def close(self) -> None:
        """Nothing to release: each image file is opened, read and closed within ``read``."""
