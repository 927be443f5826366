"""One running appliance: the study service (device/core) and the rooms around it, the live capture
sources and the DICOM node, opened, health-checked and closed together. The web pages, the JSON API
and the technician area are handed this (device/appliance/context.py)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

from device import updates
from device.capture.manager import CaptureManager, Inference, LiveSource, frame_file
from device.capture.sources import redact
from device.capture.stream import STREAMING
from device.capture.view import ViewerSlots
from device.core.errors import Conflict, NotFound, UnknownExam
from device.core.exams import ExamRegistry
from device.core.monitoring import Metrics
from device.core.serving import Exam
from device.core.settings import ConfigError, KioskConfig
from device.core.store import NewStudy, Store, StudyRecord
from device.core.study_result import FrameCapture, StudyResult
from device.core.study_service import StudyService, stored_image
from device.decision.triage import TRIAGE_ORDER
from device.dicom.node import open_node
from device.machine.clock import utc_iso
from device.runtime import registry
from device.runtime.base import RuntimeFailure, RuntimeUnavailable
from device.updates.verify import appliance_version
from models.bundle import BundleError, read_manifest

log = logging.getLogger(__name__)
# Server threads never given to live views, so that the pages and the API (health) always answer.
THREADS_KEPT_FREE = 2


def _model_text(exam: Exam) -> str:
    """The model an exam triages with now, as the live view shows it."""
    m = exam.model
    return f"{m.id} {m.version} {m.precision} {m.backend}"


class Appliance:
    """The appliance's state for one process: config, store, loaded exams, metrics, the study service,
    capture sources and the DICOM node."""

    def __init__(self, config: KioskConfig, store: Store, exams: ExamRegistry, safe_mode: str | None = None):
        """``safe_mode``: why this appliance runs in safe mode (open_safe), or None."""
        self.config = config
        self.store = store
        self.exams = exams
        self.safe_mode = safe_mode
        self._closers: list[Callable[[], None]] = []
        self.metrics = Metrics(exams.ids(), TRIAGE_ORDER, lambda: self.capture.status(), exams.choices, self.watched)
        self.studies = StudyService(config, store, exams, self.metrics)
        self.backends = {} if safe_mode else {
            name: {"available": s.ok, "version": s.version, "reason": s.reason}
            for name, s in registry.all_availability().items()
        }
        self.capture = CaptureManager(config.capture, self._inference)
        self.live_viewers = ViewerSlots(
            max(0, min(config.capture.max_viewers, config.server.threads - THREADS_KEPT_FREE))
        )
        self.dicom = open_node(config.dicom, self.studies)
        self.capture.start()
        self.metrics.ready = safe_mode is None

    @classmethod
    def open(cls, config: KioskConfig) -> "Appliance":
        """Open the store, then load and warm up every exam; ready when this returns."""
        store = Store.open(config.store.data_dir)
        try:
            updates.recover(config)  # a bundle switch that was not committed is undone before loading
            exams = ExamRegistry.load(config.models, updates.served_paths(config), config.store.data_dir)
        except BaseException:
            store.close()
            raise
        try:
            return cls(config, store, exams)
        except BaseException:
            exams.close()
            store.close()
            raise

    @classmethod
    def open_safe(cls, config: KioskConfig, reason: str) -> "Appliance":
        """Safe mode (device/technician/safe_mode.py): the studies, read and reviewed as usual, and
        nothing that triages or may have caused the failed start: no model or runtime is loaded, no
        capture source or DICOM listener runs; bundles' manifests are read when a page needs one."""
        config = config.with_overrides(**{"capture.sources": [], "dicom.port": 0})
        store = Store.open(config.store.data_dir)
        try:
            return cls(config, store, ExamRegistry([], shelved=lambda: updates.served_paths(config)), reason)
        except BaseException:
            store.close()
            raise

    def close_with(self, closer: Callable[[], None]) -> None:
        """Run `closer` last when the kiosk closes (the technician area, which the app holds too)."""
        self._closers.append(closer)

    def close(self) -> None:
        self.metrics.ready = False
        if self.dicom is not None:
            self.dicom.close()
        self.capture.close()
        self.studies.close()
        self.exams.close()
        self.store.close()
        for closer in self._closers:
            closer()

    def reload_exam(self, exam_id: str) -> dict:
        """Load the bundle now served for ``exam_id`` (after an install, activation or rollback switched
        its slot) in place of the loaded one; the exam's JSON. The loaded one stays if this fails."""
        path = self._served_path(exam_id)
        if path is None:
            if self.exams.remove(exam_id):
                log.warning("%s: no bundle serves it any more; the exam is no longer offered", exam_id)
                return {"id": exam_id, "version": None, "removed": True}
            raise NotFound(f"no bundle for exam {exam_id!r} is installed or shipped")
        try:
            exam = self.exams.replace(path, self.config.models)
        except (BundleError, RuntimeFailure, RuntimeUnavailable) as exc:
            raise Conflict(f"cannot load {exam_id} from {path}: {exc}") from None
        log.info("%s: now serving %s from %s", exam_id, exam.bundle.manifest.version, path)
        return exam.as_json()

    def _served_path(self, exam_id: str) -> Path | None:
        for path in updates.served_paths(self.config):
            try:
                if read_manifest(path).id == exam_id:
                    return path
            except BundleError:
                continue
        return None

    def selftest_exam(self, exam_id: str) -> dict:
        """The loaded model of an exam (the one serving studies) on its bundle's golden inputs."""
        exam = self.exams.resolve(exam_id)
        try:
            check = exam.selftest()
        except RuntimeFailure as exc:
            return {"exam": exam_id, "ok": False, "error": str(exc)}
        return {"exam": exam_id, "version": exam.bundle.manifest.version, **check}

    # ---- live capture ------------------------------------------------------------------------

    def _inference(self, exam_id: str | None) -> Inference:
        """What a capture source triages with: its exam's single-owner model (shared with uploads)."""
        try:
            exam = self.exams.resolve(exam_id)
        except UnknownExam as exc:
            raise ConfigError(f"capture source: {exc.message}") from None
        # Resolved at each frame: a bundle install may replace the exam while the source is live.
        current = lambda: self.exams.resolve(exam.id)  # noqa: E731
        return Inference(exam.id, lambda *args: current().triage(*args), exam.bundle.manifest,
                         lambda: _model_text(current()))

    def live_source(self, source_id: str) -> LiveSource:
        source = self.capture.get(source_id)
        if source is None:
            raise NotFound(f"no capture source {source_id!r}")
        return source

    def capture_study(self, source_id: str, reference: str | None, operator: str | None,
                      frame_seq: int | None = None) -> StudyRecord:
        """Freeze a triaged frame and store it as a study: the exact frame the model saw (full
        resolution, as the camera sent it), its result, and where it came from. ``frame_seq``: the
        frame whose result a screen shows (its picture and result are stored as that pair); None:
        the newest."""
        t0 = time.perf_counter()
        source = self.capture.get(source_id)
        if source is None:
            raise NotFound(f"no capture source {source_id!r}; configured: {', '.join(s.id for s in self.capture)}")
        status = source.stream.status()
        live = source.live.latest() if frame_seq is None else source.live.shown(frame_seq)
        if frame_seq is not None and live is None:
            raise Conflict(f"source {source_id}: frame {frame_seq}, the one on the screen, is no longer kept; "
                           "look at the picture again and capture")
        if status["state"] != STREAMING or live is None:
            why = f": {status['reason']}" if status["reason"] else ""
            raise Conflict(f"source {source_id} is {status['state']}{why}; there is no current frame to capture")
        age = time.monotonic() - live.frame.captured
        if age > self.config.capture.stall_timeout_s:
            raise Conflict(
                f"source {source_id}: the newest triaged frame is {age:.1f} s old (the limit is "
                f"{self.config.capture.stall_timeout_s:g} s); it is not what the camera shows now"
            )
        studies = self.studies
        reference = studies.reference(reference)
        operator = studies.operator(operator)
        data, fmt = frame_file(live.frame)
        studies.reserve.require(len(data))
        sha = studies.store.put_image(data)
        capture = FrameCapture(source=source_id, uri=redact(source.stream.spec.uri), frame_seq=live.frame.seq,
                               frame_captured_at=utc_iso(live.frame.wall), frame_to_result_ms=round(live.latency_ms, 3),
                               smoothed=live.smoothed)
        study = NewStudy(
            exam=self.exams.resolve(source.exam_id).id,
            source=f"capture:{source_id}",
            reference=reference,
            operator=operator,
            filename=f"{source_id}-frame{live.frame.seq}.{'jpg' if fmt == 'jpeg' else fmt}",
            image=stored_image(sha, len(data), dataclasses.replace(live.image, source_format=fmt)),
            result=StudyResult(result=live.result, capture=capture),
        )
        return studies.save_triaged(study, t0)

    # ---- health ------------------------------------------------------------------------------

    def inference(self) -> list[dict]:
        """Each exam's inference worker: busy how long, and whether that counts as hung."""
        limit = self.config.models.stuck_after_s
        return [{"exam": e.id, "busy_s": round(e.busy_s(), 1), "stuck": e.busy_s() > limit} for e in self.exams]

    def watched(self) -> dict:
        """What the metrics expose for a fleet's alert rules (device/core/monitoring.py, WatchedCollector)."""
        return {
            "inference": self.inference(),
            "storage": self.studies.reserve.status(),
            "outbox": self.dicom.outbox.counts() if self.dicom is not None else [],
            "remote": {e.id: e.remote_status() for e in self.exams if e.remote_status() is not None},
            "rolled_back": {e.exam_id: e.rolled_back for e in updates.list_installed(self.config) if e.slots},
        }

    def health(self) -> dict:
        check = self.store.check
        workers = self.inference()
        safe = {"safe_mode": True, "reason": self.safe_mode} if self.safe_mode else {}
        return {
            "ready": self.metrics.ready and not any(w["stuck"] for w in workers),
            **safe,
            "appliance": {"version": appliance_version()},
            "inference": workers,
            "backends": self.backends,
            "models": [e.as_json() for e in self.exams],
            "store": {
                "ok": check.ok,
                "studies_at_start": check.studies,
                "orphan_files_at_start": check.orphan_files,
                "problems": list(check.problems),
            },
            "storage": self.studies.reserve.status(),
            "sources": self.capture.status(),
        }
