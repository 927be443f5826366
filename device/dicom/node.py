"""The kiosk as a DICOM node: the receiver (SCP) with its routes, and where destinations are set, the
outbox with its sender and the reporter that fills it after each stored instance; a failed item of
the outbox retried."""

from __future__ import annotations

from device.core.errors import Conflict, NotFound
from device.core.settings.dicom import DicomSettings
from device.core.study_service import StudyService
from device.dicom.ingest import Ingest
from device.dicom.outbox import UNBUILT, Outbox
from device.dicom.receiver import DicomReceiver
from device.dicom.reporter import Reporter, ResultNotBuilt
from device.dicom.routing import Router, describe
from device.dicom.sender import Sender
from device.dicom.shown import what_is_sent
from device.dicom.series import SeriesTriage


class DicomNode:
    def __init__(self, settings: DicomSettings, studies: StudyService):
        self.studies = studies
        self.outbox = Outbox(studies.config.store.data_dir)
        self.sender = Sender(settings, self.outbox)
        names = [d.name for d in settings.destinations]
        fhir_names = [d.name for d in settings.fhir_destinations]
        self.reporter = Reporter(studies, self.outbox, self.sender, names, fhir_names) if names or fhir_names else None
        self.router = Router(settings.routes, studies.exams)
        ingest = Ingest(studies, self.router, self.reporter)
        if settings.series.triage == "one_per_series":
            ingest.series = SeriesTriage(settings.series, ingest)
        self.series = ingest.series
        self.receiver = DicomReceiver(settings, ingest)

    def start(self) -> "DicomNode":
        """Sender first: the receiver may queue results as soon as it listens; the series triage
        next (it settles what was held before a restart)."""
        self.sender.start()
        try:
            if self.series is not None:
                self.series.start()
            self.receiver.start()
        except BaseException:
            self.close()
            raise
        return self

    def routes_in_words(self) -> list[str]:
        """The routes in force, first match first, as the technician reads them."""
        name_of = self.studies.exams.name_of
        return [describe(r, name_of(r.exam)) for r in self.router.routes()] + ["anything else -> kept, not triaged"]

    def failed_items(self) -> list[dict]:
        """The outbox's failed items, newest first: refused by a peer, or a result never built."""
        return [{**i, "what": what_is_sent(i["sop_class"])} for i in self.outbox.items() if i["state"] == "failed"]

    def retry(self, item_id: int) -> str:
        """Try a failed outbox item again: a result that was never built is built again (and queued),
        an object a peer refused is queued again. What was done, in words; NotFound, or Conflict
        when the item is not failed or cannot be built yet."""
        item = self.outbox.item(item_id)
        if item is None:
            raise NotFound(f"no outbox item {item_id}")
        if item["state"] != "failed":
            raise Conflict(f"outbox item {item_id} is {item['state']}, not failed: nothing to retry")
        if item["sop_class"] != UNBUILT:
            self.outbox.requeue(item_id)
            self.sender.wake()
            return f"{item['destination']}: queued again"
        if self.reporter is None:
            raise Conflict("no destinations are set: nothing to build the result for")
        try:
            self.reporter.report(self.studies.get(item["study_id"]))
        except ResultNotBuilt as exc:
            raise Conflict(f"study {item['study_id']}: {exc}") from None
        return f"study {item['study_id']}: result built and queued"

    def close(self) -> None:
        self.receiver.close()
        if self.series is not None:
            self.series.close()
        self.sender.close()
        self.outbox.close()


def open_node(settings: DicomSettings, studies: StudyService) -> DicomNode | None:
    """The running node, or None when no DICOM port is configured."""
    return DicomNode(settings, studies).start() if settings.port else None
