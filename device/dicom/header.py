"""The few header fields the kiosk keeps from a received instance, made safe to store and show.

DICOM input is hostile: every value is read inside try, bounded in length and stripped of control
characters; a UID that ends up in a file name is reduced to the characters a UID may hold.
"""

from __future__ import annotations

import io
import logging
import re

import pydicom

from device.intake.dicom import pydicom_warnings_recorded
from device.intake.errors import first_line

log = logging.getLogger(__name__)

MAX_TEXT = 64  # the longest LO/PN component a modality may send; more is cut
_NOT_UID = re.compile(r"[^0-9.]")

FIELDS = {
    "sop_class_uid": "SOPClassUID",
    "sop_instance_uid": "SOPInstanceUID",
    "study_instance_uid": "StudyInstanceUID",
    "series_instance_uid": "SeriesInstanceUID",
    "patient_name": "PatientName",
    "patient_id": "PatientID",
    "accession_number": "AccessionNumber",
    "study_date": "StudyDate",
    "modality": "Modality",
    "view_position": "ViewPosition",  # the series rule prefers frontal views (device/dicom/series.py)
    "instance_number": "InstanceNumber",
    "body_part": "BodyPartExamined",  # the routes (device/dicom/routing.py) match it
    "rows": "Rows",  # an instance kept untriaged is never decoded: its size as its header states it
    "columns": "Columns",
}


def read_header(data: bytes) -> dict[str, str]:
    """FIELDS from a DICOM file's bytes (pixel data not read); a missing or unreadable element is ''.

    Raises pydicom's errors (InvalidDicomError, others) when the file cannot be parsed at all.
    """
    with pydicom_warnings_recorded() as caught:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        fields = {name: _text(ds, keyword) for name, keyword in FIELDS.items()}
    if caught:  # the decode records them again, in the study's notes
        log.info("%s: %d pydicom warnings in the header, e.g. %s", fields["sop_instance_uid"], len(caught),
                 first_line(str(caught[0].message)))
    return fields


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed element raises anything from pydicom's value parsers
        return ""
    text = "" if value is None else str(value)
    return "".join(c for c in text if c.isprintable())[:MAX_TEXT].strip()


def uid_file_name(sop_instance_uid: str) -> str:
    """A file name from a UID: only digits and dots, at most 64 characters (a UID's limit)."""
    return (_NOT_UID.sub("", sop_instance_uid)[:MAX_TEXT].strip(".") or "instance") + ".dcm"
