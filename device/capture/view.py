"""The live view of one source: each picture is a frame the model judged, with that frame's own
result drawn on it, never a newer frame under an older result. The live page fetches the picture of
the result it shows (``picture``); without script, an MJPEG stream (multipart/x-mixed-replace) shows
the same pairs in a plain <img>. One rendering per new pair is shared by all viewers, and the stream
runs at its own modest rate (view_fps), independent of the triage loop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterator

from device.capture.frames import Frame
from device.capture.live import LiveResult, LiveTriage
from device.capture.overlay import OverlayInfo, render
from device.capture.stream import CaptureStream

BOUNDARY = "bedside-live-frame"
CONTENT_TYPE = f"multipart/x-mixed-replace; boundary={BOUNDARY}"
KEEPALIVE_S = 1.0  # resend the picture this often when nothing changes (a stalled source)


class LiveView:
    def __init__(self, stream: CaptureStream, live: LiveTriage, model: Callable[[], str], max_width: int, fps: float,
                 stale_s: float):
        self._stream = stream
        self._live = live
        self._model = model
        self._max_width = max_width
        self._period = 1.0 / fps
        self._stale_s = stale_s  # a result this much older than the newest frame no longer describes the camera
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._jpeg = b""

    def snapshot(self) -> tuple[bytes, tuple]:
        """The current picture: the newest judged frame with its result, or, while there is no current
        result, the newest frame marked as waiting for one. Rendered again only when it changed."""
        frame = self._stream.slot.newest()
        result = self._live.latest()
        if result is None or (frame is not None and frame.captured - result.frame.captured > self._stale_s):
            return self._render(frame, None)
        return self._render(result.frame, result)

    def picture(self, result: LiveResult) -> bytes:
        """The picture of one judged frame with its result (the live page asks for the one it shows)."""
        return self._render(result.frame, result)[0]

    def _render(self, frame: Frame | None, result: LiveResult | None) -> tuple[bytes, tuple]:
        status = self._stream.status()
        model = self._model()
        key = (frame.seq if frame else 0, result.seq if result else 0, status["state"], status["reason"], model)
        with self._lock:
            if key != self._key:
                info = OverlayInfo(status["state"], status["reason"], model, status["fps"], result)
                self._jpeg, self._key = render(frame, info, self._max_width), key
            return self._jpeg, key

    def parts(self, closing: Callable[[], bool]) -> Generator[bytes, None, None]:
        """The body of the MJPEG response; ends when `closing()` turns true (the kiosk shuts down)."""
        last_key: tuple | None = None
        last_sent = 0.0
        while not closing():
            started = time.monotonic()
            jpeg, key = self.snapshot()
            if key != last_key or started - last_sent >= KEEPALIVE_S:
                last_key, last_sent = key, started
                yield part(jpeg)
            time.sleep(max(0.0, self._period - (time.monotonic() - started)))


class ViewerSlots:
    """How many live views may be open at once. Each open view holds one of the web server's threads
    for as long as it is watched, so without a cap a few viewers starve the pages and the API."""

    def __init__(self, limit: int):
        self.limit = limit
        self._free = threading.BoundedSemaphore(limit)

    def hold(self, parts: Generator[bytes, None, None]) -> "HeldView | None":
        """`parts` holding a slot until the server closes it; None when every slot is taken."""
        if not self._free.acquire(blocking=False):
            return None
        return HeldView(parts, self._free.release)


class HeldView:
    """A live view's response body. The WSGI server calls ``close`` when the viewer leaves or the
    server stops, also for a body it never iterated (a generator's own ``finally`` would not run)."""

    def __init__(self, parts: Generator[bytes, None, None], release: Callable[[], None]):
        self._parts = parts
        self._release: Callable[[], None] | None = release

    def __iter__(self) -> Iterator[bytes]:
        return self._parts

    def close(self) -> None:
        release, self._release = self._release, None
        try:
            self._parts.close()
        finally:
            if release is not None:
                release()


def part(jpeg: bytes) -> bytes:
    head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
    return head + jpeg + b"\r\n"
