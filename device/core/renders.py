"""Renderings of stored studies for the screen: the image as a viewer shows it (a screen-sized
JPEG: a full-resolution PNG pair made the result page slow), and the heatmap (PNG, fetched only
when it is shown; exact, so that its pixels can be checked).

Uploads are acknowledged without rendering anything (that would add tens of milliseconds to each
study); the screen versions are made on first view from the stored image and the stored
activation map, and kept in a small in-memory cache. Screen versions are downscaled; exports
render at full resolution. Every rendering of a study comes from one decode of its stored image,
made by the kiosk's decoder (within the decode budget and its limit on concurrent decodes) and
kept for the study shown last: the preview, the heatmap, look-closer and the export in turn do
not decode again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from collections.abc import Callable

import cv2
import numpy as np

from device import intake
from device.core.decoding import Decoder
from device.core.errors import NotFound
from device.core.store import Store, StudyRecord
from device.decision import heatmap
from models.bundle import InputContract

SCREEN_MAX_SIDE = 1024


@dataclass(frozen=True)
class WindowValues:
    """The values behind a DICOM's grayscale (little-endian uint16 codes, row by row) and how to
    read and window them (``meta``: center, width, function, origin, invert; value = offset + step * code)."""

    sha256: str
    codes: bytes
    meta: dict
PREVIEW_JPEG_QUALITY = 88  # no visible loss on an X-ray at screen size; a tenth of the PNG's bytes


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    return np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8)


def encode_jpeg(pixels: np.ndarray) -> bytes:
    """JPEG of a gray or RGB uint8 image, for the screen."""
    bgr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR) if pixels.ndim == 3 else pixels
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, PREVIEW_JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG of a gray or RGB uint8 image."""
    bgr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR) if pixels.ndim == 3 else pixels
    ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


class Renderer:
    def __init__(self, store: Store, contract_of: Callable[[str], InputContract], decoder: Decoder,
                 cache_entries: int = 32):
        """``contract_of(exam id)``: the input contract of the exam's model, which says which part of
        an image the model saw (the heatmap is laid on that part); raises when the exam is gone."""
        self._store = store
        self._contract_of = contract_of
        self._decoder = decoder
        self._cache: OrderedDict[tuple[str, int | str], bytes] = OrderedDict()
        self._entries = cache_entries
        self._lock = threading.Lock()
        self._last: tuple[str, intake.DecodedImage] | None = None  # (image sha256, its one decode)
        self._last_window: WindowValues | None = None

    def preview_jpeg(self, study: StudyRecord) -> bytes:
        return self._cached(("preview", study.image_sha256), lambda: encode_jpeg(self._screen_pixels(study)))

    def full_jpeg(self, study: StudyRecord) -> bytes:
        """The image at full resolution, as a viewer shows it, for looking closer (zoom)."""
        return self._cached(("full", study.image_sha256), lambda: encode_jpeg(to_uint8(self._decode(study).pixels)))

    def heatmap_png(self, study: StudyRecord) -> bytes | None:
        """The overlay at screen size, or None when the model gives no activation map."""
        if study.cam is None:
            return None
        return self._cached(("heatmap", study.id), lambda: encode_png(self._overlay(study, self._screen_pixels(study))))

    def heatmap_full_png(self, study: StudyRecord) -> bytes | None:
        if study.cam is None:
            return None
        return encode_png(self._overlay(study, self._decode(study).pixels))

    def window_values(self, study: StudyRecord) -> WindowValues:
        """A grayscale DICOM's values for window/level in look-closer (the browser windows them);
        NotFound for any other image. The last one is kept: its page asks for the window, then the values."""
        if study.source_format != "dicom":
            raise NotFound(f"study {study.id} is a {study.source_format.upper()} image: window/level is for DICOM")
        with self._lock:
            if self._last_window is not None and self._last_window.sha256 == study.image_sha256:
                return self._last_window
        path = self._store.image_path(study.image_sha256)
        try:
            v = self._decoder.modality_values(path.read_bytes(), path.name)
        except intake.IntakeError as exc:
            raise NotFound(f"study {study.id}: no window/level: {exc.reason}") from None
        codes, offset, step = intake.as_uint16(v.values)
        window = WindowValues(study.image_sha256, codes.tobytes(), {
            "center": v.center, "width": v.width, "function": v.function, "origin": v.origin, "invert": v.invert,
            "offset": offset, "step": step, "rows": int(codes.shape[0]), "columns": int(codes.shape[1]),
        })
        with self._lock:
            self._last_window = window
        return window

    def _overlay(self, study: StudyRecord, pixels: np.ndarray) -> np.ndarray:
        return heatmap.overlay(pixels, study.cam, contract=self._contract_of(study.exam))

    def _decode(self, study: StudyRecord) -> intake.DecodedImage:
        with self._lock:
            if self._last is not None and self._last[0] == study.image_sha256:
                return self._last[1]
        path = self._store.image_path(study.image_sha256)
        img, _ = self._decoder.decode(path.read_bytes(), path.name)
        with self._lock:
            self._last = (study.image_sha256, img)
        return img

    def _screen_pixels(self, study: StudyRecord) -> np.ndarray:
        pixels = to_uint8(self._decode(study).pixels)
        h, w = pixels.shape[:2]
        scale = SCREEN_MAX_SIDE / max(h, w)
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
        return pixels

    def _cached(self, key: tuple[str, int | str], make) -> bytes:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        png = make()
        with self._lock:
            self._cache[key] = png
            while len(self._cache) > self._entries:
                self._cache.popitem(last=False)
        return png
