"""A captured frame, and the single slot that hands the newest one from a capture thread to its readers.

The slot holds exactly one frame: a new frame replaces the old one, so a slow consumer skips frames
instead of queueing them (a queue would grow latency and memory without bound). Consumers wait on
the slot's condition for a frame newer than the last one they saw.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One frame as the source delivered it: JPEG bytes (MJPEG streams, JPEG files), kept undecoded
    so that a consumer decodes only what it needs, or decoded BGR pixels (OpenCV readers)."""

    seq: int  # per source, increasing across reconnects
    captured: float  # time.monotonic() when the whole frame had arrived
    wall: float  # time.time() of the same moment, for people and records
    jpeg: bytes | None = None
    bgr: np.ndarray | None = None


class FrameSlot:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._closed = False

    def put(self, frame: Frame) -> None:
        with self._cond:
            self._frame = frame
            self._cond.notify_all()

    def newest(self) -> Frame | None:
        with self._cond:
            return self._frame

    def wait_newer(self, after_seq: int, timeout: float) -> Frame | None:
        """The newest frame if its seq is above `after_seq`, waiting up to `timeout`; None otherwise."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._closed or (self._frame is not None and self._frame.seq > after_seq), timeout
            )
            frame = self._frame
        return frame if frame is not None and frame.seq > after_seq else None

    def close(self) -> None:
        """Wake every waiter for good (the source is being shut down)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
