"""What each kind of unusable image means, in the words a clinician at the bedside needs: what
happened and what to do. The decoder's own message (the technical detail) is shown behind
"Details" beside it, never instead of it. Kinds are intake's (device/intake/errors.py); a test keeps the two sets equal."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlainError:
    what: str  # what happened
    todo: str  # what to do


PLAIN_ERRORS: dict[str, PlainError] = {
    "too_large": PlainError("This file is too large for the kiosk.",
                            "Export the image at a smaller size from the modality or viewer, then try again."),
    "not_an_image": PlainError("This file is not an image the kiosk can read.",
                               "Choose the X-ray itself: a JPEG, PNG, TIFF or DICOM file."),
    "unsupported": PlainError("This kind of image is not supported.",
                              "Save it as JPEG, PNG, TIFF or uncompressed DICOM, then try again."),
    "empty": PlainError("This file is empty.",
                        "The copy may have failed. Copy the image again from its source, then try again."),
    "truncated": PlainError("This file is cut short: part of the image is missing.",
                            "Copy the image again from its source (the drive may have been removed too early)."),
    "no_pixel_data": PlainError("This DICOM file holds no image, only its description.",
                                "Send or export the image series itself from the modality, then try again."),
    "undecodable": PlainError("This file is damaged and the image cannot be read.",
                              "Copy the image again from its source, or export it again from the modality."),
    "unreadable": PlainError("The kiosk could not read this file from the drive.",
                             "Check the drive is still inserted and not damaged, then try again."),
}
