"""A captured frame, and the single slot that hands the newest one from a capture thread to its readers.

The slot holds exactly one item: a new one replaces the old one, so a slow consumer skips frames
instead of queueing them (a queue would grow latency and memory without bound). Consumers wait on
the slot's condition for an item newer (by ``seq``) than the last one they saw. The live triage
loop hands its results on through the same kind of slot.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

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


class _Sequenced(Protocol):
    @property
    def seq(self) -> int: ...


T = TypeVar("T", bound=_Sequenced)


class NewestSlot(Generic[T]):
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._closed = False

    def put(self, item: T) -> None:
        with self._cond:
            self._item = item
            self._cond.notify_all()

    def newest(self) -> T | None:
        with self._cond:
            return self._item

    def wait_newer(self, after_seq: int, timeout: float) -> T | None:
        """The newest item if its seq is above `after_seq`, waiting up to `timeout`; None otherwise."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._closed or (self._item is not None and self._item.seq > after_seq), timeout
            )
            item = self._item
        return item if item is not None and item.seq > after_seq else None

    def close(self) -> None:
        """Wake every waiter for good (the source is being shut down)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


FrameSlot = NewestSlot[Frame]
