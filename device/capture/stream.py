"""One capture source: a thread that connects, reads frames into the newest-frame slot, and on any
failure releases everything and reconnects with capped exponential back-off, by itself, forever.

States: ``connecting`` (opening the source), ``streaming`` (frames arriving), ``stalled`` (the last
attempt failed or the watchdog saw no new frame in time; waiting to reconnect), ``stopped`` (shut
down, or a recording played to its end). The watchdog (watchdog.py) calls ``check`` periodically:
it turns a stream that stopped delivering without disconnecting into ``stalled`` and interrupts its
reader, and restarts a capture thread that died.

Each connection owns exactly one reader, closed by the capture thread before the next attempt, so a
reconnect leaks no socket, device handle or thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from device.capture.errors import CaptureError
from device.capture.frames import Frame, FrameSlot
from device.capture.readers import Reader, open_reader
from device.capture.sources import SourceSpec, redact
from device.capture.stats import RateMeter

log = logging.getLogger(__name__)

STREAMING, CONNECTING, STALLED, STOPPED = "streaming", "connecting", "stalled", "stopped"
Opener = Callable[[SourceSpec, float, float], Reader]


@dataclass(frozen=True)
class Timing:
    stall_timeout_s: float = 3.0  # no new frame for this long -> stalled
    open_timeout_s: float = 5.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0


class CaptureStream:
    def __init__(self, source_id: str, spec: SourceSpec, timing: Timing = Timing(), opener: Opener = open_reader):
        self.id = source_id
        self.spec = spec
        self.timing = timing
        self.slot = FrameSlot()
        self._opener = opener
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reader: Reader | None = None
        self._state = STOPPED
        self._reason = "not started"
        self._since = time.monotonic()
        self._finished = False
        self._seq = 0
        self._frames = 0
        self._reconnects = 0
        self._restarts = 0
        self._last_frame: float | None = None
        self._fps = RateMeter()
        self._last_stall_reason = ""

    # ---- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._start_thread()

    def stop(self) -> None:
        """Stop reading and release the source; waits for the capture thread."""
        self._stop.set()
        with self._lock:
            reader, thread = self._reader, self._thread
        if reader is not None:
            reader.interrupt()
        if thread is not None:
            thread.join(self.timing.open_timeout_s + self.timing.stall_timeout_s + 1.0)
            if thread.is_alive():
                log.warning("capture thread of %s did not stop in time (blocked in the device driver?)", self.id)
        with self._lock:
            finished = self._finished
        if not finished:  # a recording that ended keeps saying so
            self._set_state(STOPPED, "stopped")
        self.slot.close()

    def _start_thread(self) -> None:
        """Called with the lock held."""
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.id}", daemon=True)
        self._thread.start()

    # ---- what the API and the live loop see ----------------------------------------

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    def status(self) -> dict:
        now = time.monotonic()
        with self._lock:
            age = None if self._last_frame is None else round(now - self._last_frame, 3)
            return {
                "id": self.id,
                "uri": redact(self.spec.uri),
                "kind": self.spec.kind,
                "state": self._state,
                "reason": self._reason,
                "fps": round(self._fps.rate(now), 2),
                "frames": self._frames,
                "last_frame_age_s": age,
                "reconnects": self._reconnects,
                "thread_restarts": self._restarts,
                "skipped_files": self._reader.skipped if self._reader is not None else 0,
                "state_for_s": round(now - self._since, 3),
            }

    # ---- the watchdog's side ------------------------------------------------------------------

    def check(self, now: float) -> None:
        """Detect a stall or a dead thread and act on it; called periodically by the watchdog."""
        if self._stop.is_set():
            return
        with self._lock:
            state, since, last, reader = self._state, self._since, self._last_frame, self._reader
            dead = self._thread is not None and not self._thread.is_alive() and not self._finished
            if dead:
                self._restarts += 1
                self._reconnects += 1
                self._start_thread()
        if dead:
            log.warning("capture thread of %s had died; restarted", self.id)
            return
        limit = self.timing.stall_timeout_s
        if state == STREAMING and last is not None and now - last > limit:
            self._stall(f"no new frame for {now - last:.1f} s", reader)
        elif state == CONNECTING and now - since > self.timing.open_timeout_s + limit:
            self._stall(f"connecting took over {self.timing.open_timeout_s + limit:.0f} s", reader)

    def _stall(self, reason: str, reader: Reader | None) -> None:
        self._set_state(STALLED, reason)
        if reader is not None:
            reader.interrupt()

    # ---- the capture thread -------------------------------------------------------------------

    def _run(self) -> None:
        delay = self.timing.backoff_initial_s
        try:
            while not self._stop.is_set():
                self._set_state(CONNECTING, "")
                received, ended = self._session()
                if ended:
                    with self._lock:
                        self._finished = True
                    self._set_state(STOPPED, "end of the recording")
                    return
                if received:
                    delay = self.timing.backoff_initial_s
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, self.timing.backoff_max_s)
                with self._lock:
                    self._reconnects += 1
        except Exception as exc:  # a bug, not a camera failure: the watchdog restarts this thread
            log.exception("capture thread of %s failed", self.id)
            self._set_state(STALLED, f"capture thread failed: {exc}")

    def _session(self) -> tuple[int, bool]:
        """One connection: (frames received, whether a finite source reached its end)."""
        try:
            # The watchdog decides on stalls (by frame age, which also catches a trickle of bytes
            # that never completes a frame); the reader's own read timeout is only a backstop.
            read_timeout = 2 * self.timing.stall_timeout_s
            reader = self._opener(self.spec, self.timing.open_timeout_s, read_timeout)
        except Exception as exc:  # any failure is a failed attempt: see _failure
            self._set_stalled(_failure(exc))
            return 0, False
        with self._lock:
            self._reader = reader
        try:
            return self._read_frames(reader)
        finally:
            with self._lock:
                self._reader = None
            reader.close()

    def _read_frames(self, reader: Reader) -> tuple[int, bool]:
        received = 0
        while not self._stop.is_set():
            try:
                payload = reader.read()
            except Exception as exc:  # any failure is a failed attempt: see _failure
                self._set_stalled(_failure(exc))
                return received, False
            if payload is None:
                return received, True
            received += 1
            self._deliver(payload)
        return received, False

    def _deliver(self, payload: bytes | np.ndarray) -> None:
        now, wall = time.monotonic(), time.time()
        with self._lock:
            self._seq += 1
            self._frames += 1
            self._last_frame = now
            seq = self._seq
        if isinstance(payload, bytes):
            frame = Frame(seq, now, wall, jpeg=payload)
        else:
            frame = Frame(seq, now, wall, bgr=payload)
        self.slot.put(frame)
        self._fps.tick(now)
        if self.state != STREAMING and not self._stop.is_set():
            self._set_state(STREAMING, "")

    def _set_stalled(self, reason: str) -> None:
        """A failed attempt; keeps the watchdog's reason when it was the watchdog that interrupted."""
        if self._stop.is_set():
            return
        with self._lock:
            if self._state == STALLED:
                return
        self._set_state(STALLED, reason)

    def _set_state(self, state: str, reason: str) -> None:
        with self._lock:
            if state == self._state and reason == self._reason:
                return
            self._state, self._reason, self._since = state, reason, time.monotonic()
        # Every change, with the state and the reason as fields of the record (for log handlers).
        log.debug("source %s is %s%s", self.id, state, f": {reason}" if reason else "",
                  extra={"source": self.id, "state": state, "reason": reason})
        if state == STALLED:
            # A camera that stays away fails every attempt the same way: say so once, not each time.
            if reason != self._last_stall_reason:
                log.warning("source %s stalled: %s", self.id, reason)
            self._last_stall_reason = reason
        elif state != CONNECTING:
            self._last_stall_reason = ""
            log.info("source %s %s%s", self.id, state, f": {reason}" if reason else "")


def _failure(exc: Exception) -> str:
    """Why an attempt failed. Opening or reading a source can raise anything (OpenCV's cv2.error, a
    PermissionError from a folder, a ValueError from a bad port): each is a failed attempt, retried
    with the back-off, not a crash; only CaptureError messages are written for people already."""
    if isinstance(exc, CaptureError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
