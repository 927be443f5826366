"""Intake is called from the kiosk's request threads: concurrent decodes must give the same answers
as one-at-a-time decodes and leave the process-wide state (warning filters, OpenCV's log level)
exactly as they found it."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
from device.intake import IntakeError, decode_bytes
from dicom_factory import grayscale_dicom
from models.datasets import datasets_dir


def _png(seed: int, dtype=np.uint8) -> bytes:
    rng = np.random.default_rng(seed)
    top = 255 if dtype == np.uint8 else 65535
    ok, buf = cv2.imencode(".png", rng.integers(0, top, (96, 80), dtype=dtype))
    return buf.tobytes()


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    ok, buf = cv2.imencode(".jpg", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return buf.tobytes()


def _dicom(seed: int) -> bytes:
    stored = np.random.default_rng(seed).integers(0, 4096, (48, 40), dtype=np.uint16)
    return grayscale_dicom(stored, bits=12)


def _inputs() -> list[tuple[str, bytes]]:
    items = []
    for i in range(6):
        items += [
            (f"gray{i}.png", _png(i)),
            (f"deep{i}.png", _png(i, np.uint16)),
            (f"colour{i}.jpg", _jpeg(i)),
            (f"truncated{i}.jpg", _jpeg(i)[:300]),
            (f"scan{i}.dcm", _dicom(i)),
        ]
    # A real file whose decode records a pydicom warning as a note: the note must stay with it.
    quirky = datasets_dir() / "dicom" / "secondary_capture" / "SC_rgb_jpeg.dcm"
    if quirky.is_file():
        items += [(f"quirky{i}.dcm", quirky.read_bytes()) for i in range(4)]
    return items


def _outcome(item: tuple[str, bytes]):
    name, data = item
    try:
        img = decode_bytes(data, name)
    except IntakeError as exc:
        return ("error", exc.kind, exc.reason)
    return ("ok", img.pixels.dtype.str, img.pixels.shape, float(img.pixels.sum()), img.notes)


def test_concurrent_decodes_match_sequential_and_leave_global_state_alone():
    items = _inputs() * 3
    level = cv2.utils.logging.getLogLevel()
    filters = list(warnings.filters)
    showwarning = warnings.showwarning

    expected = [_outcome(item) for item in items]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            assert list(pool.map(_outcome, items)) == expected

    assert cv2.utils.logging.getLogLevel() == level
    assert warnings.filters == filters
    assert warnings.showwarning is showwarning
    assert any(o[0] == "error" for o in expected) and any(o[0] == "ok" for o in expected)
