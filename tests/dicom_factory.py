"""Grayscale DICOM files built in memory, the way a modality would send them."""

from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def grayscale_dicom(
    stored: np.ndarray,
    *,
    bits: int,
    monochrome1: bool = False,
    modality: str = "OT",
    body_part: str | None = None,
    window: tuple[float, float] | None = None,
) -> bytes:
    """``stored`` are the raw stored values (uint8 for 8 bits, else uint16 below 2**bits)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    if body_part:
        ds.BodyPartExamined = body_part
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored, ds.HighBit = bits, bits - 1
    ds.PixelData = stored.astype(np.uint8 if bits == 8 else np.uint16).tobytes()
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
