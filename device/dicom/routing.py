"""Which exam triages a received instance: the ``[[dicom.routes]]`` rules, in order, first match wins
(Modality, BodyPartExamined, ViewPosition, SOP Class UID, calling AE title).

Without routes in the settings, each installed exam takes what its bundle says it reads
(``input.dicom``: its modalities, and its body parts where it names some, an instance without
BodyPartExamined included, as the quality checks grade it): with the shipped exams, a CR or DX of
the chest goes to the chest exam and a photograph (XC) or dermoscopy image (DMS) to the skin exam.
The defaults are made from the exams installed at the time, so a bundle installed later routes too.

An instance no route gives an exam is not an error: it is kept, acknowledged (0x0000) and listed
as "Not triaged: no exam for this kind of image" (device/dicom/ingest.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from device.core.exams import ExamRegistry
from device.core.settings.dicom import Route

NO_EXAM = "no exam for this kind of image"
# header field (device/dicom/header.py) -> the Route criterion that matches it
CRITERIA = {"modality": "modality", "body_part": "body_part", "view_position": "view_position",
            "sop_class_uid": "sop_class"}


@dataclass(frozen=True)
class Routed:
    exam: str | None  # None: keep it, do not triage it
    why: str  # which rule decided, in words (the SCP's log, the not-triaged list)


def default_routes(exams: ExamRegistry) -> list[Route]:
    """One route per installed exam, from what its bundle says it reads."""
    routes = []
    for exam in exams:
        dicom = exam.bundle.manifest.input.dicom
        routes.append(Route(exam=exam.id, modality=list(dicom.modalities),
                            body_part=[*dicom.body_parts, ""] if dicom.body_parts else []))
    return routes


def _norm(value: str) -> str:
    return value.strip().upper()


def matches(route: Route, fields: dict[str, str], calling_ae: str) -> bool:
    """Whether every criterion the route gives matches the instance's header (``fields``) and caller."""
    given = {**{criterion: fields.get(field, "") for field, criterion in CRITERIA.items()}, "calling_ae": calling_ae}
    for criterion, value in given.items():
        wanted = getattr(route, criterion)
        if wanted and _norm(value) not in {_norm(w) for w in wanted}:
            return False
    return True


def describe(route: Route, exam_name: str) -> str:
    """A route in words: 'Modality CR or DX, body part CHEST or none -> Chest exam'."""
    parts = []
    for criterion, label in (("modality", "Modality"), ("body_part", "body part"), ("view_position", "view"),
                             ("sop_class", "SOP class"), ("calling_ae", "from")):
        values = getattr(route, criterion)
        if values:
            parts.append(f"{label} " + " or ".join(v or "none" for v in values))
    return f"{', '.join(parts) or 'any image'} -> {exam_name if route.exam else 'kept, not triaged'}"


class Router:
    def __init__(self, routes: list[Route], exams: ExamRegistry):
        self.configured = routes
        self.exams = exams

    def routes(self) -> list[Route]:
        """The routes in force: the configured ones, else the installed exams' defaults."""
        return self.configured or default_routes(self.exams)

    def route(self, fields: dict[str, str], calling_ae: str) -> Routed:
        for number, route in enumerate(self.routes(), start=1):
            if not matches(route, fields, calling_ae):
                continue
            if not route.exam:
                return Routed(None, f"route {number} keeps this kind of image untriaged")
            if route.exam not in self.exams.ids():
                return Routed(None, f"route {number} names the exam {route.exam}, which is not installed")
            return Routed(route.exam, f"route {number}")
        return Routed(None, NO_EXAM)
