"""The studies table: one row per study, its result document and heatmap, and its review. A study
is never deleted (a trigger refuses it); its image row and file are the images table's
(device/core/store/images.py)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from device.core.store.audit_log import record
from device.core.store.connection import Connection, named
from device.core.store.images import StoredImage, insert_image
from device.core.study_result import StudyResult
from device.decision.triage import TRIAGE_ORDER, UNGRADABLE, ModelRef
from device.machine.clock import utc_iso


@dataclass(frozen=True, kw_only=True)
class NewStudy:
    """Everything that is committed for one study: its image (already durable, see put_image), the
    result, and who and what it came from."""

    exam: str
    source: str
    reference: str
    operator: str
    filename: str
    image: StoredImage
    result: StudyResult  # its triage result holds the heatmap (cam)
    rerun_of: int | None = None  # the study this one was run again from, as another exam
    audit_detail: dict = field(default_factory=dict)  # added to the study_created entry


@dataclass(frozen=True)
class StudyRecord:
    id: int
    created_at: str
    exam: str
    source: str
    reference: str
    operator: str
    filename: str
    image_sha256: str
    image_bytes: int
    media_type: str
    source_format: str
    height: int
    width: int
    triage: str
    label: str | None
    probability: float | None  # None when UNGRADABLE (see _record)
    threshold: float
    model: ModelRef
    result: dict  # the result document as it was saved (StudyResult.as_json())
    cam: np.ndarray | None  # None when UNGRADABLE, or when the model gives no map
    reviewed_at: str | None
    reviewed_by: str | None
    review_note: str | None
    rerun_of: int | None = None  # the study this one was run again from, as another exam

    def __post_init__(self) -> None:
        if self.triage == UNGRADABLE and (self.label, self.probability, self.cam) != (None, None, None):
            raise ValueError("an UNGRADABLE study offers no label, score or heatmap")


@dataclass(frozen=True)
class StudyFilter:
    triage: tuple[str, ...] = ()
    created_from: str | None = None  # inclusive, UTC ISO
    created_before: str | None = None  # exclusive, UTC ISO
    reference: str | None = None  # substring, case-insensitive
    reviewed: bool | None = None  # None: either


_STUDY_COLUMNS = """
    s.id, s.created_at, s.exam, s.source, s.reference, s.operator, s.filename, s.image_sha256,
    i.bytes AS image_bytes, i.media_type, i.source_format, i.height, i.width, s.triage, s.label, s.probability,
    s.threshold, s.model_id, s.model_version, s.model_sha256, s.backend, s.precision, s.result_json,
    s.cam, s.cam_height, s.cam_width, s.reviewed_at, s.reviewed_by, s.review_note, s.rerun_of
"""

# The same columns with the heatmap left out (cam is None), for reading many studies at once.
_STUDY_COLUMNS_NO_CAM = _STUDY_COLUMNS.replace(
    "s.cam, s.cam_height, s.cam_width", "NULL AS cam, NULL AS cam_height, NULL AS cam_width"
)
# StudyRecord fields that are a column of the same name
_PLAIN_FIELDS = (
    "id", "created_at", "exam", "source", "reference", "operator", "filename", "image_sha256", "image_bytes",
    "media_type", "source_format", "height", "width", "triage", "label", "probability", "threshold",
    "reviewed_at", "reviewed_by", "review_note", "rerun_of",
)


def _record(row: sqlite3.Row) -> StudyRecord:
    """A study as the kiosk shows it. An UNGRADABLE study offers no score, label or heatmap to
    anyone: the image failed the quality checks, and a number or a map on it reads as a finding.
    What the model said stays in its row (label, probability; and the heatmap of a study saved
    before results held none when UNGRADABLE) and its result document (``ungraded_model_output``)."""
    fields = {name: row[name] for name in _PLAIN_FIELDS}
    cam = None
    if row["triage"] == UNGRADABLE:
        fields.update(probability=None, label=None)
    elif row["cam"] is not None:
        cam = np.frombuffer(row["cam"], dtype="<f4").reshape(row["cam_height"], row["cam_width"])
    model = ModelRef(row["model_id"], row["model_version"], row["model_sha256"], row["precision"], row["backend"])
    return StudyRecord(**fields, model=model, result=json.loads(row["result_json"]), cam=cam)


class StudyTable(Connection):
    """The studies table."""

    def add_study(self, study: NewStudy) -> StudyRecord:
        """Commit the study (its image must already be durable, see put_image) and audit it. The row's
        label and probability are what the model said, shown or not (the columns predate UNGRADABLE
        results without them; reading renders them as the result does)."""
        now = utc_iso()
        r, model = study.result.result, study.result.result.model
        said = r.model_output
        cam = None if r.cam is None else np.ascontiguousarray(r.cam, dtype="<f4")
        with self._transaction() as db:
            insert_image(db, study.image, now)
            cur = db.execute(
                "INSERT INTO studies (created_at, exam, source, reference, operator, filename, image_sha256,"
                " triage, label, probability, threshold, model_id, model_version, model_sha256, backend,"
                " precision, timings_json, result_json, cam, cam_height, cam_width, rerun_of)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    now, study.exam, study.source, study.reference, study.operator, study.filename, study.image.sha256,
                    r.triage, said.label, said.urgent_probability, r.threshold, model.id, model.version,
                    model.sha256, model.backend, model.precision, json.dumps(study.result.timings_ms),
                    json.dumps(study.result.as_json()), None if cam is None else cam.tobytes(),
                    None if cam is None else cam.shape[0], None if cam is None else cam.shape[1], study.rerun_of,
                ),
            )
            study_id = cur.lastrowid
            detail = {"triage": r.triage, "exam": study.exam, "source": study.source}
            record(db, "study_created", study.operator, study_id,
                   {**detail, **({} if study.rerun_of is None else {"rerun_of": study.rerun_of}), **study.audit_detail})
            return self._get(db, study_id)

    def get(self, study_id: int) -> StudyRecord | None:
        with self._lock:
            return self._get(self._db, study_id)

    def _get(self, db: sqlite3.Connection, study_id: int) -> StudyRecord | None:
        row = named(
            db, f"SELECT {_STUDY_COLUMNS} FROM studies s JOIN images i ON i.sha256 = s.image_sha256 WHERE s.id = ?",
            (study_id,),
        ).fetchone()
        return None if row is None else _record(row)

    def list(self, where: StudyFilter, limit: int, offset: int = 0) -> tuple[list[StudyRecord], int]:
        """Matching studies, newest first, and how many match in all."""
        clauses, params = _where(where)
        with self._lock:
            total = self._db.execute(f"SELECT count(*) FROM studies s {clauses}", params).fetchone()[0]
            rows = named(
                self._db, f"SELECT {_STUDY_COLUMNS} FROM studies s JOIN images i ON i.sha256 = s.image_sha256 {clauses}"
                " ORDER BY s.id DESC LIMIT ? OFFSET ?",
                (*params, limit, offset),
            ).fetchall()
        return [_record(r) for r in rows], total

    def iter_studies(self, where: StudyFilter, batch: int = 500) -> Iterator[StudyRecord]:
        """Every matching study, newest first, without its heatmap, read in batches: a history of any
        length is exported without holding it all in memory, or the store's lock all the while."""
        clauses, params = _where(where)
        before = 2**63 - 1
        while True:
            with self._lock:
                rows = named(
                    self._db, f"SELECT {_STUDY_COLUMNS_NO_CAM} FROM studies s JOIN images i ON i.sha256 = s.image_sha256"
                    f" {clauses} {'AND' if clauses else 'WHERE'} s.id < ? ORDER BY s.id DESC LIMIT ?",
                    (*params, before, batch),
                ).fetchall()
            yield from map(_record, rows)
            if len(rows) < batch:
                return
            before = rows[-1]["id"]

    def worklist(self, limit: int, offset: int = 0) -> tuple[list[StudyRecord], int]:
        """Unreviewed studies, most urgent category first (TRIAGE_ORDER), then the longest waiting
        first; and how many there are in all. Nothing is left out by a count: the caller pages."""
        rank = " ".join(f"WHEN '{t}' THEN {i}" for i, t in enumerate(TRIAGE_ORDER))
        with self._lock:
            total = self._db.execute("SELECT count(*) FROM studies WHERE reviewed_at IS NULL").fetchone()[0]
            rows = named(
                self._db, f"SELECT {_STUDY_COLUMNS_NO_CAM} FROM studies s JOIN images i ON i.sha256 = s.image_sha256"
                f" WHERE s.reviewed_at IS NULL ORDER BY CASE s.triage {rank} END, s.id LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
        return [_record(r) for r in rows], total

    def unreviewed_counts(self) -> dict[str, int]:
        """Unreviewed studies by category: the same set the worklist holds."""
        with self._lock:
            rows = self._db.execute(
                "SELECT triage, count(*) FROM studies WHERE reviewed_at IS NULL GROUP BY triage"
            ).fetchall()
        return {t: 0 for t in TRIAGE_ORDER} | dict(rows)

    def reruns_of(self, study_id: int) -> list[tuple[int, str]]:
        """(id, exam) of each study run again from this one as another exam, oldest first."""
        with self._lock:
            return self._db.execute("SELECT id, exam FROM studies WHERE rerun_of = ? ORDER BY id", (study_id,)).fetchall()

    def first_with_image(self, image_sha256: str) -> int | None:
        """The id of the first study of these exact image bytes."""
        with self._lock:
            row = self._db.execute("SELECT min(id) FROM studies WHERE image_sha256 = ?", (image_sha256,)).fetchone()
        return row[0]

    def studies_with_image(self, image_sha256: str, limit: int = 20) -> list[tuple[int, str]]:
        """(id, reference) of the first studies of these exact image bytes, oldest first."""
        with self._lock:
            return [tuple(row) for row in self._db.execute(
                "SELECT id, reference FROM studies WHERE image_sha256 = ? ORDER BY id LIMIT ?", (image_sha256, limit))]

    def review(self, study_id: int, operator: str, note: str) -> StudyRecord | None:
        """Record the review; the audit entry of a changed review holds the one it replaced."""
        with self._transaction() as db:
            before = _review_of(db, study_id)
            if before is None:
                return None
            db.execute(
                "UPDATE studies SET reviewed_at = ?, reviewed_by = ?, review_note = ? WHERE id = ?",
                (utc_iso(), operator, note, study_id),
            )
            detail: dict = {"note": note}
            if before[0] is not None:
                detail["replaces"] = {"at": before[0], "by": before[1], "note": before[2]}
            record(db, "study_reviewed", operator, study_id, detail)
            return self._get(db, study_id)


    def reopen(self, study_id: int, operator: str, action: str, detail: dict) -> StudyRecord | None:
        """Put a reviewed study back on the worklist (its review cleared); the audit entry (``action``:
        review_undone or study_reopened) holds the review it took back, besides ``detail``."""
        with self._transaction() as db:
            before = _review_of(db, study_id)
            if before is None:
                return None
            db.execute("UPDATE studies SET reviewed_at = NULL, reviewed_by = NULL, review_note = NULL WHERE id = ?",
                       (study_id,))
            record(db, action, operator, study_id,
                   {**detail, "review": {"at": before[0], "by": before[1], "note": before[2]}})
            return self._get(db, study_id)


def _review_of(db: sqlite3.Connection, study_id: int) -> tuple | None:
    """(reviewed_at, reviewed_by, review_note) of a study, or None when there is no such study."""
    return db.execute("SELECT reviewed_at, reviewed_by, review_note FROM studies WHERE id = ?", (study_id,)).fetchone()


def _where(f: StudyFilter) -> tuple[str, tuple]:
    clauses: list[str] = []
    params: list = []
    if f.triage:
        clauses.append(f"s.triage IN ({', '.join('?' * len(f.triage))})")
        params += f.triage
    if f.created_from:
        clauses.append("s.created_at >= ?")
        params.append(f.created_from)
    if f.created_before:
        clauses.append("s.created_at < ?")
        params.append(f.created_before)
    if f.reference:
        escaped = f.reference.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        clauses.append("s.reference LIKE ? ESCAPE '\\'")
        params.append(f"%{escaped}%")
    if f.reviewed is not None:
        clauses.append(f"s.reviewed_at IS {'NOT ' if f.reviewed else ''}NULL")
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)
