"""DICOM through pydicom 3 and the pylibjpeg plugins: the middle frame, as a viewer would display it.

Grayscale: modality LUT (rescale), then the VOI LUT or the first window if the file has one,
else min-max of the actual data; MONOCHROME1 is inverted so bone is always bright. Colour:
palette and YBR are turned into RGB.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import cv2
import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import (
    UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
)
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, as_pixel_options, get_decoder

from device.intake.budget import DecodeBudget
from models.reading import ReducedDecode, reduced_size, reduction
from device.intake.decoded import DecodedImage, check_dimensions
from device.intake.errors import NO_PIXEL_DATA, TRUNCATED, UNDECODABLE, UNSUPPORTED, IntakeError, first_line

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_MAX_WARNING_NOTES = 3
_PREAMBLE = 132  # 128 bytes of preamble, then b"DICM"
_META_GROUP = b"\x02\x00"  # the file meta elements' group number, little endian
# warnings.catch_warnings swaps process-wide state (the filter list and showwarning); two threads
# inside it at once restore each other's state and leave the process recording warnings forever.
# DICOM decodes therefore run one at a time per process; raster decodes do not need this.
_warnings_lock = threading.Lock()


@contextmanager
def pydicom_warnings_recorded() -> Iterator[list[warnings.WarningMessage]]:
    """Run pydicom inside: the warnings it gives for malformed-but-readable files are collected in
    the yielded list (one thread at a time, see _warnings_lock) instead of reaching the console."""
    with _warnings_lock, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def decode_dicom(data: bytes, source: str, budget: DecodeBudget, reduce: ReducedDecode | None = None) -> DecodedImage:
    """``reduce``: for a model only; a grayscale frame is area-averaged to the model's scale before its
    LUTs (see _reduced)."""
    # The warnings become notes (an audit trail).
    with pydicom_warnings_recorded() as caught:
        ds = _read(data, source, budget)
        rows, cols, frames, bits_stored = _header(ds, source, budget)
        index = frames // 2
        had_syntax = bool(ds.file_meta.get("TransferSyntaxUID"))
        arr, photometric = _decode_frame(ds, source, index)
        arr, reduced = _reduced(arr, ds, photometric, reduce)
        pixels, notes = _display_values(arr, ds, photometric, bits_stored, source)
        notes += reduced
    if not had_syntax:
        notes.insert(0, f"no file meta: read as {ds.file_meta.TransferSyntaxUID.name}")
    stored = str(ds.get("PhotometricInterpretation", "")) or None
    if stored and stored != photometric:
        notes.insert(0, f"{stored} converted to {photometric}")
    if frames > 1:
        notes.insert(0, f"frame {index + 1} of {frames}")
    notes += _warning_notes(caught)
    return DecodedImage(
        pixels=pixels,
        source_format="dicom",
        original_size=(rows, cols),
        bits_stored=bits_stored,
        modality=str(ds.get("Modality", "")).strip() or None,
        body_part=str(ds.get("BodyPartExamined", "")).strip().upper() or None,
        photometric=stored,
        frame=index,
        frames=frames,
        notes=tuple(notes),
    )


def _read(data: bytes, source: str, budget: DecodeBudget) -> pydicom.Dataset:
    """force=True reads datasets without preamble or meta; headers.sniff only sends plausible ones."""
    try:
        ds = _read_deflated(data, source, budget) or pydicom.dcmread(io.BytesIO(data), force=True)
    except IntakeError:
        raise
    except Exception as exc:  # pydicom raises many types on malformed input
        raise IntakeError(source, f"unreadable DICOM: {_describe(exc)}", _kind_of(exc)) from None
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise IntakeError(source, "DICOM float pixel data is not supported", UNSUPPORTED)
        sop = ds.get("SOPClassUID")
        what = f"{sop.name} object" if sop else "dataset"
        raise IntakeError(source, f"DICOM {what} has no pixel data (not an image)", NO_PIXEL_DATA)
    return ds


def _read_deflated(data: bytes, source: str, budget: DecodeBudget) -> pydicom.Dataset | None:
    """A Deflated Explicit VR Little Endian file, inflated within the budget; None for any other file.

    pydicom inflates such a dataset in one ``zlib.decompress`` before anything can be checked (1 MB
    can become gigabytes), so the file meta is read here and the rest inflated piece by piece.
    """
    start = _PREAMBLE if data[128:_PREAMBLE] == b"DICM" else 0
    if not data.startswith(_META_GROUP, start):
        return None  # no file meta (group 0002, always little endian): nothing says "deflated"
    stream = io.BytesIO(data[start:])
    meta = read_dataset(stream, False, True, stop_when=lambda tag, vr, length: tag.group != 2)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return None
    inflated = budget.inflate(source, data[start + stream.tell():])
    ds = pydicom.dcmread(io.BytesIO(inflated), force=True)
    ds.file_meta = FileMetaDataset(meta)
    return ds


def _header(ds: pydicom.Dataset, source: str, budget: DecodeBudget) -> tuple[int, int, int, int]:
    """Rows, Columns, NumberOfFrames, BitsStored, checked before any pixel is decoded."""
    if "Rows" not in ds or "Columns" not in ds:
        raise IntakeError(source, "invalid DICOM image header: no Rows/Columns", UNDECODABLE)
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
        bits_stored = int(ds.get("BitsStored") or 8)
        samples = int(ds.get("SamplesPerPixel") or 1)
        sample_bytes = -(-int(ds.get("BitsAllocated") or 8) // 8)
    except (TypeError, ValueError) as exc:
        raise IntakeError(source, f"invalid DICOM image header: {_describe(exc)}", UNDECODABLE) from None
    check_dimensions(source, rows, cols)
    # Display values are float32 (4 bytes a sample), except 8-bit colour, which stays 8-bit.
    budget.check_image(source, rows, cols, max(1, samples), 1 if samples > 1 and sample_bytes == 1 else 4, frames)
    if frames < 1:
        raise IntakeError(source, f"invalid DICOM image header: NumberOfFrames is {frames}", UNDECODABLE)
    return rows, cols, frames, bits_stored


def _decode_frame(ds: pydicom.Dataset, source: str, index: int) -> tuple[np.ndarray, str]:
    """Decode only frame `index`; returns it and its photometric interpretation after decoding.

    pylibjpeg is chosen explicitly where it can decode: it is what the device ships, so a
    development machine with Pillow installed does not decode files the device cannot.
    """
    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    if not tsyntax:
        tsyntax = _native_syntax(ds)
        if tsyntax is None:
            raise IntakeError(
                source, "DICOM has no Transfer Syntax UID and its pixel data is compressed, so the codec "
                "is unknown", UNSUPPORTED,
            )
        ds.file_meta.TransferSyntaxUID = tsyntax  # the pixel decoders read it from there
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise IntakeError(source, f"DICOM transfer syntax {tsyntax.name} is not supported", UNSUPPORTED) from None
    if not decoder.is_available:
        raise IntakeError(source, f"no decoder installed for DICOM {tsyntax.name}", UNSUPPORTED)
    plugin = "pylibjpeg" if "pylibjpeg" in decoder.available_plugins else ""
    options = as_pixel_options(ds, correct_unused_bits=True)
    try:
        arr, properties = decoder.as_array(ds, index=index, raw=False, decoding_plugin=plugin, **options)
    except Exception as exc:  # codec plugins raise RuntimeError, ValueError, ...
        raise IntakeError(
            source, f"cannot decode the {tsyntax.name} pixel data: {_describe(exc)}", _kind_of(exc)
        ) from None
    return arr, str(properties.get("photometric_interpretation", ds.get("PhotometricInterpretation", "")))


def _reduced(arr: np.ndarray, ds: pydicom.Dataset, photometric: str,
             reduce: ReducedDecode | None) -> tuple[np.ndarray, list[str]]:
    """A grayscale frame shrunk by the JPEG factors' rule (models/reading.py) with an area
    average (what libjpeg's DCT scaling computes), before the rescale and window: those then run on
    a 64th of the pixels. Only where they are linear maps and a clip (rescale slope/intercept, a
    window), never before LUT tables, whose entries are indexed by exact stored values. The codecs
    shipped here decode whole (pylibjpeg-openjpeg exposes no reduced-resolution JPEG 2000 decode),
    so this saves the LUT and preprocessing work, not the codec's."""
    if reduce is None or arr.ndim != 2 or photometric not in _MONOCHROME:
        return arr, []
    if _lut_item(ds, "ModalityLUTSequence") is not None or _lut_item(ds, "VOILUTSequence") is not None:
        return arr, []
    factor = reduction(*arr.shape, reduce.min_side)
    if factor == 1:
        return arr, []
    height, width = reduced_size(*arr.shape, factor)
    kept = arr if arr.dtype in (np.uint8, np.uint16, np.int16) else arr.astype(np.float32)
    small = cv2.resize(np.ascontiguousarray(kept), (width, height), interpolation=cv2.INTER_AREA)
    return small, [f"analysed at 1/{factor} scale ({width}x{height}) for the model"]


def _display_values(
    arr: np.ndarray, ds: pydicom.Dataset, photometric: str, bits_stored: int, source: str
) -> tuple[np.ndarray, list[str]]:
    try:
        if arr.ndim == 2 and photometric == "PALETTE COLOR":
            return _palette(arr, ds)
        if arr.ndim == 3 and photometric == "RGB":
            return _rgb(arr, bits_stored)
        if arr.ndim == 2 and photometric in _MONOCHROME:
            return _grayscale(arr, ds, photometric, bits_stored)
    except Exception as exc:  # malformed LUTs, rescale or window values
        raise IntakeError(source, f"cannot apply the DICOM LUTs: {_describe(exc)}", UNDECODABLE) from None
    raise IntakeError(source, f"DICOM photometric interpretation {photometric!r} is not supported", UNSUPPORTED)


def _palette(arr: np.ndarray, ds: pydicom.Dataset) -> tuple[np.ndarray, list[str]]:
    rgb = apply_color_lut(arr, ds)
    if _big_endian_plain_lut(ds) and rgb.dtype == np.uint16:
        # pydicom 3.0.2 reads non-segmented 16-bit LUT data in native (little) byte order even for
        # Explicit VR Big Endian files; the segmented branch gets it right.
        rgb = rgb.byteswap()
    if rgb.dtype != np.uint8:
        rgb = (rgb.astype(np.float32) * np.float32(1.0 / 65535.0)).clip(0.0, 1.0)
    return rgb, ["palette colour applied"]


def _big_endian_plain_lut(ds: pydicom.Dataset) -> bool:
    little = ds.original_encoding[1]
    return little is False and "RedPaletteColorLookupTableData" in ds


def _rgb(arr: np.ndarray, bits_stored: int) -> tuple[np.ndarray, list[str]]:
    if arr.dtype == np.uint8:
        return arr, []
    scale = np.float32(1.0 / (2**bits_stored - 1))
    return (arr.astype(np.float32) * scale).clip(0.0, 1.0), [f"{bits_stored}-bit RGB scaled to [0,1]"]


def _grayscale(
    arr: np.ndarray, ds: pydicom.Dataset, photometric: str, bits_stored: int
) -> tuple[np.ndarray, list[str]]:
    values, notes = _modality(arr, ds)
    unit = _voi(values, ds, notes)
    if unit is None and values.dtype == np.uint8 and bits_stored == 8:
        unit = values  # plain 8-bit data: same treatment as an 8-bit JPEG
    elif unit is None:
        unit = _min_max(values, notes)
    if photometric == "MONOCHROME1":
        unit = 255 - unit if unit.dtype == np.uint8 else np.float32(1.0) - unit
        notes.append("MONOCHROME1 inverted")
    return unit, notes


def _voi(values: np.ndarray, ds: pydicom.Dataset, notes: list[str]) -> np.ndarray | None:
    """VOI LUT, else the first window, mapped to [0, 1]; None when the file has neither.

    A VOI that maps the whole image to one level (a window that misses the data entirely, as
    some writers store for offset data) is dropped in favour of min-max, with a note.
    """
    window = _window_of(ds, notes)
    if _lut_item(ds, "VOILUTSequence") is not None:
        unit, what = _voi_lut(values, ds), "VOI LUT"
    elif window is not None:
        unit, what = _window(values, *window), f"window C/W {window[0]:g}/{window[1]:g}"
        what += "" if window[2] == "LINEAR" else f" {window[2]}"
    else:
        return None
    if unit.size and unit.min() == unit.max():
        notes.append(f"{what} maps the whole image to one level; ignored")
        return None
    notes.append(f"{what} applied" if what == "VOI LUT" else what)
    return unit


def _native_syntax(ds: pydicom.Dataset) -> UID | None:
    """The transfer syntax of a dataset without file meta (raw, as some old modalities write it):
    knowable from how it was read when its pixel data is uncompressed, unknowable otherwise."""
    if ds["PixelData"].is_undefined_length or ds.original_encoding[0] is None:
        return None
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _lut_item(ds: pydicom.Dataset, keyword: str) -> pydicom.Dataset | None:
    """The first item of a LUT sequence, or None if absent or empty (some writers leave it empty)."""
    items = ds.get(keyword) or []
    first = items[0] if len(items) else None
    if first is None or first.get("LUTDescriptor") is None or first.get("LUTData") is None:
        return None
    return first


def _modality(arr: np.ndarray, ds: pydicom.Dataset) -> tuple[np.ndarray, list[str]]:
    if _lut_item(ds, "ModalityLUTSequence") is not None:
        return apply_modality_lut(arr, ds), ["modality LUT applied"]
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is None or intercept is None or (float(slope), float(intercept)) == (1.0, 0.0):
        return arr, []
    with np.errstate(over="ignore", invalid="ignore"):
        values = apply_modality_lut(arr, ds)
        finite = np.isfinite(values.astype(np.float32)).all()  # later steps work in float32
    # A NaN/inf slope or an overflowing one makes every later comparison false: the image would
    # pass the quality checks and the model would answer NaN, read as ROUTINE. Refuse it here.
    if not finite:
        raise ValueError(f"rescale slope/intercept {slope}/{intercept} give non-finite pixel values")
    return values, [f"rescale slope/intercept {float(slope):g}/{float(intercept):g} applied"]


def _window_of(ds: pydicom.Dataset, notes: list[str]) -> tuple[float, float, str] | None:
    """The first (center, width, function) in the file, or None; an invalid window is noted and skipped."""
    if ds.get("WindowCenter") in (None, "") or ds.get("WindowWidth") in (None, ""):
        return None
    try:
        center = float(np.atleast_1d(np.asarray(ds.WindowCenter, dtype=np.float64))[0])
        width = float(np.atleast_1d(np.asarray(ds.WindowWidth, dtype=np.float64))[0])
    except (TypeError, ValueError, IndexError):
        notes.append("unreadable window center/width ignored")
        return None
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    if not np.isfinite(center) or not width > (1.0 if function == "LINEAR" else 0.0):
        notes.append(f"invalid window C/W {center:g}/{width:g} ignored")
        return None
    return center, width, function


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2, straight to [0, 1] (the nominal display range, not the data's min-max)."""
    x = values.astype(np.float32, copy=False)
    if function == "SIGMOID":
        with np.errstate(over="ignore"):
            return (1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))).astype(np.float32)
    if function == "LINEAR_EXACT":
        y = (x - center) / width + 0.5
    else:
        y = (x - (center - 0.5)) / (width - 1.0) + 0.5
    return np.clip(y, 0.0, 1.0).astype(np.float32, copy=False)


def _voi_lut(values: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Apply the first VOI LUT and scale by the range of its own entries.

    Some writers declare 16-bit LUT entries but fill only 12 bits; the entries' range is what
    the LUT author meant as black..white.
    """
    if values.dtype.kind == "f":
        values = np.rint(values).astype(np.int64)
    entries, first, _ = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor)
    table = apply_voi(np.arange(first, first + (entries or 2**16)), ds, index=0)
    low, high = float(table.min()), float(table.max())
    out = apply_voi(values, ds, index=0).astype(np.float32)
    if high <= low:
        return np.zeros_like(out)
    return (out - np.float32(low)) * np.float32(1.0 / (high - low))


def _min_max(values: np.ndarray, notes: list[str]) -> np.ndarray:
    x = values.astype(np.float32)
    low, high = float(x.min()), float(x.max())
    if high <= low:
        notes.append("constant image (no contrast)")
        return np.zeros_like(x)
    notes.append("min-max scaled to [0,1]")
    return (x - np.float32(low)) * np.float32(1.0 / (high - low))


def _warning_notes(caught: list[warnings.WarningMessage]) -> list[str]:
    messages = dict.fromkeys(f"pydicom: {first_line(str(w.message))}" for w in caught)
    return list(messages)[:_MAX_WARNING_NOTES]


def _kind_of(exc: BaseException) -> str:
    text = str(exc).lower()
    truncated = isinstance(exc, EOFError) or "less than expected" in text or "end of file" in text
    return TRUNCATED if truncated else UNDECODABLE


def _describe(exc: BaseException) -> str:
    """pydicom's multi-plugin errors span lines; keep them on one line and short."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = "; ".join(lines) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
