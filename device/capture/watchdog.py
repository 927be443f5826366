"""The watchdog: one thread for all sources that calls each stream's ``check`` a few times a second.

It is separate from the capture threads on purpose: a capture thread blocked in a read, or dead,
cannot notice its own stall. See stream.py for what a check does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from device.capture.stream import CaptureStream

log = logging.getLogger(__name__)


class Watchdog:
    def __init__(self, streams: Iterable[CaptureStream], interval_s: float = 0.25):
        self._streams = list(streams)
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            now = time.monotonic()
            for stream in self._streams:
                try:
                    stream.check(now)
                except Exception:  # one broken source must not blind the watchdog to the others
                    log.exception("watchdog check of %s failed", stream.id)
