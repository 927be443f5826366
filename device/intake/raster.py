"""JPEG, PNG and TIFF through OpenCV, after the header checks in headers.py."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import cv2
import numpy as np

from device.intake import headers
from device.intake.budget import DecodeBudget
from device.intake.decoded import DecodedImage
from device.intake.errors import TRUNCATED, UNDECODABLE, UNSUPPORTED, IntakeError, first_line
from models.reading import WHOLE_FLAGS, ReducedDecode, jpeg_flags, reduced_size

_CHECKS = {"jpeg": headers.check_jpeg, "png": headers.check_png, "tiff": headers.check_tiff}


# OpenCV's log level is process-wide. Decodes run on several threads at once (the kiosk's request
# pool), so the level is switched off by the first decode to enter and restored by the last to leave;
# a per-call save/restore would let overlapping calls restore each other's "silent" for good.
_quiet_lock = threading.Lock()
_quiet_users = 0
_quiet_previous: int | None = None


@contextmanager
def _opencv_quiet():
    """OpenCV logs decoder complaints about bad data to stderr; intake reports them as IntakeError instead."""
    global _quiet_users, _quiet_previous
    with _quiet_lock:
        if _quiet_users == 0:
            _quiet_previous = cv2.utils.logging.getLogLevel()
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        _quiet_users += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_users -= 1
            if _quiet_users == 0:
                cv2.utils.logging.setLogLevel(_quiet_previous)


# PNG colour types -> samples OpenCV decodes them to (ANYCOLOR drops alpha, expands palettes).
_PNG_SAMPLES = {0: 1, 2: 3, 3: 3, 4: 1, 6: 3}


def _decoded_sample_shape(data: bytes, fmt: str) -> tuple[int, int]:
    """(samples per pixel, bytes per sample) the decoder will produce; the worst case where the
    header is not read here (JPEG: colour; TIFF: 16-bit colour)."""
    if fmt == "png":
        return _PNG_SAMPLES.get(data[25], 3), 2 if data[24] == 16 else 1
    return (3, 1) if fmt == "jpeg" else (3, 2)


def decode_raster(data: bytes, source: str, fmt: str, budget: DecodeBudget,
                  reduce: ReducedDecode | None = None) -> DecodedImage:
    """``reduce``: decode a JPEG no larger than that needs (models/reading.py); other formats
    have no scaled decode and are decoded whole."""
    height, width = _CHECKS[fmt](data, source)
    budget.check_image(source, height, width, *_decoded_sample_shape(data, fmt))
    factor, flags = jpeg_flags(height, width, reduce) if fmt == "jpeg" else (1, WHOLE_FLAGS)
    with _opencv_quiet():
        try:
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
        except cv2.error as exc:
            why = first_line(str(exc)) or type(exc).__name__
            raise IntakeError(source, f"cannot decode the {fmt.upper()} data: {why}", UNDECODABLE) from None
    if bgr is None:
        kind = TRUNCATED if fmt == "png" else UNDECODABLE
        raise IntakeError(source, f"cannot decode the {fmt.upper()} data (corrupt or incomplete)", kind)
    pixels, notes = _to_contract(bgr, source, fmt)
    stored = reduced_size(height, width, factor)
    if pixels.shape[:2] != stored:
        notes += (f"EXIF orientation applied (stored {width}x{height})",)
    if factor > 1:
        notes += (f"decoded at 1/{factor} scale ({pixels.shape[1]}x{pixels.shape[0]}) for the model",)
    return DecodedImage(
        pixels=pixels,
        source_format=fmt,
        original_size=(height, width),
        bits_stored=16 if bgr.dtype == np.uint16 else 8,
        notes=notes,
    )


def _to_contract(bgr: np.ndarray, source: str, fmt: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """OpenCV's BGR -> RGB order; 16-bit -> float32 in [0, 1] (full-scale: value / 65535)."""
    pixels = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr.ndim == 3 else bgr
    if pixels.dtype == np.uint8:
        return pixels, ()
    if pixels.dtype == np.uint16:
        scaled = pixels.astype(np.float32) * np.float32(1.0 / 65535.0)
        return scaled, (f"16-bit {fmt.upper()} scaled to [0,1]",)
    raise IntakeError(source, f"{fmt.upper()} with {pixels.dtype} samples is not supported", UNSUPPORTED)
