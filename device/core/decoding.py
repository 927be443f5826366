"""Decoding uploads within the kiosk's decode budget, a bounded number at a time.

Every decode holds its pixels and the decoder's scratch memory at once; on a 2-core appliance more
than a few in parallel only add memory, not throughput. Requests beyond ``decode.concurrent`` wait
for a slot, and after ``decode.wait_s`` get 503 "busy" instead of queueing without end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from device import intake
from device.core.errors import Busy
from device.core.settings import DecodeSettings


class Decoder:
    def __init__(self, settings: DecodeSettings):
        self.budget = intake.DecodeBudget(settings.max_megapixels, settings.max_frames, settings.max_inflated_mb)
        self._slots = threading.BoundedSemaphore(settings.concurrent)
        self._settings = settings

    def decode(self, data: bytes, name: str, reduce: intake.ReducedDecode | None = None
               ) -> tuple[intake.DecodedImage, float]:
        """The decoded image and the milliseconds decoding took (waiting for a slot not counted).
        ``reduce``: for a model only, no larger than it needs (renderings decode in full)."""
        with self._slot():
            t0 = time.perf_counter()
            img = intake.decode_bytes(data, name, self.budget, reduce)
            return img, (time.perf_counter() - t0) * 1e3

    @contextmanager
    def _slot(self) -> Iterator[None]:
        if not self._slots.acquire(timeout=self._settings.wait_s):
            raise Busy(
                f"{self._settings.concurrent} images are being decoded already and none finished within "
                f"{self._settings.wait_s:g} s; try again in a moment"
            )
        try:
            yield
        finally:
            self._slots.release()

    def modality_values(self, data: bytes, name: str) -> intake.ModalityValues:
        """A grayscale DICOM's values for window/level (device/intake/dicom_window.py), within the
        same budget and the same limit on decodes at once."""
        with self._slot():
            return intake.modality_values(data, name, self.budget)
