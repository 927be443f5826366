"""The drift monitor: per exam, a rolling window of its latest studies compared with a reference,
the bundle's validation images until the site accepted the model, then the site's acceptance sample
(device/site/ holds the comparison). Fed after each study is saved (never before, never in its way:
a failure here is logged and the study stands), rebuilt from the store at start, and every change
of state is recorded in the site's record (the audit) and logged.

What it reports (status(): the API, the technician pages, /metrics) per exam: the state (collecting,
ok, watch, drift) since when, the kind of change (images, model scores, prevalence) and the reasons,
every signal's PSI and limits, the reference, the operating point in force, and the reviewers'
observed agreement with the triage per week.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

from device.core.errors import UnknownExam
from device.core.exams import ExamRegistry
from device.core.serving import Exam
from device.core.settings.monitoring import MonitoringSettings
from device.core.site_points import SitePoints
from device.core.site_record import SiteRecord
from device.core.store import Store
from device.decision.triage import TriageResult
from device.machine.clock import utc_iso
from device.site.drift import COLLECTING, DRIFT, STATES
from device.site.signals import signals_of, signals_of_document
from device.site.window import Tracker, Window
from models.bundle import MonitoringReference, Variant

log = logging.getLogger(__name__)
AGREEMENT_CACHE_S = 30.0
NO_REFERENCE = ("No monitoring reference in this bundle: recent studies have nothing to be compared with yet. "
                "Accept the model on this site's cases (bedside acceptance) and those cases become the reference.")


class ExamMonitor:
    """One exam's window and state, for the bundle it serves now."""

    def __init__(self, exam: Exam, reference: MonitoringReference | None, reference_words: str,
                 reference_key: object, settings: MonitoringSettings):
        self.exam_id = exam.id
        self.bundle_sha256 = exam.bundle.sha256
        self.version = exam.bundle.manifest.version
        self.reference = reference
        self.reference_words = reference_words
        self.reference_key = reference_key
        self.window = Window(settings.window)
        self.window.use(reference)
        self.tracker = Tracker(settings.min_studies, settings.confirm)
        self.since = utc_iso()
        self.lock = threading.Lock()

    def add(self, signals: Mapping[str, float]) -> bool:
        """One study in; True when the state changed."""
        self.window.add(signals)
        return self.tracker.update(len(self.window), self.window.verdict())

    def reasons(self) -> list[str]:
        if self.reference is None:
            return [NO_REFERENCE]
        if self.tracker.state == COLLECTING:
            return [f"Collecting: {len(self.window)} of the {self.tracker.min_studies} studies needed before recent "
                    f"studies are compared with {self.reference_words}."]
        verdict = self.tracker.verdict
        reasons = verdict.words(self.reference_words)
        if verdict.level != self.tracker.state:
            reasons.append(f"The latest studies read {verdict.level}; the state changes once "
                           f"{self.tracker.confirm} studies in a row agree.")
        return reasons

    def status(self) -> dict:
        verdict = self.tracker.verdict
        state = self.tracker.state
        shown = verdict if verdict is not None and state != COLLECTING else None
        return {
            "state": state,
            "since": self.since,
            "kind": shown.kind if shown is not None and state != "ok" else None,
            "reasons": self.reasons(),
            "window": {"studies": len(self.window), "size": self.window.size, "min_studies": self.tracker.min_studies},
            "reference": self.reference_words if self.reference else None,
            "signals": [] if verdict is None else [s.as_json() for s in verdict.signals],
            "prevalence": None if verdict is None else verdict.as_json()["prevalence"],
            "bundle": {"version": self.version, "sha256": self.bundle_sha256},
        }


class DriftMonitor:
    def __init__(self, settings: MonitoringSettings, record: SiteRecord, points: SitePoints, store: Store,
                 exams: ExamRegistry):
        self.settings = settings
        self.record = record
        self.points = points
        self.store = store
        self.exams = exams
        self._monitors: dict[str, ExamMonitor] = {}
        self._lock = threading.Lock()
        self._agreement: dict[str, tuple[float, dict]] = {}
        for exam in exams:
            self._monitor(exam)

    # ---- feeding ----------------------------------------------------------------------------

    def observe(self, exam_id: str, result: TriageResult) -> None:
        """A saved study's result. Never raises: the study is saved, and watching it must not undo that."""
        try:
            self._observe(exam_id, result)
        except Exception:  # noqa: BLE001 - logged; drift never hides or delays a result
            log.exception("%s: the drift monitor could not take a study", exam_id)

    def _observe(self, exam_id: str, result: TriageResult) -> None:
        op = result.operating_point
        try:
            exam = self.exams.resolve(exam_id)
        except UnknownExam:
            return
        monitor = self._monitor(exam)
        if op is None or op.bundle_sha256 != monitor.bundle_sha256:
            return  # triaged by a bundle no longer served
        with monitor.lock:
            previous = monitor.tracker.state
            if monitor.add(signals_of(result)):
                self._changed(monitor, previous)

    def _changed(self, monitor: ExamMonitor, previous: str, note: str | None = None) -> None:
        monitor.since = utc_iso()
        state = monitor.tracker.state
        reasons = ([note] if note else []) + monitor.reasons()
        kind = monitor.status()["kind"]
        self.record.monitor_changed(monitor.exam_id, monitor.bundle_sha256, state, previous, kind,
                                    monitor.reference_words if monitor.reference else "none", reasons)
        (log.warning if state == DRIFT else log.info)("%s: drift monitor %s -> %s: %s", monitor.exam_id, previous,
                                                      state, " ".join(reasons))

    # ---- which window, against which reference -------------------------------------------------

    def _reference(self, exam: Exam) -> tuple[MonitoringReference | None, str, object]:
        accepted = self.points.accepted(exam.id, exam.bundle)
        if accepted is not None:
            reference = self.points.site_reference(accepted)
            if reference is not None:
                return reference, f"the site's acceptance sample ({accepted.cases} cases, {accepted.at[:10]})", accepted.id
        m = exam.bundle.manifest
        if m.monitoring is not None:
            served = _served_variant(exam)
            reference = m.monitoring.as_served(served)
            return reference, f"the bundle's reference ({reference.data})", ("bundle", served and served.file)
        return None, "none", None

    def _monitor(self, exam: Exam) -> ExamMonitor:
        """The exam's monitor, made again when its bundle or its reference changed (rebuilt from the store)."""
        reference, words, key = self._reference(exam)
        with self._lock:
            monitor = self._monitors.get(exam.id)
            if monitor is not None and monitor.bundle_sha256 == exam.bundle.sha256 and monitor.reference_key == key:
                return monitor
            fresh = ExamMonitor(exam, reference, words, key, self.settings)
            self._fill(fresh, monitor)
            self._monitors[exam.id] = fresh
            return fresh

    def _fill(self, monitor: ExamMonitor, replaced: ExamMonitor | None) -> None:
        """The exam's latest studies of this bundle from the store; the state as last recorded for it."""
        for document in self.store.latest_results(monitor.exam_id, self.settings.window):
            if (document.get("operating_point") or {}).get("bundle_sha256") == monitor.bundle_sha256:
                monitor.window.add(signals_of_document(document))
        events = self.record.monitor_events(monitor.exam_id, 1)
        last = events[0] if events else None
        if last is not None and last.bundle_sha256 == monitor.bundle_sha256 and replaced is None:
            monitor.tracker.state, monitor.since = last.state, last.at  # a restart: carry on where it was
        previous = replaced.tracker.state if replaced is not None else monitor.tracker.state
        if monitor.reference is not None and len(monitor.window):
            monitor.tracker.update(len(monitor.window), monitor.window.verdict())
        if replaced is not None and replaced.bundle_sha256 != monitor.bundle_sha256:
            self._changed(monitor, previous, f"A new bundle ({monitor.version}): its studies start a new window.")
        elif replaced is not None and replaced.reference_key != monitor.reference_key:
            self._changed(monitor, previous, f"Now compared with {monitor.reference_words} (before: "
                                             f"{replaced.reference_words}).")
        elif monitor.tracker.state != previous:
            self._changed(monitor, previous)

    # ---- what it reports ------------------------------------------------------------------------

    def checks_needed(self) -> dict[str, str]:
        """exam id -> the clinician's notice, for each exam in drift (the home screen shows it, discreetly)."""
        notices = {}
        for exam_id, monitor in list(self._monitors.items()):
            if monitor.tracker.state == DRIFT:
                accepted = isinstance(monitor.reference_key, int)
                notices[exam_id] = ("Model check needed: recent images differ from those the model was "
                                    f"{'accepted' if accepted else 'validated'} on")
        return notices

    def state_of(self, exam_id: str) -> str:
        monitor = self._monitors.get(exam_id)
        return COLLECTING if monitor is None else monitor.tracker.state

    def agreement(self, exam_id: str) -> dict:
        """Reviews that said agree or disagree: per week, and over the latest weeks together (cached briefly)."""
        now = time.monotonic()
        cached = self._agreement.get(exam_id)
        if cached is not None and now - cached[0] < AGREEMENT_CACHE_S:
            return cached[1]
        weeks = self.store.agreement(exam_id)
        agree, answered = sum(w["agree"] for w in weeks), sum(w["answered"] for w in weeks)
        value = {"by_week": weeks, "agree": agree, "answered": answered,
                 "share": None if not answered else round(agree / answered, 4)}
        self._agreement[exam_id] = (now, value)
        return value

    def forget_agreement(self, exam_id: str) -> None:
        self._agreement.pop(exam_id, None)

    def status(self) -> dict:
        """{"exams": {id: {state, since, kind, reasons, window, reference, signals, prevalence, bundle,
        operating_point, acceptance, agreement}}, "states": [...]}"""
        exams = {}
        for exam in self.exams:
            monitor = self._monitor(exam)
            with monitor.lock:
                entry = monitor.status()
            acceptance = self.points.status(exam.id, exam.bundle)
            entry["operating_point"] = acceptance.pop("operating_point")
            entry["acceptance"] = acceptance
            entry["agreement"] = self.agreement(exam.id)
            exams[exam.id] = entry
        return {"exams": exams, "states": list(STATES)}


def _served_variant(exam: Exam) -> Variant | None:
    """The bundle's variant whose file the exam's model runs (None for a GPU engine built on the device)."""
    bundle, served = exam.bundle, exam.triager.model.sha256
    return next((v for v in bundle.manifest.variants
                 if v.file in bundle.manifest.files and bundle.sha256_of(v.file) == served), None)
