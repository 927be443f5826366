"""After a received instance became a study: build its result objects (results.py) and queue them
in the outbox for every destination. A failure here never un-stores the instance, and never loses
the result silently: a header value that would stop the objects being built (a date that is not a
date) is sent empty, as DICOM allows for these Type 2 attributes, and said so; a result that still
cannot be built is queued as a failed item for every destination, with the reason, which the
technician sees and can retry (DicomNode.retry)."""

from __future__ import annotations

import io
import logging

import pydicom
from pydicom import valuerep

from device import intake
from device.core.store import StudyRecord
from device.core.study_service import StudyService
from device.dicom import fhir
from device.dicom.outbox import Outbox
from device.dicom.results import result_objects
from device.dicom.sender import Sender
from device.intake.dicom import pydicom_warnings_recorded
from device.intake.errors import first_line

log = logging.getLogger(__name__)
MAX_LOGGED_WARNINGS = 3
TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "StudyID", "AccessionNumber")
# The value representations highdicom converts into Python objects when it copies them: a value
# that does not convert stops the whole object being built.
CONVERTED = {"DA": valuerep.DA, "TM": valuerep.TM, "DT": valuerep.DT}
# Attributes with enumerated values highdicom checks (anything else stops the build).
ENUMERATED = {"PatientSex": {"M", "F", "O"}}


class ResultNotBuilt(Exception):
    """The study's result objects could not be built; a failed item is queued for each destination."""


class Reporter:
    def __init__(self, studies: StudyService, outbox: Outbox, sender: Sender, destinations: list[str], fhir_destinations: list[str]):
        self.studies = studies
        self.outbox = outbox
        self.sender = sender
        self.destinations = destinations
        self.fhir_destinations = fhir_destinations

    def report(self, study: StudyRecord) -> list[str]:
        """Queue the study's SR (and heatmap SC) for every DICOM destination, its FHIR Bundle for
        every FHIR one. Returns what was changed in the copied header to build them (one line each).
        Raises ResultNotBuilt when they cannot be built, after queueing a failed item for each
        destination."""
        try:
            fixed, queued = self._build(study)
        except Exception as exc:
            reason = f"the result could not be built: {type(exc).__name__}: {first_line(str(exc))}"
            log.exception("study %d: %s", study.id, reason)
            for name in [*self.destinations, *self.fhir_destinations]:
                self.outbox.add_unbuilt(study.id, name, reason)
            raise ResultNotBuilt(reason) from exc
        for study_id, name, kind, uid, data, suffix in queued:
            self.outbox.add(study_id, name, kind, uid, data, suffix=suffix)
        self.outbox.drop_unbuilt(study.id)
        self.sender.wake()
        return fixed

    def _build(self, study: StudyRecord) -> tuple[list[str], list[tuple]]:
        """(the header changes, every object to queue as outbox.add's arguments), or an exception."""
        path = self.studies.store.image_path(study.image_sha256)
        pixels = intake.decode_file(path).pixels
        manifest = self.studies.exams.resolve(study.exam).bundle.manifest
        # The received header is copied into the new objects; pydicom and highdicom warn about its
        # oddities (a one-component person name, an over-long value): logged, not fatal.
        with pydicom_warnings_recorded() as caught:
            source, fixed = copyable(pydicom.dcmread(path, stop_before_pixels=True))
            objects = result_objects(source, pixels, study, manifest)
            queued = [(study.id, name, str(ds.SOPClassUID), str(ds.SOPInstanceUID), _encoded(ds), ".dcm")
                      for ds in filter(None, (objects.sr, objects.sc)) for name in self.destinations]
            if self.fhir_destinations:
                bundle_id, data = fhir.report_bundle(source, study, manifest)
                queued += [(study.id, name, fhir.KIND, bundle_id, data, ".json") for name in self.fhir_destinations]
        for warning in caught[:MAX_LOGGED_WARNINGS]:
            log.info("study %d results: %s", study.id, first_line(str(warning.message)))
        for line in fixed:
            log.warning("study %d results: %s", study.id, line)
        return fixed, queued


def copyable(source: pydicom.Dataset) -> tuple[pydicom.Dataset, list[str]]:
    """The header with its patient and study attributes of Type 2 made fit to copy into our objects:
    one a modality left out is added empty, and one whose value is not of its kind (a 56-character
    text in a date) is emptied, as DICOM allows a Type 2 attribute to be (highdicom copies them and
    insists on them). Also what was emptied, one line each."""
    fixed = []
    for keyword in TYPE2_COPIED:
        if keyword not in source:
            setattr(source, keyword, "")
            continue
        element = source[keyword]
        if element.value in (None, ""):
            continue
        why = _unfit(keyword, element)
        if why:
            fixed.append(f"{keyword} {str(element.value)[:64]!r} {why}: sent empty (Type 2)")
            element.value = ""
    return source, fixed


def _unfit(keyword: str, element: pydicom.DataElement) -> str | None:
    """Why a copied value would stop the build (None: it is fit): several values where one is allowed,
    a value outside an enumeration, or a date or time that is not one."""
    if element.VM > 1:
        return f"holds {element.VM} values where one is allowed"
    if keyword in ENUMERATED and str(element.value) not in ENUMERATED[keyword]:
        return f"is not one of {', '.join(sorted(ENUMERATED[keyword]))}"
    convert = CONVERTED.get(element.VR)
    if convert is not None:
        try:
            convert(str(element.value))
        except (ValueError, TypeError):
            return f"is not a valid {element.VR}"
    return None


def _encoded(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
