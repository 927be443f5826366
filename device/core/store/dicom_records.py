"""What the DICOM node keeps (device/dicom): each received instance and the study it became, the
instances held until their series is complete (device/dicom/series.py), those no exam triages (kept
and listed, device/dicom/routing.py), and the SCP's append-only log of what it did and why."""

from __future__ import annotations

import sqlite3

from device.core.store.connection import Connection, named
from device.core.store.images import StoredImage, insert_image
from device.machine.clock import utc_iso

DICOM_INSTANCE_COLUMNS = (
    "sop_instance_uid", "study_id", "sop_class_uid", "study_instance_uid", "series_instance_uid", "patient_name",
    "patient_id", "accession_number", "study_date", "modality", "calling_ae", "view_position", "instance_number",
)
DICOM_HELD_COLUMNS = (
    "sop_instance_uid", "image_sha256", "filename", "sop_class_uid", "study_instance_uid", "series_instance_uid",
    "patient_name", "patient_id", "accession_number", "study_date", "modality", "view_position", "instance_number",
    "calling_ae", "arrived", "exam",
)
DICOM_UNTRIAGED_COLUMNS = (
    "sop_instance_uid", "image_sha256", "filename", "sop_class_uid", "study_instance_uid", "series_instance_uid",
    "patient_name", "patient_id", "accession_number", "study_date", "modality", "body_part", "view_position",
    "calling_ae", "reason",
)
DICOM_EVENT_COLUMNS = ("event", "calling_ae", "peer", "sop_instance_uid", "status", "detail")


class DicomTables(Connection):
    """The dicom_instances, dicom_held, dicom_untriaged and dicom_events tables."""

    def add_dicom_instance(self, row: dict, kept_image: StoredImage | None = None) -> None:
        """Record which study a received instance became (``row`` holds DICOM_INSTANCE_COLUMNS). One
        kept beside the triaged instance of its series brings its own image (``kept_image``, as for
        hold_dicom_instance)."""
        with self._transaction() as db:
            if kept_image is not None:
                insert_image(db, kept_image)
            insert_instance(db, row, kept_image is None, kept_image and kept_image.sha256, utc_iso())

    def dicom_instance(self, sop_instance_uid: str) -> dict | None:
        """The instance with this UID: stored with its study, or (study_id None) held until its
        series is complete, or kept untriaged."""
        with self._lock:
            row = named(self._db, "SELECT * FROM dicom_instances WHERE sop_instance_uid = ?",
                         (sop_instance_uid,)).fetchone()
            for table in ("dicom_held", "dicom_untriaged"):
                if row is None:
                    row = named(self._db, f"SELECT *, NULL AS study_id FROM {table} WHERE sop_instance_uid = ?",
                                (sop_instance_uid,)).fetchone()
        return None if row is None else dict(row)

    def dicom_instances(self, study_id: int) -> list[dict]:
        """Every instance of the study, the triaged one first, then as they arrived."""
        with self._lock:
            rows = named(self._db, "SELECT * FROM dicom_instances WHERE study_id = ?"
                          " ORDER BY triaged DESC, received_at, rowid", (study_id,)).fetchall()
        return [dict(r) for r in rows]

    def dicom_headers(self, study_ids: list[int]) -> dict[int, dict]:
        """The triaged instance's row of each study among ``study_ids`` that came by DICOM."""
        if not study_ids:
            return {}
        marks = ", ".join("?" * len(study_ids))
        with self._lock:
            rows = named(self._db, f"SELECT * FROM dicom_instances WHERE triaged = 1 AND study_id IN ({marks})",
                          tuple(study_ids)).fetchall()
        return {r["study_id"]: dict(r) for r in rows}

    # ---- instances no exam triages (device/dicom/routing.py) ---------------------------------

    def keep_untriaged(self, image: StoredImage, row: dict) -> None:
        """Keep a received instance that no exam triages: its image (already durable, see put_image)
        and its header (``row`` holds DICOM_UNTRIAGED_COLUMNS)."""
        self._keep_instance("dicom_untriaged", DICOM_UNTRIAGED_COLUMNS, image, row)

    def _keep_instance(self, table: str, columns: tuple[str, ...], image: StoredImage, row: dict) -> None:
        """An instance's image row and its row in ``table`` (``columns`` from ``row``), received now."""
        with self._transaction() as db:
            insert_image(db, image)
            db.execute(
                f"INSERT INTO {table} ({', '.join(columns)}, received_at) VALUES ({', '.join('?' * len(columns))}, ?)",
                (*(row[c] for c in columns), utc_iso()),
            )

    def untriaged(self, limit: int, offset: int = 0) -> tuple[list[dict], int]:
        """The instances kept untriaged, newest first, and how many there are."""
        with self._lock:
            total = self._db.execute("SELECT count(*) FROM dicom_untriaged").fetchone()[0]
            rows = named(self._db, "SELECT * FROM dicom_untriaged ORDER BY received_at DESC, rowid DESC LIMIT ? OFFSET ?",
                         (limit, offset)).fetchall()
        return [dict(r) for r in rows], total

    # ---- instances held until their series is complete (device/dicom/series.py) --------------

    def hold_dicom_instance(self, image: StoredImage, row: dict) -> None:
        """Keep a received instance whose series is not yet triaged: its image (already durable,
        see put_image) and its header (``row`` holds DICOM_HELD_COLUMNS)."""
        self._keep_instance("dicom_held", DICOM_HELD_COLUMNS, image, row)

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
            rows = named(self._db, "SELECT * FROM dicom_held WHERE study_instance_uid = ? AND series_instance_uid = ?"
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
                insert_instance(db, {**row, "study_id": study_id}, triaged, None if triaged else row["image_sha256"],
                                 row["received_at"] or now)
                db.execute("DELETE FROM dicom_held WHERE sop_instance_uid = ?", (row["sop_instance_uid"],))

    def dicom_event(self, **event: object) -> None:
        """Append to the SCP's log (``event`` holds DICOM_EVENT_COLUMNS)."""
        with self._transaction() as db:
            db.execute(
                f"INSERT INTO dicom_events (at, {', '.join(DICOM_EVENT_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (utc_iso(), *(event[c] for c in DICOM_EVENT_COLUMNS)),
            )

    def dicom_events(self, limit: int = 100, kinds: tuple[str, ...] = ()) -> list[dict]:
        """Newest first; ``kinds``: only these events (e.g. the refusals), else every one."""
        where = f"WHERE event IN ({', '.join('?' * len(kinds))}) " if kinds else ""
        with self._lock:
            rows = named(self._db, f"SELECT * FROM dicom_events {where}ORDER BY id DESC LIMIT ?",
                         (*kinds, limit)).fetchall()
        return [dict(r) for r in rows]


def insert_instance(db: sqlite3.Connection, row: dict, triaged: bool, image_sha256: str | None, at: str) -> None:
    db.execute(
        f"INSERT INTO dicom_instances ({', '.join(DICOM_INSTANCE_COLUMNS)}, triaged, image_sha256, received_at)"
        f" VALUES ({', '.join('?' * len(DICOM_INSTANCE_COLUMNS))}, ?, ?, ?)",
        (*(row.get(c, "") for c in DICOM_INSTANCE_COLUMNS), int(triaged), image_sha256, at),
    )
