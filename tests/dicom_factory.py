"""Grayscale DICOM files built in memory, the way a modality would send them."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

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


def chest_radiograph_dicom(film: Path, *, modality: str = "CR", view: str = "PA", max_side: int = 1024,
                           **header: str) -> bytes:
    """A chest film (a JPEG from the shared chest X-ray set) as a modality sends it: a CR (or a DX
    For Presentation) instance, 12 bits stored, BodyPartExamined CHEST, a new study and series;
    ``header`` sets more attributes by keyword (PatientBirthDate, ...). Scaled to ``max_side`` so
    the tests move megabytes, not tens of them."""
    import cv2
    from pydicom.uid import ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation

    gray = cv2.imread(str(film), cv2.IMREAD_GRAYSCALE)
    scale = max_side / max(gray.shape)
    if scale < 1:
        gray = cv2.resize(gray, (round(gray.shape[1] * scale), round(gray.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    sop_class = ComputedRadiographyImageStorage if modality == "CR" else DigitalXRayImageStorageForPresentation
    ds = pydicom.dcmread(io.BytesIO(grayscale_dicom(gray.astype(np.uint16) * 16, bits=12, modality=modality,
                                                    body_part="CHEST")))
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.ViewPosition, ds.PatientName, ds.PatientID = view, "CHEST^TEST", "P-CHEST"
    ds.StudyDate, ds.AccessionNumber, ds.InstanceNumber = "20260102", "ACC-CHEST", 1
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
    with warnings.catch_warnings():  # a malformed value is what some tests send, on purpose
        warnings.simplefilter("ignore")
        for keyword, value in header.items():
            setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
