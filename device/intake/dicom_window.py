"""A grayscale DICOM's values before its VOI (window), for window/level on screen: the middle frame
after the modality LUT (rescale), and the window to start from: the file's own first window centre
and width where it has a valid one, else a linear window over the data's range (what the viewer
shows for a file without a window). The same reading as decode_dicom, so the screen starts from
exactly the image intake triaged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from device.intake.budget import DecodeBudget
from device.intake.dicom import (
    _MONOCHROME, _decode_frame, _header, _lut_item, _modality, _read, _window_of, pydicom_warnings_recorded,
)
from device.intake.errors import UNSUPPORTED, IntakeError

FROM_FILE, FROM_DATA = "the file's window", "the data's range"


@dataclass(frozen=True)
class ModalityValues:
    values: np.ndarray  # HxW, after the modality LUT: the numbers a window is applied to
    center: float
    width: float
    function: str  # LINEAR, LINEAR_EXACT or SIGMOID (PS3.3 C.11.2.1.2)
    origin: str  # FROM_FILE or FROM_DATA
    invert: bool  # MONOCHROME1: low values are white


def modality_values(data: bytes, source: str, budget: DecodeBudget) -> ModalityValues:
    """Raises IntakeError as decode_bytes does, and (unsupported) for a colour image."""
    with pydicom_warnings_recorded():
        ds = _read(data, source, budget)
        _, _, frames, _ = _header(ds, source, budget)
        arr, photometric = _decode_frame(ds, source, frames // 2)
        if arr.ndim != 2 or photometric not in _MONOCHROME:
            raise IntakeError(source, f"window/level needs a grayscale image, not {photometric}", UNSUPPORTED)
        values, _ = _modality(arr, ds)
        window = None if _lut_item(ds, "VOILUTSequence") is not None else _window_of(ds, [])
    if window is not None:
        center, width, function = window
        origin = FROM_FILE
    else:
        low, high = float(values.min()), float(values.max())
        center, width, function, origin = (low + high) / 2, max(high - low, 1.0), "LINEAR_EXACT", FROM_DATA
    return ModalityValues(np.asarray(values), center, width, function, origin, photometric == "MONOCHROME1")


def as_uint16(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``values`` as uint16 codes with (offset, step): value = offset + step * code. Integer data
    spanning at most 65536 values is kept exactly (step 1); anything else is quantised to 65536
    levels over its range, far finer than a screen's 256."""
    low, high = float(values.min()), float(values.max())
    exact = values.dtype.kind in "iu" and high - low <= 65535
    if exact:
        return (values.astype(np.int32) - np.int32(low)).astype("<u2"), low, 1.0
    step = (high - low) / 65535 if high > low else 1.0
    codes = np.rint((values.astype(np.float32) - np.float32(low)) * np.float32(1 / step))
    return np.clip(codes, 0, 65535).astype("<u2"), low, step
