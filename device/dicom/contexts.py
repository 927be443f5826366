"""What the SCP accepts: the storage SOP classes we can triage, in every transfer syntax our intake
decodes (device/intake/dicom.py hands the pixel data to pydicom's decoders and pylibjpeg)."""

from __future__ import annotations

from pydicom import uid
from pynetdicom import build_context
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification

STORAGE_CLASSES = (
    uid.ComputedRadiographyImageStorage,
    uid.DigitalXRayImageStorageForPresentation,
    uid.DigitalXRayImageStorageForProcessing,
    uid.UltrasoundImageStorage,
    uid.UltrasoundMultiFrameImageStorage,
    uid.SecondaryCaptureImageStorage,
    uid.VLPhotographicImageStorage,
)

TRANSFER_SYNTAXES = (
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.RLELossless,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.HTJ2K,
)


def supported_contexts() -> list[PresentationContext]:
    """Verification (C-ECHO) and one context per storage class with all our transfer syntaxes."""
    return [build_context(Verification)] + [build_context(c, list(TRANSFER_SYNTAXES)) for c in STORAGE_CLASSES]
