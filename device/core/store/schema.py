"""The store's schema: versioned migrations, applied in order at start, each in its own transaction
and recorded in schema_migrations. Never edit a shipped migration; add the next one."""

from __future__ import annotations

import sqlite3

from device.core.store.connection import StoreError
from device.decision.triage import TRIAGE_ORDER
from device.machine.clock import utc_iso

# The audit actions migration 1 created the table with. Each migration spells out what it made: one
# that read the current list would give a new database a table no older one has.
FIRST_AUDIT_ACTIONS = (
    "study_created", "study_viewed", "study_reviewed", "study_exported", "history_exported", "settings_changed",
)


def audit_table(name: str, actions: tuple[str, ...]) -> str:
    """The audit log's table, taking ``actions`` only."""
    return f"""
        CREATE TABLE {name} (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            operator TEXT NOT NULL DEFAULT '',
            action TEXT NOT NULL CHECK (action IN {actions}),
            study_id INTEGER REFERENCES studies(id),
            detail TEXT NOT NULL DEFAULT '{{}}'
        );"""


AUDIT_TRIGGERS = """
        CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
        CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;"""


def audit_log_with(actions: tuple[str, ...]) -> str:
    """The audit log rebuilt with the CHECK of ``actions`` (SQLite cannot change a CHECK in place):
    copied whole into a new table, which takes the old one's name and then its append-only triggers
    again. Dropping a table fires no DELETE trigger, and drops the table's triggers."""
    return audit_table("audit_log_new", actions) + """
        INSERT INTO audit_log_new (id, at, operator, action, study_id, detail)
            SELECT id, at, operator, action, study_id, detail FROM audit_log ORDER BY id;
        DROP TABLE audit_log;
        ALTER TABLE audit_log_new RENAME TO audit_log;""" + AUDIT_TRIGGERS


# (version, SQL)
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
        {audit_table("audit_log", FIRST_AUDIT_ACTIONS)}{AUDIT_TRIGGERS}
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
    (
        5,
        # Exam routing (issue 21). A study run again as another exam points to the one it was run
        # from (rerun_of; nothing is deleted). A held instance remembers the exam its route named.
        # An instance no route gives an exam is kept, acknowledged and listed, not triaged
        # (dicom_untriaged: its image durable and in images, its header, and why).
        """
        ALTER TABLE studies ADD COLUMN rerun_of INTEGER REFERENCES studies(id);
        CREATE INDEX studies_by_rerun ON studies(rerun_of) WHERE rerun_of IS NOT NULL;
        ALTER TABLE dicom_held ADD COLUMN exam TEXT NOT NULL DEFAULT '';
        CREATE TABLE dicom_untriaged (
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
            body_part TEXT NOT NULL,
            view_position TEXT NOT NULL,
            calling_ae TEXT NOT NULL,
            received_at TEXT NOT NULL,
            reason TEXT NOT NULL
        );
        CREATE INDEX dicom_untriaged_by_time ON dicom_untriaged(received_at);
        """,
    ),
    # 6: a review can be undone and a reviewed study reopened (both audited).
    (6, audit_log_with(FIRST_AUDIT_ACTIONS + ("review_undone", "study_reopened"))),
)


def migrate(db: sqlite3.Connection) -> None:
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
            for statement in statements(sql):
                db.execute(statement)
            db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (version, utc_iso()))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def statements(script: str) -> list[str]:
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
