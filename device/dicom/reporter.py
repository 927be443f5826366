"""After a received instance became a study: build its result objects (results.py) and queue them
in the outbox for every destination. A failure here never un-stores the instance; it is logged
and kept in the SCP's event log."""

from __future__ import annotations

import io
import logging

import pydicom

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


class Reporter:
    def __init__(self, studies: StudyService, outbox: Outbox, sender: Sender, destinations: list[str], fhir_destinations: list[str]):
        self.studies = studies
        self.outbox = outbox
        self.sender = sender
        self.destinations = destinations
        self.fhir_destinations = fhir_destinations

    def report(self, study: StudyRecord) -> None:
        """Queue the study's SR (and heatmap SC) for every DICOM destination, its FHIR Bundle for
        every FHIR one; raises on failure."""
        path = self.studies.store.image_path(study.image_sha256)
        pixels = intake.decode_file(path).pixels
        manifest = self.studies.exams.resolve(study.exam).bundle.manifest
        # The received header is copied into the new objects; pydicom and highdicom warn about its
        # oddities (a one-component person name, an over-long value): logged, not fatal.
        with pydicom_warnings_recorded() as caught:
            source = _with_type2(pydicom.dcmread(path, stop_before_pixels=True))
            objects = result_objects(source, pixels, study, manifest)
        for warning in caught[:MAX_LOGGED_WARNINGS]:
            log.info("study %d results: %s", study.id, first_line(str(warning.message)))
        for ds in filter(None, (objects.sr, objects.sc)):
            data = _encoded(ds)
            for name in self.destinations:
                self.outbox.add(study.id, name, str(ds.SOPClassUID), str(ds.SOPInstanceUID), data)
        if self.fhir_destinations:
            bundle_id, data = fhir.report_bundle(source, study, manifest)
            for name in self.fhir_destinations:
                self.outbox.add(study.id, name, fhir.KIND, bundle_id, data, suffix=".json")
        self.sender.wake()


def _with_type2(source: pydicom.Dataset) -> pydicom.Dataset:
    """The header with the patient and study attributes of Type 2 that a modality left out added
    empty, as DICOM allows them (highdicom copies them into our objects and insists on them)."""
    for keyword in TYPE2_COPIED:
        if keyword not in source:
            setattr(source, keyword, "")
    return source


def _encoded(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
