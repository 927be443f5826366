"""The series rule (``[dicom.series] triage = "one_per_series"``): instances are grouped by Study and
Series Instance UID, every one is kept, and one per series is triaged.

DICOM says nowhere that a series is complete, so a series counts as complete once none of its
instances arrived for ``stable_s`` (Orthanc's "stable" series work the same way). Until then each
instance is held: decoded once (an instance that cannot be decoded still gets its failure status
at once), its image durable and its row committed before its success status, like any instance.
Then the rule picks one: the best View Position in ``prefer_views`` (frontal PA, AP before a
lateral), among those the middle one by Instance Number (the middle frame of a cine sent as single
frames; of a multi-frame instance, intake takes the middle frame), and that one is triaged like an
upload. The others stay with its study as kept instances. An instance arriving after its series
was triaged is kept with that study at once.

A crash between the study's commit and the series' settling is repaired at start: the study made
from the picked instance is found (study_made_from) instead of triaging the series again.
"""

from __future__ import annotations

import logging
import threading
import time

from device.core.errors import KioskError
from device.core.settings.dicom import SeriesSettings
from device.core.store import StudyRecord
from device.dicom.ingest import Ingest

log = logging.getLogger(__name__)
RETRYABLE = {503, 507}  # Busy, StorageFull: try the series again later


def pick(instances: list[dict], prefer_views: list[str]) -> dict:
    """The instance of a series that is triaged (see the module's docstring); ``instances`` in
    the order they arrived."""
    wanted = [v.strip().upper() for v in prefer_views]

    def rank(row: dict) -> int:
        view = row["view_position"].strip().upper()
        return wanted.index(view) if view in wanted else len(wanted)

    best = min(rank(r) for r in instances)
    tied = [r for r in instances if rank(r) == best]
    tied.sort(key=_instance_number)  # stable: equal numbers keep their arrival order
    return tied[(len(tied) - 1) // 2]


def _instance_number(row: dict) -> int:
    try:
        return int(row["instance_number"])
    except ValueError:
        return 0


class SeriesTriage:
    """Holds instances until their series is complete, then triages the one the rule picks, on
    one thread of its own."""

    def __init__(self, settings: SeriesSettings, ingest: Ingest):
        """``ingest``: the SCP's, whose kiosk triages and stores and whose reporter queues results."""
        self.settings = settings
        self.ingest = ingest
        self.studies = ingest.studies
        self._retry_at: dict[tuple[str, str], float] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dicom-series", daemon=True)

    def start(self) -> "SeriesTriage":
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=60)

    def keep(self, data: bytes, filename: str, fields: dict, calling_ae: str) -> str:
        """Store one instance (durable when this returns; raises KioskError when it cannot be
        decoded or stored); what became of it, for the SCP's log."""
        image = self.studies.keep_image(data, filename)
        study_id = self.studies.store.series_study(fields["study_instance_uid"], fields["series_instance_uid"])
        if study_id is not None:
            self.studies.store.add_dicom_instance({**fields, "study_id": study_id, "calling_ae": calling_ae}, image)
            return f"kept with study {study_id}: its series was triaged already"
        self.studies.store.hold_dicom_instance(image, {**fields, "image_sha256": image.sha256, "filename": filename,
                                                     "calling_ae": calling_ae, "arrived": time.time()})
        self._wake.set()
        return "held until its series is complete"

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self.settings.stable_s
            try:
                wait = self._settle_due()
            except Exception:  # a bug here must not stop triage for good; the next round retries
                log.exception("DICOM series: unexpected error")
            self._wake.wait(wait)
            self._wake.clear()

    def _settle_due(self) -> float:
        """Settle every complete series; seconds until the next one may be complete."""
        now = time.time()
        wait = self.settings.stable_s
        for study_uid, series_uid, newest in self.studies.store.held_series():
            key = (study_uid, series_uid)
            due = max(newest + self.settings.stable_s, self._retry_at.get(key, 0.0))
            if due <= now and not self._stop.is_set():
                self._settle(key)
            else:
                wait = min(wait, due - now)
        return max(0.05, wait)

    def _settle(self, key: tuple[str, str]) -> None:
        store = self.studies.store
        held = store.held_instances(*key)
        candidates = [r for r in held if not r["failed"]]
        chosen = pick(candidates, self.settings.prefer_views)
        earlier = store.series_study(*key)  # instances held while their series was being triaged
        if earlier is not None:
            store.settle_series(earlier, held, None)
            self._event("series_kept", chosen, f"{len(held)} kept with study {earlier}: its series was triaged already")
            return
        source = f"dicom:{chosen['calling_ae']}"
        study_id = store.study_made_from(chosen["image_sha256"], chosen["filename"], source)
        study = None
        if study_id is None:
            try:
                study = self._triage(chosen, source)
            except KioskError as exc:
                self._not_triaged(key, chosen, exc)
                return
            study_id = study.id
        store.settle_series(study_id, held, chosen["sop_instance_uid"])
        self._retry_at.pop(key, None)
        view = chosen["view_position"] or "no view position"
        self._event("series_triaged", chosen, f"study {study_id}: instance {chosen['instance_number'] or '?'} ({view})"
                    f" triaged, {len(held) - 1} kept")
        if study is not None:
            self.ingest.report(study, chosen["calling_ae"], "", chosen["sop_instance_uid"])

    def _triage(self, chosen: dict, source: str) -> StudyRecord:
        """As the exam its route named when it arrived (held before routes were recorded: none)."""
        data = self.studies.store.image_path(chosen["image_sha256"]).read_bytes()
        return self.studies.create_study(data, chosen["filename"], chosen["exam"] or None,
                                         reference=chosen["accession_number"], source=source)

    def _not_triaged(self, key: tuple[str, str], chosen: dict, exc: KioskError) -> None:
        if exc.status in RETRYABLE:
            self._retry_at[key] = time.time() + self.settings.stable_s
            self._event("series_waiting", chosen, f"not triaged yet: {exc.message}")
            return
        self.studies.store.held_failed(chosen["sop_instance_uid"], exc.message)
        self._event("series_instance_failed", chosen, f"cannot be triaged, another of its series is tried: {exc.message}")

    def _event(self, event: str, row: dict, detail: str) -> None:
        self.ingest.event(event, row["calling_ae"], "", row["sop_instance_uid"], None, detail)
