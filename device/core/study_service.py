"""The study service: what the appliance does with studies, once, for the pages, the JSON API, the
DICOM node and live capture alike: create them from uploads, imports and captured frames, look them
up, review and export them, and who is acting.

A study is created in three steps with the slow, shared part in the middle: decode (any thread),
triage (the exam's single model, one thread at a time), save (image made durable, then the row
committed). Only after the commit does the caller get the record to acknowledge.

An upload or import that names no exam, where several are installed, goes to the one exam that
takes the image (device/decision/refusal.py, in_domain: the model's refusal check, and the quality
checks that say the image is of another kind); the caller is asked to choose only when none or
several do. A study its exam judged the wrong kind of image can be run again as another exam: a
new study linked to the first, nothing deleted.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from device import intake
from device.core import exports, media
from device.core.decoding import Decoder
from device.core.errors import (
    BadRequest, Conflict, ExamNeeded, ExportFailed, ImageRejected, KioskError, NotFound, OtherPatient,
    UnknownExam,
)
from device.core.exams import ExamRegistry
from device.core.import_paths import expand_dicomdirs
from device.core.monitoring import Metrics
from device.core.renders import Renderer
from device.core.reserve import Reserve, is_disk_full
from device.core.settings import KioskConfig
from device.core.store import NewStudy, Store, StoredImage, StudyFilter, StudyRecord
from device.core.serving import Exam
from device.core.study_result import StudyResult
from device.decision.refusal import WRONG_EXAM, in_domain
from device.decision.triage import TriageResult, shown_reasons
from models.bundle import InputContract

log = logging.getLogger(__name__)
MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "tiff": "image/tiff", "dicom": "application/dicom"}
MAX_REFERENCE = 120
MAX_NOTE = 2000
MAX_STUDY_ID = 2**63 - 1  # SQLite's largest integer: a bigger id cannot exist
OPERATOR_KEY = "operator"
SHA256 = re.compile(r"^[0-9a-f]{64}$")
# How long after "Mark reviewed" the tap can be taken back as a mistake (the page offers Undo for
# less: this leaves time for a slow screen); later it is a reopening.
UNDO_WINDOW_S = 30


def clean_text(value: str | None, limit: int, what: str) -> str:
    """Strip and refuse over-long text and control characters (they end up in CSV exports and logs)."""
    text = (value or "").strip()
    if len(text) > limit:
        raise BadRequest(f"{what} is {len(text)} characters long; the limit is {limit}")
    if any(ord(c) < 32 and c not in "\n\t" for c in text):
        raise BadRequest(f"{what} contains control characters")
    return text


def study_json(study: StudyRecord) -> dict:
    base = f"/api/v1/studies/{study.id}"
    return {
        "id": study.id,
        "created_at": study.created_at,
        "exam": study.exam,
        "source": study.source,
        "reference": study.reference,
        "operator": study.operator,
        "filename": study.filename,
        "triage": study.triage,
        "label": study.label,
        "probability": study.probability,
        "image": {
            "sha256": study.image_sha256,
            "bytes": study.image_bytes,
            "media_type": study.media_type,
            "format": study.source_format,
            "height": study.height,
            "width": study.width,
        },
        "result": study.result,
        "rerun_of": study.rerun_of,
        "review": {
            "reviewed": study.reviewed_at is not None,
            "at": study.reviewed_at,
            "by": study.reviewed_by,
            "note": study.review_note,
        },
        "links": {
            "self": base,
            "image": f"{base}/image",
            "preview": f"{base}/preview",
            "heatmap": f"{base}/heatmap" if study.cam is not None else None,
            "page": f"/studies/{study.id}",
        },
    }


def stored_image(sha256: str, size: int, img: intake.DecodedImage) -> StoredImage:
    """The images row of ``size`` bytes stored under ``sha256`` that decoded to ``img``."""
    media_type = MEDIA_TYPES.get(img.source_format, "application/octet-stream")
    return StoredImage(sha256=sha256, bytes=size, media_type=media_type, source_format=img.source_format,
                       height=img.original_size[0], width=img.original_size[1])


class StudyService:
    """The studies of one appliance: its store, its exams, and the decoding, renderings, free-space
    reserve and image writers they share."""

    def __init__(self, config: KioskConfig, store: Store, exams: ExamRegistry, metrics: Metrics):
        self.config = config
        self.store = store
        self.exams = exams
        self.metrics = metrics
        self.decoder = Decoder(config.decode)
        self.renders = Renderer(store, self._input_contract, self.decoder)
        self.reserve = Reserve(config.store.data_dir, config.store.reserve_mb)
        self._writer = ThreadPoolExecutor(max_workers=4, thread_name_prefix="image-writer")

    def close(self) -> None:
        """Wait for the images being written; the store and exams are closed by their owner."""
        self._writer.shutdown(wait=True)

    @property
    def max_upload_bytes(self) -> int:
        return self.config.server.max_upload_mb * 2**20

    def _input_contract(self, exam_id: str) -> InputContract:
        """The input contract of the model of an installed exam (the heatmap is placed by it)."""
        manifest = self.exams.manifest(exam_id)
        if manifest is None:
            raise NotFound(f"the study's exam {exam_id!r} is not installed; its heatmap cannot be placed "
                           f"(installed: {', '.join(self.exams.ids()) or 'none'})")
        return manifest.input

    # ---- who is acting -----------------------------------------------------------------------

    def default_operator(self) -> str:
        return self.store.settings().get(OPERATOR_KEY, self.config.ui.operator)

    def operator(self, given: str | None) -> str:
        return clean_text(given, 80, "operator") or self.default_operator()

    def set_default_operator(self, name: str | None, operator: str | None) -> None:
        value = clean_text(name, 80, "operator")
        self.store.change_setting(OPERATOR_KEY, value, self.operator(operator) or value)

    def reference(self, given: str | None) -> str:
        """The patient reference, cleaned; required when ``ui.require_reference`` is set."""
        text = clean_text(given, MAX_REFERENCE, "reference")
        if not text and self.config.ui.require_reference:
            raise BadRequest("Enter the patient reference first: this kiosk keeps no study without one.")
        return text

    # ---- creating studies --------------------------------------------------------------------

    def create_study(
        self,
        data: bytes,
        filename: str,
        exam_id: str | None = None,
        reference: str | None = None,
        operator: str | None = None,
        source: str = "upload",
        rerun_of: int | None = None,
        other_patient_ok: bool = False,
    ) -> StudyRecord:
        """Decode, triage and durably store one image. Raises KioskError (4xx) for bad input,
        ExamNeeded when no exam is named and not exactly one of several takes the image, and
        OtherPatient for an image already saved under another patient reference unless
        ``other_patient_ok`` (the person confirmed it). ``rerun_of``: the study this one is run
        again from, as another exam."""
        t0 = time.perf_counter()
        try:
            exam = self.exams.resolve(exam_id) if exam_id or len(self.exams) == 1 else None
            reference = self.reference(reference)
            operator = self.operator(operator)
            filename = clean_text(filename, 255, "file name") or "upload"
            other = self._other_patient(hashlib.sha256(data).hexdigest(), reference, filename)
            if other is not None and not other_patient_ok:
                raise other
        except KioskError as exc:
            self.metrics.error(exc.code)
            raise
        if exam is None:
            exam, img, result = self._exam_for(data, filename)
            sha, waited = self.store.put_image(data), {}
        else:
            img, decode_ms = self._decoded(data, filename, exam.reduced_decode)
            # The image is known to be good: make it durable while the model runs (an fsync costs
            # milliseconds; overlapping it with inference keeps it off the study's latency).
            written = self._writer.submit(self.store.put_image, data)
            try:
                result = exam.triage(img, filename, decode_ms)
            finally:
                t_wait = time.perf_counter()
                sha = written.result()
            waited = {"store_image_wait": (time.perf_counter() - t_wait) * 1e3}
        confirmed = {} if other is None else {"same_image_as": other.earlier_study,
                                               "other_patient_confirmed": other.earlier_reference}
        study = NewStudy(exam=exam.id, source=source, reference=reference, operator=operator, filename=filename,
                         image=stored_image(sha, len(data), img),
                         result=StudyResult(result=result, extra_timings_ms=waited), rerun_of=rerun_of,
                         audit_detail=confirmed)
        return self.save_triaged(study, t0)

    def _exam_for(self, data: bytes, filename: str) -> tuple[Exam, intake.DecodedImage, TriageResult]:
        """Every installed exam triages the image; the one whose domain it is (refusal.in_domain) keeps
        its result. ExamNeeded (counted) when none or several take it."""
        decoded: dict[intake.ReducedDecode, tuple[intake.DecodedImage, float]] = {}
        judged = []
        for exam in self.exams:
            reduce = exam.reduced_decode
            if reduce not in decoded:
                decoded[reduce] = self._decoded(data, filename, reduce)
            img, decode_ms = decoded[reduce]
            judged.append((exam, img, exam.triage(img, filename, decode_ms)))
        taking = [j for j in judged if in_domain(j[2].quality, j[2].refusal)]
        if len(taking) == 1:
            return taking[0]
        why = {e.id: next((i.message for i in r.reasons if i.code in WRONG_EXAM), None) for e, _, r in judged}
        exc = ExamNeeded.of([(e.id, e.name, why[e.id]) for e, _, _ in judged], [e.id for e, _, _ in taking])
        self.metrics.error(exc.code)
        raise exc

    def run_as(self, study_id: int, exam_id: str | None, operator: str | None) -> StudyRecord:
        """Run a study's image again as another exam: a new study that names the first (rerun_of),
        which is marked reviewed with a note saying so (audited; nothing is deleted). Only a study its
        exam could not judge as the wrong kind of image is run again; a second request for the same
        exam gives the study made the first time."""
        first = self.get(study_id)
        exam = self.exams.resolve(exam_id) if exam_id else None
        if exam is None or exam.id == first.exam:
            raise BadRequest(f"choose another exam to run study {study_id} as: {', '.join(self.exams.ids())}")
        if not any(r["code"] in WRONG_EXAM for r in shown_reasons(first.result)):
            raise Conflict(f"study {study_id} was judged by its exam ({first.triage}); only an image its exam "
                           "could not judge as the wrong kind of image is run as another exam")
        earlier = next((sid for sid, exam_of in self.store.reruns_of(study_id) if exam_of == exam.id), None)
        if earlier is not None:
            return self.get(earlier)
        who = self.operator(operator)
        study = self.create_study(self.image_bytes(first), first.filename, exam.id, first.reference, who,
                                  first.source, rerun_of=first.id)
        if first.reviewed_at is None:
            self.store.review(first.id, who, f"Run as {exam.name}: study #{study.id}")
        return study

    def _other_patient(self, sha256: str, reference: str, filename: str) -> OtherPatient | None:
        """The possible mix-up, when a study of these exact bytes has another patient reference (two
        references that differ; an image saved first without one is no mix-up)."""
        if not reference:
            return None
        for study_id, earlier in self.store.studies_with_image(sha256):
            if earlier and earlier.casefold() != reference.casefold():
                return OtherPatient(filename, reference, study_id, earlier, sha256)
        return None

    def keep_other_patient(self, sha256: str, filename: str, exam_id: str | None, reference: str | None,
                           operator: str | None, source: str = "upload") -> StudyRecord:
        """Triage and keep an image already in the store (refused as OtherPatient) for this other
        patient reference, because the person confirmed it; the confirmation is in the audit log."""
        if source not in ("upload", "import") or not SHA256.match(sha256 or ""):
            raise BadRequest("keep which image? this form is only sent from the mix-up warning")
        if not self.store.studies_with_image(sha256, 1):
            raise NotFound("that image is not in the kiosk's store; choose the file again")
        data = self.store.image_path(sha256).read_bytes()
        return self.create_study(data, filename, exam_id, reference, operator, source, other_patient_ok=True)

    def _decoded(self, data: bytes, filename: str, reduce: intake.ReducedDecode | None = None
                 ) -> tuple[intake.DecodedImage, float]:
        """The image and its decode time, if there is room to keep it and it decodes; else KioskError
        (counted). ``reduce``: decoded no larger than the exam's model and quality checks need."""
        try:
            self.reserve.require(len(data))
            try:
                return self.decoder.decode(data, filename, reduce)
            except intake.IntakeError as exc:
                raise ImageRejected(exc, filename) from None
        except KioskError as exc:
            self.metrics.error(exc.code)
            raise

    def keep_bytes(self, data: bytes) -> str:
        """Store a file durably as it came, undecoded, where there is room (StorageFull otherwise): a
        DICOM instance no exam triages. Its sha256."""
        try:
            self.reserve.require(len(data))
        except KioskError as exc:
            self.metrics.error(exc.code)
            raise
        return self.store.put_image(data)

    def keep_image(self, data: bytes, filename: str) -> StoredImage:
        """Decode (to refuse what cannot be triaged) and durably store an image without triaging
        it: a DICOM instance held until its series is complete. Raises KioskError as create_study does."""
        img, _ = self._decoded(data, filename)
        return stored_image(self.store.put_image(data), len(data), img)

    def save_triaged(self, study: NewStudy, started: float) -> StudyRecord:
        """Commit a study whose image its exam has triaged and ``store.put_image`` has made durable;
        ``started``: ``time.perf_counter()`` when its request began.

        Uploads and imports come through create_study; other sources (a captured camera frame)
        store their encoded frame with put_image and call this directly.
        """
        record = self.store.add_study(study)
        timings = study.result.result.timings_ms
        model_s = (timings["preprocess"] + timings["inference"]) / 1e3
        self.metrics.study_created(study.exam, record.triage, model_s, time.perf_counter() - started)
        return record

    def import_files(
        self, paths: list[str], exam_id: str | None, reference: str | None, operator: str | None
    ) -> list[tuple[str, StudyRecord | KioskError]]:
        """Import files from the import folders, one study each; a bad file does not stop the others."""
        if not paths:
            raise BadRequest("choose at least one file to import")
        if exam_id:  # an unknown exam or a missing reference fails the whole request, before any work
            self.exams.resolve(exam_id)
        self.reference(reference)
        outcome: list[tuple[str, StudyRecord | KioskError]] = []
        for path in expand_dicomdirs(paths, self.config.media.import_folders):
            try:
                resolved = media.resolve_import(path, self.config.media.import_folders)
                data = self._read_import(resolved)
                outcome.append((path, self.create_study(data, resolved.name, exam_id, reference, operator, "import")))
            except KioskError as exc:
                outcome.append((path, exc))
        return outcome

    def _read_import(self, path: Path) -> bytes:
        try:
            size = path.stat().st_size
            if size > self.max_upload_bytes:
                raise ImageRejected(
                    intake.IntakeError(
                        path.name, f"the file is {size / 2**20:.0f} MiB; the limit is "
                        f"{self.config.server.max_upload_mb} MiB", "too_large"
                    ),
                    path.name,
                )
            return path.read_bytes()
        except OSError as exc:
            raise ImageRejected(intake.IntakeError(path.name, f"cannot read: {exc.strerror}", "unreadable"), path.name) from None

    def importable(self) -> list[media.Importable]:
        m = self.config.media
        return media.find_importable(m.import_folders, m.max_listed_files, m.max_depth)

    # ---- reading, reviewing ------------------------------------------------------------------

    def get(self, study_id: int) -> StudyRecord:
        study = self.store.get(study_id) if study_id <= MAX_STUDY_ID else None
        if study is None:
            raise NotFound(f"There is no study #{study_id} on this kiosk.")
        return study

    def view(self, study_id: int, operator: str | None) -> StudyRecord:
        """The study, with the viewing recorded in the audit log."""
        study = self.get(study_id)
        try:
            self.store.audit("study_viewed", self.operator(operator), study_id)
        except sqlite3.OperationalError as exc:
            if not is_disk_full(exc):
                raise
            # The reserve exists so that this never happens; if the disk filled up all the same,
            # the study is still shown, and the missed record is logged and counted.
            log.error("disk full: the viewing of study %d was not recorded in the audit log", study_id)
            self.metrics.error("audit_disk_full")
        return study

    def review(self, study_id: int, note: str | None, operator: str | None, change: bool = False) -> StudyRecord:
        """Mark a study reviewed. A study already reviewed is changed only when asked to (``change``):
        a second press of the same button must not overwrite someone's review unseen."""
        note = clean_text(note, MAX_NOTE, "note")
        earlier = self.get(study_id)
        if earlier.reviewed_at is not None and not change:
            raise Conflict(
                f"study {study_id} was already reviewed by {earlier.reviewed_by or 'an unnamed operator'} at "
                f"{earlier.reviewed_at}; to change that review, say so (Change review)"
            )
        study = self.store.review(study_id, self.operator(operator), note)
        if study is None:
            raise NotFound(f"no study {study_id}")
        return study

    def reopen(self, study_id: int, operator: str | None, undo: bool = False) -> StudyRecord:
        """Put a reviewed study back on the worklist. ``undo``: the person took back the tap that
        marked it reviewed; audited as review_undone within UNDO_WINDOW_S of that review, else (the
        page was left open) as study_reopened like any other reopening."""
        earlier = self.get(study_id)
        if earlier.reviewed_at is None:
            raise Conflict(f"study {study_id} is not reviewed: it is on the worklist already")
        age_s = time.time() - datetime.fromisoformat(earlier.reviewed_at.replace("Z", "+00:00")).timestamp()
        action = "review_undone" if undo and age_s <= UNDO_WINDOW_S else "study_reopened"
        detail = {"seconds_after_review": round(age_s, 1)} if undo else {}
        study = self.store.reopen(study_id, self.operator(operator), action, detail)
        if study is None:
            raise NotFound(f"no study {study_id}")
        return study

    def image_bytes(self, study: StudyRecord) -> bytes:
        return self.store.image_path(study.image_sha256).read_bytes()

    # ---- exports -----------------------------------------------------------------------------

    def export_targets(self) -> list[Path]:
        return media.export_targets(self.config.media.export_folders, self._internal_exports)

    @property
    def _internal_exports(self) -> Path:
        return self.config.store.data_dir / "exports"

    def export_choices(self) -> list[tuple[str, str]]:
        """(path, label) of each export target, for the pages: people choose a drive by its name."""
        return [(str(t), media.target_label(t, self._internal_exports)) for t in self.export_targets()]

    def label_of(self, exported: Path) -> str:
        """The label of the export target that holds `exported` (a folder or file just written)."""
        holding = [t for t in self.export_targets() if exported.is_relative_to(t.resolve())]
        target = max(holding, key=lambda t: len(t.resolve().parts)) if holding else exported.parent  # the drive, not /media
        return media.target_label(target, self._internal_exports)

    def export_study(self, study_id: int, destination: str | None, operator: str | None) -> Path:
        study = self.get(study_id)
        target = self._destination(destination)
        who = self.operator(operator)
        image, heatmap = self.image_bytes(study), self.renders.heatmap_full_png(study)
        try:
            folder = exports.export_study(target, study, study_json(study), image, heatmap)
        except OSError as exc:
            raise ExportFailed(target, exc) from None
        self.store.audit("study_exported", who, study_id, {"destination": str(folder)})
        return folder

    def export_history(self, where: StudyFilter, destination: str | None, operator: str | None) -> tuple[Path, int]:
        target = self._destination(destination)
        who = self.operator(operator)
        try:
            path, count = exports.export_history(target, self.store.iter_studies(where))
        except OSError as exc:
            raise ExportFailed(target, exc) from None
        self.store.audit("history_exported", who, None, {"destination": str(path), "studies": count})
        return path, count

    def _destination(self, destination: str | None) -> Path:
        targets = self.export_targets()
        if not destination:
            return targets[0]
        return media.resolve_export(destination, targets)
