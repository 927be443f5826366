"""The technician's acceptance and monitoring page (/technician/acceptance): per exam the operating
point in force and whose it is, whether acceptance is needed again after a bundle change, every
acceptance applied or reverted, and the drift monitor (state, reasons, each signal, the reviewers'
agreement, every change of state). An acceptance.json is uploaded, shown, and only applied once the
technician confirms it under a name; a revert asks for a name too. Every step is in the technician
audit log; refusals say why."""

from __future__ import annotations

import secrets
import time

from flask import Blueprint, request

from device.core.errors import BadRequest, NotFound
from device.site.acceptance import AcceptanceDocument, AcceptanceError, check, read_document
from device.technician.area import area
from device.technician.views import remote, running_appliance, show

acceptance = Blueprint("acceptance", __name__, url_prefix="/acceptance")
PENDING_S = 15 * 60  # how long an uploaded acceptance waits to be confirmed
MAX_DOCUMENT = 64 * 2**20


class Pending:
    """Uploaded acceptances waiting for the technician's confirmation, by a one-time token."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[float, str, AcceptanceDocument]] = {}

    def put(self, name: str, document: AcceptanceDocument) -> str:
        now = time.monotonic()
        self._items = {k: v for k, v in self._items.items() if now - v[0] < PENDING_S}
        token = secrets.token_urlsafe(16)
        self._items[token] = (now, name, document)
        return token

    def take(self, token: str) -> tuple[str, AcceptanceDocument]:
        item = self._items.pop(token, None)
        if item is None or time.monotonic() - item[0] >= PENDING_S:
            raise BadRequest("that upload is no longer waiting (over 15 minutes, or already applied): upload it again")
        return item[1], item[2]


PENDING = Pending()


def _exams() -> list[dict]:
    k = running_appliance()
    if k is None:
        return []
    monitoring = k.monitor.status()["exams"]
    rows = []
    for exam in k.exams:
        rows.append({"id": exam.id, "title": exam.bundle.manifest.title, "version": exam.bundle.manifest.version,
                     "sha256": exam.bundle.sha256, "rule": exam.bundle.manifest.acceptance_rule(),
                     "rule_declared": exam.bundle.manifest.acceptance is not None,
                     "monitor": monitoring[exam.id], "history": k.site.history(exam.id, 10),
                     "events": k.site.monitor_events(exam.id, 10)})
    return rows


def _page(status_code: int = 200, **values):
    return show("acceptance.html", status_code, exams=_exams(), live=running_appliance() is not None, **values)


@acceptance.get("")
def page():
    return _page()


def _exam_of(exam_id: str):
    k = running_appliance()
    if k is None:
        raise NotFound("the kiosk runs in safe mode: no model is loaded, so nothing can be accepted now")
    return k, k.exams.resolve(exam_id)


@acceptance.post("/upload")
def upload():
    """Read and check an acceptance.json; shown for confirmation, nothing applied yet."""
    a = area()
    upload = request.files.get("document")
    if upload is None or not upload.filename:
        raise BadRequest("choose the acceptance.json that `bedside acceptance run` wrote")
    name = upload.filename[:200]
    try:
        document = read_document(upload.read(MAX_DOCUMENT + 1)[:MAX_DOCUMENT], name)
        k, exam = _exam_of(document.bundle.id)
        check(document, exam.bundle.manifest, exam.bundle.sha256)
    except AcceptanceError as exc:
        a.credentials.audit("acceptance_refused", remote(), {"file": name, "reason": str(exc)})
        return _page(422, error=str(exc))
    token = PENDING.put(name, document)
    return _page(pending={"token": token, "file": name, "document": document})


@acceptance.post("/apply")
def apply():
    a = area()
    name, document = PENDING.take(request.form.get("token", ""))
    detail = {"file": name, "exam": document.bundle.id, "version": document.bundle.version,
              "threshold": document.proposal.threshold if document.proposal else None}
    try:
        k, exam = _exam_of(document.bundle.id)
        event = k.site_points.apply(document, exam.bundle, request.form.get("signed_by", ""),
                                    f"technician area from {remote()}")
    except AcceptanceError as exc:
        a.credentials.audit("acceptance_refused", remote(), {**detail, "reason": str(exc)})
        return _page(422, error=str(exc))
    a.credentials.audit("acceptance_applied", remote(), {**detail, "signed_by": event.by})
    return _page(message=f"{event.exam} {event.bundle_version} now decides at P >= {event.threshold:.4f}: "
                         f"{event.operating_point.text}.")


@acceptance.post("/<exam_id>/revert")
def revert(exam_id: str):
    a = area()
    try:
        k, exam = _exam_of(exam_id)
        event = k.site_points.revert(exam.bundle, request.form.get("signed_by", ""), f"technician area from {remote()}")
    except AcceptanceError as exc:
        a.credentials.audit("acceptance_revert_refused", remote(), {"exam": exam_id, "reason": str(exc)})
        return _page(422, error=str(exc))
    a.credentials.audit("acceptance_reverted", remote(), {"exam": exam_id, "signed_by": event.by})
    m = exam.bundle.manifest
    return _page(message=f"{exam_id} {m.version} decides at the model's own operating point again "
                         f"(P >= {m.policy.operating_point.threshold:.4f}), as {event.by} asked.")
