"""What the SCP accepts: the image storage SOP classes a modality may send, in every transfer syntax
our intake decodes (device/intake/dicom.py hands the pixel data to pydicom's decoders and pylibjpeg).

Accepting a class is not triaging it: the routes (device/dicom/routing.py) decide which exam, if
any, triages an instance; one no exam takes is kept and listed, and its sender told it is stored,
rather than refused at the association (a modality that cannot store a series often stops sending).
"""

from __future__ import annotations

from pydicom import uid
from pynetdicom import build_context, sop_class
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
    sop_class.DermoscopicPhotographyImageStorage,
    # kept, not triaged unless a route names an exam for them
    sop_class.CTImageStorage,
    sop_class.EnhancedCTImageStorage,
    sop_class.MRImageStorage,
    sop_class.EnhancedMRImageStorage,
    sop_class.NuclearMedicineImageStorage,
    sop_class.PositronEmissionTomographyImageStorage,
    sop_class.XRayAngiographicImageStorage,
    sop_class.XRayRadiofluoroscopicImageStorage,
    sop_class.DigitalMammographyXRayImageStorageForPresentation,
    sop_class.DigitalIntraOralXRayImageStorageForPresentation,
    sop_class.VLEndoscopicImageStorage,
    sop_class.VLMicroscopicImageStorage,
    sop_class.OphthalmicPhotography8BitImageStorage,
    sop_class.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    sop_class.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    sop_class.MultiFrameTrueColorSecondaryCaptureImageStorage,
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
