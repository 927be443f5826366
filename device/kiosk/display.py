"""How the web shows a study besides its full JSON (device.core.study_service.study_json): the worklist's
short form, and times as people read them."""

from __future__ import annotations

import time
from datetime import datetime

from device.core.store import StudyRecord
from device.dicom.shown import DicomFacts


def local_time(stamp: str | None) -> str:
    """'2025-01-31 14:05' in the kiosk's local time, for people, from a stored UTC time (device.machine.clock)."""
    if not stamp:
        return ""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone().strftime("%Y-%m-%d %H:%M")


def waiting_s(study: StudyRecord, now: float | None = None) -> float:
    """Seconds since the study was received (``now``: seconds since the epoch, default now)."""
    received = datetime.fromisoformat(study.created_at.replace("Z", "+00:00")).timestamp()
    return max(0.0, (time.time() if now is None else now) - received)


def waiting_text(seconds: float) -> str:
    """How long a study has waited, as a person says it: '45 s', '12 min', '3 h 05 min', '2 days'."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    return f"{hours // 24} days"


def worklist_json(study: StudyRecord, now: float, dicom: DicomFacts | None = None) -> dict:
    """``dicom``: what came with a study received by DICOM (its header's patient, its send state)."""
    out = {
        "id": study.id,
        "triage": study.triage,
        "reference": study.reference,
        "received_at": study.created_at,
        "waiting_s": round(waiting_s(study, now), 1),
        "exam": study.exam,
        "page": f"/studies/{study.id}",
    }
    if dicom is not None:
        out["dicom"] = {name: getattr(dicom, name) for name in (
            "patient_name", "patient_id", "accession_number", "study_date", "modality", "calling_ae", "send_state")}
    return out
