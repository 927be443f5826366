"""PNG renderings of stored studies for the screen: the image as a viewer shows it, and the heatmap.

Uploads are acknowledged without rendering anything (that would add tens of milliseconds to each
study); the screen versions are made on first view from the stored image and the stored
activation map, and kept in a small in-memory cache. Screen versions are downscaled; exports
render at full resolution.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import cv2
import numpy as np

from device import heatmap, intake
from device.kiosk.store import Store, StudyRecord

SCREEN_MAX_SIDE = 1024


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    return np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG of a gray or RGB uint8 image."""
    bgr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR) if pixels.ndim == 3 else pixels
    ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


class Renderer:
    def __init__(self, store: Store, cache_entries: int = 32):
        self._store = store
        self._cache: OrderedDict[tuple[str, int | str], bytes] = OrderedDict()
        self._entries = cache_entries
        self._lock = threading.Lock()

    def preview_png(self, study: StudyRecord) -> bytes:
        return self._cached(("preview", study.image_sha256), lambda: encode_png(self._screen_pixels(study)))

    def heatmap_png(self, study: StudyRecord) -> bytes | None:
        """The overlay at screen size, or None when the model gives no activation map."""
        if study.cam is None:
            return None
        return self._cached(
            ("heatmap", study.id), lambda: encode_png(heatmap.overlay(self._screen_pixels(study), study.cam))
        )

    def heatmap_full_png(self, study: StudyRecord) -> bytes | None:
        if study.cam is None:
            return None
        return encode_png(heatmap.overlay(self._decode(study).pixels, study.cam))

    def _decode(self, study: StudyRecord) -> intake.DecodedImage:
        return intake.decode_file(self._store.image_path(study.image_sha256))

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
