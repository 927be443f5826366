"""Image intake: bytes from a file or an upload -> DecodedImage, or an IntakeError that says why not.

The format is sniffed from magic bytes (never the extension) and the image size is read from the
header and checked before anything is decoded.
"""

from __future__ import annotations

import os

from device.intake import headers
from device.intake.budget import DEFAULT_BUDGET, DecodeBudget
from device.intake.decoded import MAX_FILE_BYTES, MAX_PIXELS, MAX_SIDE, DecodedImage
from device.intake.dicom import decode_dicom
from device.intake.dicom_window import ModalityValues, as_uint16, modality_values
from device.intake.errors import EMPTY, NOT_AN_IMAGE, TOO_LARGE, UNREADABLE, UNSUPPORTED, IntakeError
from device.intake.raster import decode_raster
from models.reading import ReducedDecode

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_PIXELS",
    "MAX_SIDE",
    "DecodeBudget",
    "DecodedImage",
    "IntakeError",
    "ModalityValues",
    "as_uint16",
    "ReducedDecode",
    "decode_bytes",
    "decode_file",
    "modality_values",
]


def decode_file(path: str | os.PathLike, budget: DecodeBudget = DEFAULT_BUDGET,
                reduce: ReducedDecode | None = None) -> DecodedImage:
    source = os.fspath(path)
    try:
        size = os.stat(source).st_size
        _check_byte_size(source, size)
        with open(source, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise IntakeError(source, f"cannot read the file: {exc.strerror or exc}", UNREADABLE) from None
    return decode_bytes(data, source, budget, reduce)


def decode_bytes(data: bytes, name: str, budget: DecodeBudget = DEFAULT_BUDGET,
                 reduce: ReducedDecode | None = None) -> DecodedImage:
    """Decode an upload; `name` is only used in messages. Refused (too_large) beyond `budget`.
    ``reduce``: only as large as a model needs (see models/reading.py), where the format
    can decode at reduced scale."""
    _check_byte_size(name, len(data))
    fmt = headers.sniff(data)
    if fmt in ("dicom", "dicom-raw"):
        return decode_dicom(data, name, budget, reduce)
    if fmt is not None:
        return decode_raster(data, name, fmt, budget, reduce)
    other = headers.other_image_format(data)
    if other:
        raise IntakeError(name, f"{other} images are not supported (use JPEG, PNG, TIFF or DICOM)", UNSUPPORTED)
    raise IntakeError(name, "not an image: not JPEG, PNG, TIFF or DICOM", NOT_AN_IMAGE)


def _check_byte_size(source: str, size: int) -> None:
    if size == 0:
        raise IntakeError(source, "the file is empty", EMPTY)
    if size > MAX_FILE_BYTES:
        raise IntakeError(
            source, f"the file is {size / 2**20:.0f} MiB; the limit is {MAX_FILE_BYTES // 2**20} MiB", TOO_LARGE
        )
