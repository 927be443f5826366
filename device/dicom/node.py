"""The kiosk as a DICOM node: the receiver (SCP), and where destinations are set, the outbox with
its sender and the reporter that fills it after each stored instance."""

from __future__ import annotations

from device.core.settings.dicom import DicomSettings
from device.core.study_service import StudyService
from device.dicom.ingest import Ingest
from device.dicom.outbox import Outbox
from device.dicom.receiver import DicomReceiver
from device.dicom.reporter import Reporter
from device.dicom.sender import Sender
from device.dicom.series import SeriesTriage


class DicomNode:
    def __init__(self, settings: DicomSettings, studies: StudyService):
        self.outbox = Outbox(studies.config.store.data_dir)
        self.sender = Sender(settings, self.outbox)
        names = [d.name for d in settings.destinations]
        fhir_names = [d.name for d in settings.fhir_destinations]
        reporter = Reporter(studies, self.outbox, self.sender, names, fhir_names) if names or fhir_names else None
        ingest = Ingest(studies, reporter)
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

    def close(self) -> None:
        self.receiver.close()
        if self.series is not None:
            self.series.close()
        self.sender.close()
        self.outbox.close()


def open_node(settings: DicomSettings, studies: StudyService) -> DicomNode | None:
    """The running node, or None when no DICOM port is configured."""
    return DicomNode(settings, studies).start() if settings.port else None
