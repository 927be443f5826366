"""Errors the kiosk answers with a 4xx: each carries its HTTP status and a message for the user."""

from __future__ import annotations

import errno
from pathlib import Path

from device.intake import IntakeError

# How an unusable image maps to HTTP (the intake kinds are documented in device/intake/errors.py).
INTAKE_STATUS = {
    "too_large": 413,
    "not_an_image": 415,
    "unsupported": 415,
    "empty": 422,
    "truncated": 422,
    "no_pixel_data": 422,
    "undecodable": 422,
    "unreadable": 422,
}


class KioskError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, **extra: object):
        super().__init__(message)
        self.message = message
        self.extra = extra


class BadRequest(KioskError):
    pass


class MisdirectedRequest(KioskError):
    """A Host name this kiosk does not answer to (security.py)."""

    status = 421
    code = "unknown_host"


class CrossSiteRequest(KioskError):
    """A change sent from another site, or a form without this kiosk's token (security.py)."""

    status = 403
    code = "cross_site"


class UnsupportedBody(KioskError):
    status = 415
    code = "unsupported_media_type"


class NotFound(KioskError):
    status = 404
    code = "not_found"


class Conflict(KioskError):
    """The request is valid but the state does not allow it now (a capture from a stalled source)."""

    status = 409
    code = "conflict"


class Busy(KioskError):
    """Every slot for this kind of request is taken; try again later."""

    status = 503
    code = "busy"


class OtherPatient(KioskError):
    """The exact image is already saved under another patient reference: a possible patient mix-up.
    Kept as a new study only when the person confirms it (StudyService.keep_other_patient)."""

    status = 409
    code = "same_image_other_patient"

    def __init__(self, filename: str, reference: str, earlier_study: int, earlier_reference: str, sha256: str):
        super().__init__(
            f"{filename}: this exact image was already saved as study {earlier_study} for patient reference "
            f"{earlier_reference!r}, not {reference!r}: a possible patient mix-up. Check which patient it belongs "
            "to; to keep it all the same, send it again with other_patient=1",
            reference=reference, earlier_study=earlier_study, earlier_reference=earlier_reference, image_sha256=sha256,
        )
        self.filename = filename
        self.reference = reference
        self.earlier_study = earlier_study
        self.earlier_reference = earlier_reference
        self.sha256 = sha256


class SafeModeRefusal(KioskError):
    """Safe mode: no image is triaged until a technician has fixed the cause."""

    status = 503
    code = "safe_mode"


class UnknownExam(KioskError):
    code = "unknown_exam"


class ExamNeeded(KioskError):
    """No exam was named and the image is not plainly one exam's: none of them takes it, or several do.
    ``accepted``: the exams that take it (empty: none)."""

    status = 422
    code = "choose_exam"

    @classmethod
    def of(cls, judged: list[tuple[str, str, str | None]], accepted: list[str]) -> "ExamNeeded":
        """``judged``: (exam id, name, why it is not that exam's image, or None) of every exam."""
        if accepted:
            names = ", ".join(name for exam_id, name, _ in judged if exam_id in accepted)
            message = f"This image could be read by more than one exam ({names}). Choose the exam."
        else:
            why = "; ".join(f"{name}: {reason[:1].lower()}{reason[1:]}" for _, name, reason in judged if reason)
            message = f"No exam here takes this image ({why}). Check the image, or choose the exam yourself."
        return cls(message, available=[exam_id for exam_id, _, _ in judged], accepted=accepted)


class ImageRejected(KioskError):
    """An upload or imported file that intake refused; status by the kind of problem."""

    def __init__(self, exc: IntakeError, filename: str):
        super().__init__(f"{filename}: {exc.reason}", kind=exc.kind)
        self.status = INTAKE_STATUS[exc.kind]
        self.code = exc.kind
        self.kind = exc.kind


class ExportFailed(KioskError):
    """Writing an export failed (the drive is full, read-only, pulled out, or the path is a file).
    The study itself is untouched in the kiosk's store."""

    code = "export_failed"

    def __init__(self, destination: Path, exc: OSError):
        super().__init__(
            f"cannot export to {destination}: {exc.strerror or exc}; nothing was changed in the kiosk's "
            "own records, choose another destination or check the drive and try again"
        )
        self.status = 507 if exc.errno in (errno.ENOSPC, errno.EDQUOT) else 409
