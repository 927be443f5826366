"""What the pages show of a study that came by DICOM: who it is (patient name and id, accession,
study date, modality, from which caller, from the header as received), which instances of its
series were kept beside the one triaged, and how far its results got to each destination.

Dates are shown as ISO (2004-08-26) like every date on the kiosk; a person name as "FAMILY, Given"
from DICOM's FAMILY^Given^Middle^Prefix^Suffix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pydicom.uid import UID

from device.dicom.outbox import UNBUILT

_UID_TEXT = re.compile(r"^[0-9.]{1,64}$")
# Worst first: a study's send state is the worst of its items' states.
SEND_STATES = ("failed", "queued", "sending", "sent")
SEND_WORDS = {"failed": "Results refused", "queued": "Results queued", "sending": "Sending results",
              "sent": "Results sent"}
WHAT_IS_SENT = {"Comprehensive SR Storage": "report", "Secondary Capture Image Storage": "heatmap",
                "FHIR R4 Bundle": "FHIR report", UNBUILT: "results"}


@dataclass(frozen=True)
class Sent:
    """One object queued for one destination, as the outbox holds it."""

    what: str  # "report", "heatmap", "FHIR report"
    destination: str
    state: str
    attempts: int
    last_error: str


@dataclass(frozen=True)
class DicomFacts:
    patient_name: str
    patient_id: str
    accession_number: str
    study_date: str
    modality: str
    calling_ae: str
    instances: list[dict] = field(default_factory=list)  # every instance of the study, the triaged one first
    sent: list[Sent] = field(default_factory=list)

    @property
    def send_state(self) -> str | None:
        """The worst state of what is queued for the study; None when nothing is."""
        states = {s.state for s in self.sent}
        return next((s for s in SEND_STATES if s in states), None)

    @property
    def kept(self) -> list[dict]:
        """The instances of the series that were stored but not triaged (the rule picked another)."""
        return [i for i in self.instances if not i.get("triaged", 1)]


def person_name(value: str) -> str:
    """'DOE^JOHN^Q' -> 'DOE, JOHN Q'; a name without components stays as it is."""
    parts = [p.strip() for p in value.split("=")[0].split("^")]
    family, given = (parts + ["", ""])[:2]
    rest = " ".join(p for p in [given, *parts[2:3]] if p)
    return f"{family}, {rest}" if family and rest else family or rest


def iso_date(value: str) -> str:
    """DICOM DA 'YYYYMMDD' as 'YYYY-MM-DD'; anything else as received."""
    v = value.strip()
    return f"{v[:4]}-{v[4:6]}-{v[6:8]}" if len(v) == 8 and v.isdigit() else v


def what_is_sent(sop_class: str) -> str:
    """'report', 'heatmap', 'FHIR report' (the outbox's kinds), else the SOP class's name."""
    if sop_class in WHAT_IS_SENT:
        return WHAT_IS_SENT[sop_class]
    name = UID(sop_class).name if _UID_TEXT.match(sop_class) else sop_class
    return WHAT_IS_SENT.get(name, name)


def facts_of(store, outbox, study_ids: list[int], with_instances: bool = False) -> dict[int, DicomFacts]:
    """DicomFacts of each of ``study_ids`` that came by DICOM (others are left out). ``outbox``:
    the node's, or None when DICOM is off."""
    headers = store.dicom_headers(study_ids)
    queued: dict[int, list[Sent]] = {}
    if outbox is not None and headers:
        for item in outbox.items_of(list(headers)):
            queued.setdefault(item["study_id"], []).append(Sent(
                what_is_sent(item["sop_class"]), item["destination"], item["state"], item["attempts"], item["last_error"]))
    return {
        study_id: DicomFacts(
            patient_name=person_name(h["patient_name"]), patient_id=h["patient_id"],
            accession_number=h["accession_number"], study_date=iso_date(h["study_date"]), modality=h["modality"],
            calling_ae=h["calling_ae"],
            instances=store.dicom_instances(study_id) if with_instances else [],
            sent=queued.get(study_id, []),
        )
        for study_id, h in headers.items()
    }
