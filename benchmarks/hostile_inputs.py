"""Hostile inputs for the kiosk, generated when the tests and benchmarks/hostile_load.py run (no
binary blobs in the repository): memory bombs that are small on the wire, a legitimate large
radiograph that must still be accepted, idle and half-sent connections; and the server's memory
as Linux counts it, to see what they cost."""

from __future__ import annotations

import io
import socket
import struct
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

_ZEROS = bytes(16 * 2**20)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_pixel_bomb(width: int = 10_000, height: int = 10_000) -> bytes:
    """A valid 16-bit RGB PNG of zeros: about 570 KB that decode to width x height x 6 bytes."""
    row = bytes(1 + width * 6)  # filter type 0, then the samples
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def file_meta(transfer_syntax) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    return meta


def small_image_dataset(meta: FileMetaDataset, rows: int, cols: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.BodyPartExamined = "CR", "CHEST"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    return ds


def deflated_dicom_bomb(inflated_bytes: int = 2**30) -> bytes:
    """A Deflated Explicit VR Little Endian file (about 1 MB per GiB) whose dataset inflates to
    `inflated_bytes`: a small image header, then pixel data of zeros far beyond what it declares."""
    meta = file_meta(DeflatedExplicitVRLittleEndian)
    head = io.BytesIO()
    write_dataset(_as_explicit_le(head), small_image_dataset(meta, 64, 64))
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    pixel_header = b"\xe0\x7f\x10\x00OB\x00\x00" + struct.pack("<I", inflated_bytes)
    parts = [packer.compress(head.getvalue() + pixel_header)]
    left = inflated_bytes
    while left > 0:
        parts.append(packer.compress(_ZEROS[: min(left, len(_ZEROS))]))
        left -= len(_ZEROS)
    parts.append(packer.flush())
    return _preamble_and_meta(meta) + b"".join(parts)


def _as_explicit_le(fp: io.BytesIO) -> DicomFileLike:
    out = DicomFileLike(fp)
    out.is_little_endian, out.is_implicit_VR = True, False
    return out


def _preamble_and_meta(meta: FileMetaDataset) -> bytes:
    out = io.BytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(_as_explicit_le(out), meta, enforce_standard=True)
    return out.getvalue()


def radiograph_png(width: int = 6000, height: int = 5000) -> bytes:
    """A legitimate 30-megapixel 16-bit grayscale radiograph-like PNG (a smooth body plus noise)."""
    y, x = np.ogrid[:height, :width]
    body = np.exp(-(((x - width / 2) / (width / 3)) ** 2 + ((y - height / 2) / (height / 2.5)) ** 2))
    noise = np.random.default_rng(0).integers(0, 2048, (height, width), dtype=np.uint16)
    pixels = (body * 50_000).astype(np.uint16) + noise
    ok, buf = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    return buf.tobytes()


def hold_connections(url: str, count: int) -> list[socket.socket]:
    """``count`` connections to the kiosk at ``url``, held open: a third idle (connected, silent),
    the rest slow (part of a request's headers or body sent)."""
    parts = urlsplit(url)
    address = (parts.hostname, parts.port)
    held = []
    for i in range(count):
        sock = socket.create_connection(address, timeout=10)
        if i % 3 == 1:
            sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        elif i % 3 == 2:
            sock.sendall(b"POST /api/v1/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\nabc")
        held.append(sock)
    return held


def status_kb(pid: int, field: str) -> int:
    """A /proc/<pid>/status field in KiB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(f"{field} not in /proc/{pid}/status")


def reset_peak(pid: int) -> int:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux: clear_refs 5); returns the RSS in bytes."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return status_kb(pid, "VmRSS") * 1024
