"""The study store: SQLite plus content-addressed image files, built so that nothing acknowledged is lost.

Layout of the data dir::

    bedside.sqlite3 (+ -wal, -shm)   studies, results, audit log, settings
    images/ab/abcdef...              each image once, named by the sha256 of its bytes
    tmp/                             images being written; anything left here after a crash is junk

Order of writes for a study: the image file is written to tmp/, fsynced, renamed into images/ and
the directory fsynced; only then is the row committed (WAL, synchronous=FULL: the commit returns
after the log is on disk). A crash between the two leaves an orphan file (harmless, reported at
start); a row can never point to a file that was not durable first.

One connection is shared by the request threads behind a lock: commits are serialized anyway, and
every statement here is short.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.core.study_result import StudyResult
from device.decision.triage import TRIAGE_ORDER, UNGRADABLE, ModelRef
from device.machine.clock import utc_iso
from models import atomic
from models.atomic import fsync_directory

DB_NAME = "bedside.sqlite3"
AUDIT_ACTIONS = (
    "study_created",
    "study_viewed",
    "study_reviewed",
    "study_exported",
    "history_exported",
    "settings_changed",
)

# Versioned migrations: (version, SQL). Applied in order, each in its own transaction, recorded in
# schema_migrations. Never edit a shipped migration; add the next one.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        f"""
        CREATE TABLE images (
            sha256 TEXT PRIMARY KEY CHECK (length(sha256) = 64),
            bytes INTEGER NOT NULL CHECK (bytes > 0),
            media_type TEXT NOT NULL,
            source_format TEXT NOT NULL,
            height INTEGER NOT NULL,
            width INTEGER NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE TABLE studies (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            created_at TEXT NOT NULL,
            exam TEXT NOT NULL,
            source TEXT NOT NULL,
            reference TEXT NOT NULL DEFAULT '',
            operator TEXT NOT NULL DEFAULT '',
            filename TEXT NOT NULL,
            image_sha256 TEXT NOT NULL REFERENCES images(sha256),
            triage TEXT NOT NULL CHECK (triage IN {TRIAGE_ORDER}),
            label TEXT NOT NULL,
            probability REAL NOT NULL,
            threshold REAL NOT NULL,
            model_id TEXT NOT NULL,
            model_version TEXT NOT NULL,
            model_sha256 TEXT NOT NULL,
            backend TEXT NOT NULL,
            precision TEXT NOT NULL,
            timings_json TEXT NOT NULL,
            result_json TEXT NOT NULL,
            cam BLOB,
            cam_height INTEGER,
            cam_width INTEGER,
            reviewed_at TEXT,
            reviewed_by TEXT,
            review_note TEXT
        );
        CREATE INDEX studies_by_time ON studies(created_at);
        CREATE INDEX studies_by_triage ON studies(triage, created_at);
        CREATE INDEX studies_by_reference ON studies(reference);
        CREATE TRIGGER studies_are_kept BEFORE DELETE ON studies
        BEGIN SELECT RAISE(ABORT, 'studies are never deleted'); END;
        CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            operator TEXT NOT NULL DEFAULT '',
            action TEXT NOT NULL CHECK (action IN {AUDIT_ACTIONS}),
            study_id INTEGER REFERENCES studies(id),
            detail TEXT NOT NULL DEFAULT '{{}}'
        );
        CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
        CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
        CREATE TABLE settings (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        """,
    ),
    # 2: the worklist's index, the index that finds an earlier study of the same image, and the
    # result documents of UNGRADABLE studies saved before their score moved to ungraded_model_output.
    (
        2,
        """
        CREATE INDEX studies_to_review ON studies(triage, id) WHERE reviewed_at IS NULL;
        CREATE INDEX studies_by_image ON studies(image_sha256);
        UPDATE studies SET result_json = json_set(result_json,
            '$.ungraded_model_output', json_object(
                'probabilities', json(json_extract(result_json, '$.probabilities')),
                'probability', json_extract(result_json, '$.probability'),
                'label', json_extract(result_json, '$.label')),
            '$.probabilities', json('null'), '$.probability', json('null'), '$.label', json('null'))
        WHERE triage = 'UNGRADABLE' AND json_type(result_json, '$.ungraded_model_output') IS NULL;
        """,
    ),
    (
        3,
        # DICOM instances received by C-STORE (device/dicom): one row per SOP Instance UID, so a
        # re-sent instance is stored once; and an append-only log of what the SCP did and why.
        """
        CREATE TABLE dicom_instances (
            sop_instance_uid TEXT PRIMARY KEY,
            study_id INTEGER NOT NULL REFERENCES studies(id),
            sop_class_uid TEXT NOT NULL,
            study_instance_uid TEXT NOT NULL,
            series_instance_uid TEXT NOT NULL,
            patient_name TEXT NOT NULL,
            patient_id TEXT NOT NULL,
            accession_number TEXT NOT NULL,
            study_date TEXT NOT NULL,
            modality TEXT NOT NULL,
            calling_ae TEXT NOT NULL,
            received_at TEXT NOT NULL
        );
        CREATE INDEX dicom_instances_by_study ON dicom_instances(study_id);
        CREATE TABLE dicom_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            event TEXT NOT NULL,
            calling_ae TEXT NOT NULL,
            peer TEXT NOT NULL,
            sop_instance_uid TEXT NOT NULL DEFAULT '',
            status INTEGER,
            detail TEXT NOT NULL DEFAULT ''
        );
        CREATE TRIGGER dicom_events_no_update BEFORE UPDATE ON dicom_events
        BEGIN SELECT RAISE(ABORT, 'dicom_events is append-only'); END;
        CREATE TRIGGER dicom_events_no_delete BEFORE DELETE ON dicom_events
        BEGIN SELECT RAISE(ABORT, 'dicom_events is append-only'); END;
        """,
    ),
    (
        4,
        # The series rule (device/dicom/series.py): every instance of a series is kept, one is
        # triaged. dicom_instances says which (triaged) and where a kept one's own image is
        # (image_sha256; NULL: the study's image). Instances of a series not yet complete wait in
        # dicom_held, their images durable (and in images, so that the start-up check knows them).
        """
        ALTER TABLE dicom_instances ADD COLUMN triaged INTEGER NOT NULL DEFAULT 1;
        ALTER TABLE dicom_instances ADD COLUMN image_sha256 TEXT REFERENCES images(sha256);
        ALTER TABLE dicom_instances ADD COLUMN view_position TEXT NOT NULL DEFAULT '';
        ALTER TABLE dicom_instances ADD COLUMN instance_number TEXT NOT NULL DEFAULT '';
        CREATE INDEX dicom_instances_by_series ON dicom_instances(study_instance_uid, series_instance_uid);
        CREATE TABLE dicom_held (
            sop_instance_uid TEXT PRIMARY KEY,
            image_sha256 TEXT NOT NULL REFERENCES images(sha256),
            filename TEXT NOT NULL,
            sop_class_uid TEXT NOT NULL,
            study_instance_uid TEXT NOT NULL,
            series_instance_uid TEXT NOT NULL,
            patient_name TEXT NOT NULL,
            patient_id TEXT NOT NULL,
            accession_number TEXT NOT NULL,
            study_date TEXT NOT NULL,
            modality TEXT NOT NULL,
            view_position TEXT NOT NULL,
            instance_number TEXT NOT NULL,
            calling_ae TEXT NOT NULL,
            received_at TEXT NOT NULL,
            arrived REAL NOT NULL,
            failed TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX dicom_held_by_series ON dicom_held(study_instance_uid, series_instance_uid);
        """,
    ),
)

DICOM_INSTANCE_COLUMNS = (
    "sop_instance_uid", "study_id", "sop_class_uid", "study_instance_uid", "series_instance_uid", "patient_name",
    "patient_id", "accession_number", "study_date", "modality", "calling_ae", "view_position", "instance_number",
)
DICOM_HELD_COLUMNS = (
    "sop_instance_uid", "image_sha256", "filename", "sop_class_uid", "study_instance_uid", "series_instance_uid",
    "patient_name", "patient_id", "accession_number", "study_date", "modality", "view_position", "instance_number",
    "calling_ae", "arrived",
)
DICOM_EVENT_COLUMNS = ("event", "calling_ae", "peer", "sop_instance_uid", "status", "detail")


class StoreError(Exception):
    """The store cannot be opened or used safely (corrupt database, unwritable data dir)."""


@dataclass(frozen=True)
class NewStudy:
    """Everything that is committed for one study, image bytes apart."""

    exam: str
    source: str
    reference: str
    operator: str
    filename: str
    media_type: str
    source_format: str
    height: int
    width: int
    result: StudyResult  # its triage result holds the heatmap (cam)


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


@dataclass(frozen=True)
class StudyFilter:
    triage: tuple[str, ...] = ()
    created_from: str | None = None  # inclusive, UTC ISO
    created_before: str | None = None  # exclusive, UTC ISO
    reference: str | None = None  # substring, case-insensitive
    reviewed: bool | None = None  # None: either


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: str
    operator: str
    action: str
    study_id: int | None
    detail: dict


@dataclass(frozen=True)
class StoreCheck:
    """What the start-up check found. Problems are rows whose file is missing or the wrong size."""

    studies: int
    images: int
    orphan_files: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


_STUDY_COLUMNS = """
    s.id, s.created_at, s.exam, s.source, s.reference, s.operator, s.filename, s.image_sha256,
    i.bytes AS image_bytes, i.media_type, i.source_format, i.height, i.width, s.triage, s.label, s.probability,
    s.threshold, s.model_id, s.model_version, s.model_sha256, s.backend, s.precision, s.result_json,
    s.cam, s.cam_height, s.cam_width, s.reviewed_at, s.reviewed_by, s.review_note
"""

# The same columns with the heatmap left out (cam is None), for reading many studies at once.
_STUDY_COLUMNS_NO_CAM = _STUDY_COLUMNS.replace(
    "s.cam, s.cam_height, s.cam_width", "NULL AS cam, NULL AS cam_height, NULL AS cam_width"
)
# StudyRecord fields that are a column of the same name
_PLAIN_FIELDS = (
    "id", "created_at", "exam", "source", "reference", "operator", "filename", "image_sha256", "image_bytes",
    "media_type", "source_format", "height", "width", "triage", "label", "probability", "threshold",
    "reviewed_at", "reviewed_by", "review_note",
)


def _named(db: sqlite3.Connection, sql: str, params: tuple = ()) -> sqlite3.Cursor:
    """Run ``sql`` on a cursor whose rows are read by column name, never by position."""
    cursor = db.cursor()
    cursor.row_factory = sqlite3.Row
    return cursor.execute(sql, params)


def _record(row: sqlite3.Row) -> StudyRecord:
    """A study as the kiosk shows it. An UNGRADABLE study offers no score, label or heatmap to
    anyone: the image failed the quality checks, and a number or a map on it reads as a finding.
    The raw output stays in its row and in its result document (``ungraded_model_output``)."""
    fields = {name: row[name] for name in _PLAIN_FIELDS}
    cam = None
    if row["triage"] == UNGRADABLE:
        fields.update(probability=None, label=None)
    elif row["cam"] is not None:
        cam = np.frombuffer(row["cam"], dtype="<f4").reshape(row["cam_height"], row["cam_width"])
    model = ModelRef(row["model_id"], row["model_version"], row["model_sha256"], row["precision"], row["backend"])
    return StudyRecord(**fields, model=model, result=json.loads(row["result_json"]), cam=cam)


class Store:
    def __init__(self, data_dir: Path, db: sqlite3.Connection, check: StoreCheck):
        self.data_dir = data_dir
        self.images_dir = data_dir / "images"
        self.tmp_dir = data_dir / "tmp"
        self.check = check
        self._db = db
        self._lock = threading.RLock()

    # ---- opening -----------------------------------------------------------------------------

    @classmethod
    def open(cls, data_dir: str | os.PathLike[str]) -> "Store":
        """Open (creating if needed), migrate, and check the store. Refuses a corrupt database."""
        data_dir = Path(data_dir)
        try:
            for d in (data_dir, data_dir / "images", data_dir / "tmp"):
                d.mkdir(parents=True, exist_ok=True)
            _make_shards(data_dir / "images")
            _clear_tmp(data_dir / "tmp")
            db = sqlite3.connect(data_dir / DB_NAME, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{data_dir}: cannot open the store: {exc}") from None
        try:
            _configure(db)
            _migrate(db)
            check = _check(db, data_dir / "images")
        except sqlite3.DatabaseError as exc:
            db.close()
            raise StoreError(f"{data_dir / DB_NAME}: database is not usable: {exc}") from None
        except StoreError:
            db.close()
            raise
        return cls(data_dir, db, check)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ---- images ------------------------------------------------------------------------------

    def image_path(self, sha256: str) -> Path:
        return self.images_dir / sha256[:2] / sha256

    def put_image(self, data: bytes) -> str:
        """Write the bytes durably under their sha256 (once) and return the digest."""
        sha = hashlib.sha256(data).hexdigest()
        final = self.image_path(sha)
        if not (final.is_file() and final.stat().st_size == len(data)):
            atomic.write_bytes(final, data, tmp_dir=self.tmp_dir)
        else:
            # Another thread may have renamed it a moment ago and not yet made the entry durable.
            fsync_directory(final.parent)
        return sha

    # ---- studies -----------------------------------------------------------------------------

    def add_study(self, image_sha256: str, image_bytes: int, study: NewStudy) -> StudyRecord:
        """Commit the study (its image must already be durable, see put_image) and audit it."""
        now = utc_iso()
        r, model = study.result.result, study.result.result.model
        cam = None if r.cam is None else np.ascontiguousarray(r.cam, dtype="<f4")
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO images (sha256, bytes, media_type, source_format, height, width, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (image_sha256, image_bytes, study.media_type, study.source_format, study.height, study.width, now),
            )
            cur = db.execute(
                "INSERT INTO studies (created_at, exam, source, reference, operator, filename, image_sha256,"
                " triage, label, probability, threshold, model_id, model_version, model_sha256, backend,"
                " precision, timings_json, result_json, cam, cam_height, cam_width)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    now, study.exam, study.source, study.reference, study.operator, study.filename, image_sha256,
                    r.triage, r.label, study.result.probability, r.threshold, model.id, model.version,
                    model.sha256, model.backend, model.precision, json.dumps(study.result.timings_ms),
                    json.dumps(study.result.as_json()), None if cam is None else cam.tobytes(),
                    None if cam is None else cam.shape[0], None if cam is None else cam.shape[1],
                ),
            )
            study_id = cur.lastrowid
            self._audit(db, "study_created", study.operator, study_id,
                        {"triage": r.triage, "exam": study.exam, "source": study.source})
            return self._get(db, study_id)

    def get(self, study_id: int) -> StudyRecord | None:
        with self._lock:
            return self._get(self._db, study_id)

    def _get(self, db: sqlite3.Connection, study_id: int) -> StudyRecord | None:
        row = _named(
            db, f"SELECT {_STUDY_COLUMNS} FROM studies s JOIN images i ON i.sha256 = s.image_sha256 WHERE s.id = ?",
            (study_id,),
        ).fetchone()
        return None if row is None else _record(row)

    def list(self, where: StudyFilter, limit: int, offset: int = 0) -> tuple[list[StudyRecord], int]:
        """Matching studies, newest first, and how many match in all."""
        clauses, params = _where(where)
        with self._lock:
            total = self._db.execute(f"SELECT count(*) FROM studies s {clauses}", params).fetchone()[0]
            rows = _named(
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
                rows = _named(
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
            rows = _named(
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

    def first_with_image(self, image_sha256: str) -> int | None:
        """The id of the first study of these exact image bytes."""
        with self._lock:
            row = self._db.execute("SELECT min(id) FROM studies WHERE image_sha256 = ?", (image_sha256,)).fetchone()
        return row[0]

    def review(self, study_id: int, operator: str, note: str) -> StudyRecord | None:
        """Record the review; the audit entry of a changed review holds the one it replaced."""
        with self._transaction() as db:
            before = db.execute(
                "SELECT reviewed_at, reviewed_by, review_note FROM studies WHERE id = ?", (study_id,)
            ).fetchone()
            if before is None:
                return None
            db.execute(
                "UPDATE studies SET reviewed_at = ?, reviewed_by = ?, review_note = ? WHERE id = ?",
                (utc_iso(), operator, note, study_id),
            )
            detail: dict = {"note": note}
            if before[0] is not None:
                detail["replaces"] = {"at": before[0], "by": before[1], "note": before[2]}
            self._audit(db, "study_reviewed", operator, study_id, detail)
            return self._get(db, study_id)

    # ---- DICOM instances and the SCP's log (device/dicom) ----------------------------------------

    def add_dicom_instance(self, row: dict, kept_image: dict | None = None) -> None:
        """Record which study a received instance became (``row`` holds DICOM_INSTANCE_COLUMNS). One
        kept beside the triaged instance of its series brings its own image (``kept_image``, as for
        hold_dicom_instance)."""
        with self._transaction() as db:
            if kept_image is not None:
                _insert_image(db, kept_image)
            _insert_instance(db, row, kept_image is None, kept_image and kept_image["sha256"], utc_iso())

    def dicom_instance(self, sop_instance_uid: str) -> dict | None:
        """The instance with this UID: stored with its study, or held (study_id None) until its
        series is complete."""
        with self._lock:
            row = _named(self._db, "SELECT * FROM dicom_instances WHERE sop_instance_uid = ?",
                         (sop_instance_uid,)).fetchone()
            if row is None:
                row = _named(self._db, "SELECT *, NULL AS study_id FROM dicom_held WHERE sop_instance_uid = ?",
                             (sop_instance_uid,)).fetchone()
        return None if row is None else dict(row)

    def dicom_instances(self, study_id: int) -> list[dict]:
        """Every instance of the study, the triaged one first, then as they arrived."""
        with self._lock:
            rows = _named(self._db, "SELECT * FROM dicom_instances WHERE study_id = ?"
                          " ORDER BY triaged DESC, received_at, rowid", (study_id,)).fetchall()
        return [dict(r) for r in rows]

    def dicom_headers(self, study_ids: list[int]) -> dict[int, dict]:
        """The triaged instance's row of each study among ``study_ids`` that came by DICOM."""
        if not study_ids:
            return {}
        marks = ", ".join("?" * len(study_ids))
        with self._lock:
            rows = _named(self._db, f"SELECT * FROM dicom_instances WHERE triaged = 1 AND study_id IN ({marks})",
                          tuple(study_ids)).fetchall()
        return {r["study_id"]: dict(r) for r in rows}

    # ---- instances held until their series is complete (device/dicom/series.py) --------------

    def hold_dicom_instance(self, image: dict, row: dict) -> None:
        """Keep a received instance whose series is not yet triaged: its image (already durable,
        see put_image; ``image`` holds sha256, bytes, media_type, source_format, height, width) and
        its header (``row`` holds DICOM_HELD_COLUMNS)."""
        with self._transaction() as db:
            _insert_image(db, image)
            db.execute(
                f"INSERT INTO dicom_held ({', '.join(DICOM_HELD_COLUMNS)}, received_at)"
                f" VALUES ({', '.join('?' * len(DICOM_HELD_COLUMNS))}, ?)",
                (*(row[c] for c in DICOM_HELD_COLUMNS), utc_iso()),
            )

    def held_series(self) -> list[tuple[str, str, float]]:
        """(study UID, series UID, when its newest instance arrived) of each series held with an
        instance that may still be triaged."""
        with self._lock:
            return self._db.execute(
                "SELECT study_instance_uid, series_instance_uid, max(arrived) FROM dicom_held"
                " GROUP BY study_instance_uid, series_instance_uid HAVING min(failed) = ''"
            ).fetchall()

    def held_instances(self, study_uid: str, series_uid: str) -> list[dict]:
        with self._lock:
            rows = _named(self._db, "SELECT * FROM dicom_held WHERE study_instance_uid = ? AND series_instance_uid = ?"
                          " ORDER BY arrived, rowid", (study_uid, series_uid)).fetchall()
        return [dict(r) for r in rows]

    def held_failed(self, sop_instance_uid: str, why: str) -> None:
        """The held instance could not be triaged (for good): the rule picks another of its series."""
        with self._transaction() as db:
            db.execute("UPDATE dicom_held SET failed = ? WHERE sop_instance_uid = ?", (why[:500] or "failed", sop_instance_uid))

    def series_study(self, study_uid: str, series_uid: str) -> int | None:
        """The study a series became (its triaged instance's), if it was triaged already."""
        with self._lock:
            row = self._db.execute(
                "SELECT study_id FROM dicom_instances WHERE study_instance_uid = ? AND series_instance_uid = ?"
                " AND triaged = 1 ORDER BY rowid LIMIT 1", (study_uid, series_uid)).fetchone()
        return None if row is None else row[0]

    def study_made_from(self, image_sha256: str, filename: str, source: str) -> int | None:
        """A study already made of this image, file name and source: after a crash between the
        study's commit and its series' settling, the series is settled onto it, not triaged again."""
        with self._lock:
            row = self._db.execute("SELECT min(id) FROM studies WHERE image_sha256 = ? AND filename = ? AND source = ?",
                                   (image_sha256, filename, source)).fetchone()
        return row[0]

    def settle_series(self, study_id: int, held: list[dict], triaged_uid: str | None) -> None:
        """Move a series' held instances to the study, in one transaction: ``triaged_uid`` is the
        one the study was made from (None: all of them are kept beside an earlier triaged one)."""
        now = utc_iso()
        with self._transaction() as db:
            for row in held:
                triaged = row["sop_instance_uid"] == triaged_uid
                _insert_instance(db, {**row, "study_id": study_id}, triaged, None if triaged else row["image_sha256"],
                                 row["received_at"] or now)
                db.execute("DELETE FROM dicom_held WHERE sop_instance_uid = ?", (row["sop_instance_uid"],))

    def dicom_event(self, **event: object) -> None:
        """Append to the SCP's log (``event`` holds DICOM_EVENT_COLUMNS)."""
        with self._transaction() as db:
            db.execute(
                f"INSERT INTO dicom_events (at, {', '.join(DICOM_EVENT_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (utc_iso(), *(event[c] for c in DICOM_EVENT_COLUMNS)),
            )

    def dicom_events(self, limit: int = 100) -> list[dict]:
        """Newest first."""
        with self._lock:
            rows = _named(self._db, "SELECT * FROM dicom_events ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(r) for r in rows]

    # ---- audit log and settings --------------------------------------------------------------

    def audit(self, action: str, operator: str, study_id: int | None = None, detail: dict | None = None) -> None:
        with self._transaction() as db:
            self._audit(db, action, operator, study_id, detail or {})

    @staticmethod
    def _audit(db: sqlite3.Connection, action: str, operator: str, study_id: int | None, detail: dict) -> None:
        db.execute(
            "INSERT INTO audit_log (at, operator, action, study_id, detail) VALUES (?, ?, ?, ?, ?)",
            (utc_iso(), operator, action, study_id, json.dumps(detail)),
        )

    def audit_log(self, limit: int = 100, study_id: int | None = None) -> list[AuditEntry]:
        """Newest first."""
        sql = "SELECT id, at, operator, action, study_id, detail FROM audit_log"
        params: tuple = ()
        if study_id is not None:
            sql, params = sql + " WHERE study_id = ?", (study_id,)
        with self._lock:
            rows = _named(self._db, sql + " ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
        return [AuditEntry(r["id"], r["at"], r["operator"], r["action"], r["study_id"], json.loads(r["detail"]))
                for r in rows]

    def settings(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT key, value FROM settings").fetchall())

    def change_setting(self, key: str, value: str, operator: str) -> None:
        with self._transaction() as db:
            row = db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
            old = None if row is None else row[0]
            if old == value:
                return
            db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, value))
            self._audit(db, "settings_changed", operator, None, {"key": key, "old": old, "new": value})


def _insert_image(db: sqlite3.Connection, image: dict) -> None:
    db.execute(
        "INSERT OR IGNORE INTO images (sha256, bytes, media_type, source_format, height, width, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (*(image[c] for c in ("sha256", "bytes", "media_type", "source_format", "height", "width")), utc_iso()),
    )


def _insert_instance(db: sqlite3.Connection, row: dict, triaged: bool, image_sha256: str | None, at: str) -> None:
    db.execute(
        f"INSERT INTO dicom_instances ({', '.join(DICOM_INSTANCE_COLUMNS)}, triaged, image_sha256, received_at)"
        f" VALUES ({', '.join('?' * len(DICOM_INSTANCE_COLUMNS))}, ?, ?, ?)",
        (*(row.get(c, "") for c in DICOM_INSTANCE_COLUMNS), int(triaged), image_sha256, at),
    )


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


def _configure(db: sqlite3.Connection) -> None:
    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise StoreError(f"the database cannot use write-ahead logging (journal_mode is {mode})")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    db.execute("PRAGMA busy_timeout=10000")


def _migrate(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
    applied = {v for (v,) in db.execute("SELECT version FROM schema_migrations")}
    known = {v for v, _ in MIGRATIONS}
    if applied - known:
        raise StoreError(
            f"the database has schema version {max(applied)}, newer than this build knows ({max(known)})"
        )
    for version, sql in MIGRATIONS:
        if version in applied:
            continue
        # executescript would commit on its own; run the statements inside one explicit transaction.
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(sql):
                db.execute(statement)
            db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (version, utc_iso()))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def _statements(script: str) -> list[str]:
    """Split a migration into statements; trigger bodies (BEGIN ... END;) stay whole."""
    out, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    if current.strip():
        out.append(current.strip())
    return out


def _check(db: sqlite3.Connection, images_dir: Path) -> StoreCheck:
    result = db.execute("PRAGMA integrity_check").fetchall()
    if result != [("ok",)]:
        raise StoreError("database integrity check failed: " + "; ".join(r[0] for r in result[:5]))
    violations = db.execute("PRAGMA foreign_key_check").fetchall()
    if violations:
        raise StoreError(f"database has {len(violations)} foreign key violations")
    problems = []
    known = set()
    for sha, size in db.execute("SELECT sha256, bytes FROM images"):
        known.add(sha)
        path = images_dir / sha[:2] / sha
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"image {sha[:12]} is missing")
            continue
        if actual != size:
            problems.append(f"image {sha[:12]} has {actual} bytes, expected {size}")
    orphans = sum(1 for p in images_dir.glob("*/*") if p.name not in known)
    studies = db.execute("SELECT count(*) FROM studies").fetchone()[0]
    return StoreCheck(studies=studies, images=len(known), orphan_files=orphans, problems=tuple(problems))


def _make_shards(images_dir: Path) -> None:
    """All 256 shard directories (images/00 ... images/ff), made durable (the fsync of their parent)
    before any image is written: no writer depends on a shard directory another thread just made."""
    for i in range(256):
        (images_dir / f"{i:02x}").mkdir(exist_ok=True)
    fsync_directory(images_dir)


def _clear_tmp(tmp_dir: Path) -> None:
    """Half-written images from before a crash: never referenced by a row, so safe to remove."""
    for leftover in tmp_dir.iterdir():
        if leftover.is_file():
            leftover.unlink()
