"""Format sniffing and header-only size reading, so nothing is decoded before it is known to be sane.

Everything here works on the raw bytes with the standard library: a 100000x100000 PNG is refused
from its 33-byte header, without the decoder ever allocating.
"""

from __future__ import annotations

import struct
import zlib

from device.intake.decoded import check_dimensions
from device.intake.errors import TRUNCATED, UNDECODABLE, UNSUPPORTED, IntakeError

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

# Recognised so the user is told "unsupported format" rather than "not an image".
_OTHER_IMAGE_MAGICS = {
    b"BM": "BMP",
    b"GIF8": "GIF",
    b"\x00\x00\x00\x0cjP  ": "JPEG 2000 (JP2)",
    b"\xff\x4f\xff\x51": "JPEG 2000 codestream",
}

# SOF markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but are not frames.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_SOS, _JPEG_EOI = 0xDA, b"\xff\xd9"
# Markers that stand alone, without a length field.
_JPEG_STANDALONE = frozenset(range(0xD0, 0xDA)) | {0x01}
_TIFF_INT = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8


def sniff(data: bytes) -> str | None:
    """'jpeg' | 'png' | 'tiff' | 'dicom' from magic bytes; 'dicom-raw' for a meta-less dataset; else None.

    DICOM goes first: its 128-byte preamble may itself hold a TIFF header (dual-personality files).
    """
    if data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(PNG_MAGIC):
        return "png"
    if data[:4] in TIFF_MAGICS:
        return "tiff"
    if _looks_like_raw_dicom(data):
        return "dicom-raw"
    return None


def other_image_format(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    for magic, name in _OTHER_IMAGE_MAGICS.items():
        if data.startswith(magic):
            return name
    return None


def _looks_like_raw_dicom(data: bytes) -> bool:
    """A dataset without preamble starts with a group 0002 (file meta) or 0008 element, either endianness.

    Only then is pydicom asked to force-read it: a forced read of arbitrary bytes "succeeds" with garbage.
    """
    if len(data) < 8:
        return False
    little, big = struct.unpack("<H", data[:2])[0], struct.unpack(">H", data[:2])[0]
    return little in (0x0002, 0x0008) or big in (0x0002, 0x0008)


def check_jpeg(data: bytes, source: str) -> tuple[int, int]:
    """(height, width) from the first SOF segment, checked against the limits; then proves the scan ends with EOI.

    OpenCV's libjpeg may fill a truncated scan with grey instead of failing, so truncation is
    detected here: the last EOI must come after the first SOS (byte stuffing keeps FFD9 out of
    entropy-coded data, and an EXIF thumbnail's EOI sits before the main scan).
    """
    pos, size, first_sos = 2, None, None
    while pos + 4 <= len(data) and first_sos is None:
        if data[pos] != 0xFF:
            raise IntakeError(source, f"corrupt JPEG: no marker at byte {pos}", UNDECODABLE)
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF and size is None and pos + 9 <= len(data):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            size = (height, width)
        if marker == _JPEG_SOS:
            first_sos = pos
        pos += 2 + length
    if size is None or first_sos is None:
        raise IntakeError(source, "truncated JPEG: the file ends inside its header", TRUNCATED)
    if size[0] == 0:
        raise IntakeError(source, "JPEG with the height in a DNL marker is not supported", UNSUPPORTED)
    check_dimensions(source, *size)
    if data.rfind(_JPEG_EOI) < first_sos:
        raise IntakeError(source, "truncated JPEG: no end-of-image marker after the image data", TRUNCATED)
    return size


def check_png(data: bytes, source: str) -> tuple[int, int]:
    """(height, width) from IHDR, checked against the limits; then the chunk list must reach IEND."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise IntakeError(source, "truncated PNG: no complete IHDR header", TRUNCATED)
    width, height = struct.unpack(">II", data[16:24])
    check_dimensions(source, height, width)
    _require_png_iend(data, source)
    return height, width


def _require_png_iend(data: bytes, source: str) -> None:
    """Walk the chunks to IEND, verifying each CRC.

    A corrupt chunk is caught here with a clear reason; left to OpenCV, libpng would print its
    complaint straight to stderr.
    """
    pos = 8
    while pos + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            break
        if zlib.crc32(data[pos + 4 : end]) != struct.unpack(">I", data[end : end + 4])[0]:
            raise IntakeError(source, f"corrupt PNG: checksum mismatch in a {kind!r} chunk", UNDECODABLE)
        if kind == b"IEND":
            return
        pos = end + 4
    raise IntakeError(source, "truncated PNG: the file ends before its IEND chunk", TRUNCATED)


def check_tiff(data: bytes, source: str) -> tuple[int, int]:
    """(height, width) of the first IFD (the page OpenCV decodes), checked; classic TIFF and BigTIFF."""
    order = "<" if data[:2] == b"II" else ">"
    big = struct.unpack(order + "H", data[2:4])[0] == 43
    try:
        size = _tiff_ifd_size(data, order, big)
    except struct.error:
        raise IntakeError(source, "truncated TIFF: the first image directory is cut off", TRUNCATED) from None
    except KeyError:
        raise IntakeError(source, "corrupt TIFF: no readable ImageWidth/ImageLength tags", UNDECODABLE) from None
    check_dimensions(source, *size)
    return size


def _tiff_ifd_size(data: bytes, order: str, big: bool) -> tuple[int, int]:
    # Classic: 2-byte count, 12-byte entries, 4-byte offsets. BigTIFF: 8-byte count, 20-byte entries.
    count_fmt, entry_size, offset_fmt, first = ("Q", 20, "Q", 8) if big else ("H", 12, "I", 4)
    (ifd,) = struct.unpack_from(order + offset_fmt, data, first)
    (count,) = struct.unpack_from(order + count_fmt, data, ifd)
    values = {}
    start = ifd + struct.calcsize(count_fmt)
    for i in range(count):
        entry = start + i * entry_size
        tag, typ = struct.unpack_from(order + "HH", data, entry)
        if tag in (256, 257):
            value_at = entry + (12 if big else 8)
            values[tag] = struct.unpack_from(order + _TIFF_INT[typ], data, value_at)[0]
    return values[257], values[256]
