"""How the web shows a study besides its full JSON (device.core.study_service.study_json): the worklist's
short form, times as people read them, and how a multi-label exam's result was decided."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from device.core.store import StudyRecord
from device.decision.triage import URGENT
from device.dicom.shown import DicomFacts
from models.bundle import Manifest

# What ROUTINE means, said wherever a ROUTINE result is shown large: the model's not flagging an
# image is no all-clear, and the words must not alarm either.
ROUTINE_NOTE = "The model did not flag it; that does not rule out disease. Review in the usual order."


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


def percent(p: float) -> str:
    """A probability as people read it: '60%', and one decimal under 10% ('8.5%'), where a
    threshold and a total near it must not both read '8%'."""
    value = p * 100
    return f"{value:.1f}%" if value < 9.95 else f"{value:.0f}%"


@dataclass(frozen=True)
class Share:
    name: str  # the diagnosis in words
    percent: str


@dataclass(frozen=True)
class Decision:
    """What decided a multi-label exam's result, as the result page leads with it: the refer group's
    total against the threshold, then each diagnosis of the group, then the others. The likeliest
    single diagnosis may be a benign one on an URGENT result (the group's total decides), so the
    page never leads with it. No '0%' rows: a diagnosis of the group under half a per cent reads
    'under 1%', any other is left out."""

    urgent: bool
    total: str
    threshold: str
    refer: tuple[Share, ...]  # most likely first
    others: tuple[Share, ...]


def decision_of(study: StudyRecord, manifest: Manifest) -> Decision | None:
    """None where there is nothing to explain: a binary exam, or a study with no scores (UNGRADABLE)."""
    probabilities = study.result.get("probabilities")
    if len(manifest.labels) <= 2 or study.probability is None or not probabilities:
        return None
    refer = set(manifest.policy.urgent_labels)
    ranked = sorted(probabilities.items(), key=lambda item: -item[1])

    def shares(wanted: bool) -> tuple[Share, ...]:
        # Every diagnosis the group counts is named (what it adds up is on the screen); of the
        # others only those that round to at least 1%.
        whole = {label: int(p * 100 + 0.5) for label, p in ranked}
        return tuple(Share(manifest.label_name(label), f"{whole[label]}%" if whole[label] else "under 1%")
                     for label, _ in ranked if (label in refer) == wanted and (wanted or whole[label]))

    total, threshold = percent(study.probability), percent(study.threshold)
    if total == threshold:  # a hair's breadth either side: show enough digits to see which
        total, threshold = f"{study.probability * 100:.2f}%", f"{study.threshold * 100:.2f}%"
    return Decision(
        urgent=study.triage == URGENT,
        total=total,
        threshold=threshold,
        refer=shares(True),
        others=shares(False),
    )
