"""One received C-STORE instance becomes a study: the routes (routing.py) name its exam, then it goes
through the kiosk's own upload path (decode, triage, image fsynced, row committed), so a success
status is only sent for what is durable. An instance no route gives an exam is kept (its file
durable, its header listed as not triaged) and acknowledged all the same.

The DIMSE status tells the modality what happened: 0x0000 stored (or already stored: a re-sent
SOP Instance UID is kept once), 0xA700 out of resources (disk reserve reached, decoders busy: the
modality may retry), 0xC0xx we cannot understand this instance (it will never decode here).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from device.core.errors import KioskError
from device.core.store import StoredImage, StudyRecord
from device.core.study_service import StudyService
from device.dicom.header import read_header, uid_file_name
from device.dicom.reporter import Reporter, ResultNotBuilt
from device.dicom.routing import Router, Routed
from device.intake.errors import first_line

if TYPE_CHECKING:  # series.py imports this module
    from device.dicom.series import SeriesTriage

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
# An intake failure kind (device/intake/errors.py) as the low byte of a 0xC0xx status.
FAILURE_BY_KIND = {
    "not_an_image": 0xC001,
    "unsupported": 0xC002,
    "empty": 0xC003,
    "truncated": 0xC004,
    "no_pixel_data": 0xC005,
    "undecodable": 0xC006,
    "unreadable": 0xC007,
    "too_large": 0xC008,
}
UNEXPECTED = 0xC0FF
RETRYABLE = {503, 507}  # Busy, StorageFull: the kiosk's state, not the instance's


class Ingest:
    def __init__(self, studies: StudyService, router: Router, reporter: Reporter | None = None):
        self.studies = studies
        self.router = router
        self.reporter = reporter  # None: results are sent nowhere
        self.series: SeriesTriage | None = None  # set by the node under [dicom.series] one_per_series
        self._in_flight: set[str] = set()
        self._changed = threading.Condition()

    def store(self, data: bytes, calling_ae: str, peer: str) -> int:
        """Store and triage one instance (``data``: the file, with its meta); the DIMSE status."""
        try:
            fields = read_header(data)
        except Exception as exc:  # hostile or broken: pydicom raises many kinds of errors
            return self._failed(calling_ae, peer, "", CANNOT_UNDERSTAND,
                                f"the dataset cannot be read: {type(exc).__name__}: {first_line(str(exc))}")
        uid = fields["sop_instance_uid"]
        if not uid:
            return self._failed(calling_ae, peer, uid, CANNOT_UNDERSTAND, "the dataset has no SOP Instance UID")
        with self._claimed(uid):
            if self.studies.store.dicom_instance(uid) is not None:
                self.event("duplicate", calling_ae, peer, uid, SUCCESS, "already stored; kept once")
                return SUCCESS
            routed = self.router.route(fields, calling_ae)
            if routed.exam is None:
                return self._keep_untriaged(data, fields, routed, calling_ae, peer)
            if self.series is not None:
                return self._keep(data, {**fields, "exam": routed.exam}, calling_ae, peer)
            try:
                study = self.studies.create_study(data, uid_file_name(uid), routed.exam,
                                                  reference=fields["accession_number"], source=f"dicom:{calling_ae}")
            except KioskError as exc:
                return self._refused(exc, calling_ae, peer, uid)
            except Exception as exc:  # never take the association down: the next instance may be fine
                return self._unexpected(exc, calling_ae, peer, uid)
            self.studies.store.add_dicom_instance({**fields, "study_id": study.id, "calling_ae": calling_ae})
        self.event("stored", calling_ae, peer, uid, SUCCESS, f"study {study.id}, {study.triage}")
        self.report(study, calling_ae, peer, uid)
        return SUCCESS

    def _keep(self, data: bytes, fields: dict, calling_ae: str, peer: str) -> int:
        """Under the series rule: stored now, triaged with its series (device/dicom/series.py)."""
        uid = fields["sop_instance_uid"]
        try:
            what = self.series.keep(data, uid_file_name(uid), fields, calling_ae)
        except KioskError as exc:
            return self._refused(exc, calling_ae, peer, uid)
        except Exception as exc:
            return self._unexpected(exc, calling_ae, peer, uid)
        self.event("stored", calling_ae, peer, uid, SUCCESS, what)
        return SUCCESS

    def _keep_untriaged(self, data: bytes, fields: dict, routed: Routed, calling_ae: str, peer: str) -> int:
        """No exam for it: the file kept as received (never decoded), its header listed, success."""
        uid = fields["sop_instance_uid"]
        try:
            sha = self.studies.keep_bytes(data)
            image = StoredImage(sha256=sha, bytes=len(data), media_type="application/dicom", source_format="dicom",
                                height=_number(fields["rows"]), width=_number(fields["columns"]))
            self.studies.store.keep_untriaged(image, {**fields, "image_sha256": sha, "filename": uid_file_name(uid),
                                                      "calling_ae": calling_ae, "reason": routed.why})
        except KioskError as exc:
            return self._refused(exc, calling_ae, peer, uid)
        except Exception as exc:
            return self._unexpected(exc, calling_ae, peer, uid)
        what = f"{fields['modality'] or 'no modality'}, {fields['body_part'] or 'no body part'}"
        self.event("not_triaged", calling_ae, peer, uid, SUCCESS, f"kept, not triaged ({what}): {routed.why}")
        return SUCCESS

    def _refused(self, exc: KioskError, calling_ae: str, peer: str, uid: str) -> int:
        status = OUT_OF_RESOURCES if exc.status in RETRYABLE else FAILURE_BY_KIND.get(exc.code, CANNOT_UNDERSTAND)
        return self._failed(calling_ae, peer, uid, status, exc.message)

    def _unexpected(self, exc: Exception, calling_ae: str, peer: str, uid: str) -> int:
        log.exception("C-STORE from %s (%s), %s: unexpected error", calling_ae, peer, uid)
        return self._failed(calling_ae, peer, uid, UNEXPECTED, f"internal error: {type(exc).__name__}")

    def report(self, study: StudyRecord, calling_ae: str, peer: str, uid: str) -> None:
        """Queue the results, where destinations are set; the instance is stored whatever happens
        here, so its status stays success. A result that cannot be built is in the outbox all the
        same, as a failed item (reporter.py)."""
        if self.reporter is None:
            return
        try:
            fixed = self.reporter.report(study)
        except ResultNotBuilt as exc:
            self.event("report_failed", calling_ae, peer, uid, None, f"study {study.id}: {exc}")
            return
        except Exception as exc:  # a bug here must not take the association down
            log.exception("study %d: its DICOM results could not be queued", study.id)
            self.event("report_failed", calling_ae, peer, uid, None, f"{type(exc).__name__}: {first_line(str(exc))}")
            return
        if fixed:
            self.event("report_header_fixed", calling_ae, peer, uid, None, f"study {study.id}: " + "; ".join(fixed))

    @contextmanager
    def _claimed(self, uid: str) -> Iterator[None]:
        """Hold ``uid`` for this thread: a second association sending the same instance waits, then
        finds it stored, instead of triaging it twice."""
        with self._changed:
            self._changed.wait_for(lambda: uid not in self._in_flight)
            self._in_flight.add(uid)
        try:
            yield
        finally:
            with self._changed:
                self._in_flight.discard(uid)
                self._changed.notify_all()

    def _failed(self, calling_ae: str, peer: str, uid: str, status: int, reason: str) -> int:
        log.warning("C-STORE from %s (%s), %s: refused with status 0x%04X: %s", calling_ae, peer, uid, status, reason)
        self.event("store_failed", calling_ae, peer, uid, status, reason)
        return status

    def event(self, event: str, calling_ae: str, peer: str, uid: str, status: int | None, detail: str) -> None:
        """Append to the SCP's log (dicom_events)."""
        self.studies.store.dicom_event(event=event, calling_ae=calling_ae, peer=peer, sop_instance_uid=uid,
                                     status=status, detail=detail)


def _number(text: str) -> int:
    """A header's integer (Rows, Columns) as text, 0 where it is missing or not a number."""
    try:
        return max(0, int(text))
    except ValueError:
        return 0
