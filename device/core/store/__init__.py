"""The study store: SQLite plus content-addressed image files, built so that nothing acknowledged is lost.

Layout of the data dir::

    bedside.sqlite3 (+ -wal, -shm)   studies, results, audit log, settings
    images/ab/abcdef...              each image once, named by the sha256 of its bytes
    tmp/                             images being written; anything left here after a crash is junk

Order of writes for a study: the image file is written to tmp/, fsynced, renamed into images/ and
the directory fsynced; only then is the row committed (WAL, synchronous=FULL: the commit returns
after the log is on disk). A crash between the two leaves an orphan file (harmless, reported at
start); a row can never point to a file that was not durable first.

One module per kind of record: studies.py, images.py, dicom_records.py (what the DICOM node
keeps), audit_log.py (the audit log and settings), schema.py (the migrations), connection.py (the
one connection, shared behind a lock).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from device.core.store.audit_log import AUDIT_ACTIONS, AuditEntry, AuditLog
from device.core.store.connection import StoreError, configure
from device.core.store.dicom_records import DicomTables
from device.core.store.images import ImageFiles, StoredImage, clear_tmp, make_shards
from device.core.store.schema import MIGRATIONS, migrate
from device.core.store.studies import NewStudy, StudyFilter, StudyRecord, StudyTable

DB_NAME = "bedside.sqlite3"

__all__ = [
    "AUDIT_ACTIONS", "DB_NAME", "MIGRATIONS", "AuditEntry", "NewStudy", "Store", "StoreCheck", "StoreError",
    "StoredImage", "StudyFilter", "StudyRecord",
]


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


class Store(StudyTable, DicomTables, AuditLog, ImageFiles):
    """The whole store of one data dir: every table on one connection."""

    def __init__(self, data_dir: Path, db: sqlite3.Connection, check: StoreCheck):
        super().__init__(db)
        self.data_dir = data_dir
        self.images_dir = data_dir / "images"
        self.tmp_dir = data_dir / "tmp"
        self.check = check

    @classmethod
    def open(cls, data_dir: str | os.PathLike[str]) -> "Store":
        """Open (creating if needed), migrate, and check the store. Refuses a corrupt database."""
        data_dir = Path(data_dir)
        try:
            for d in (data_dir, data_dir / "images", data_dir / "tmp"):
                d.mkdir(parents=True, exist_ok=True)
            make_shards(data_dir / "images")
            clear_tmp(data_dir / "tmp")
            db = sqlite3.connect(data_dir / DB_NAME, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{data_dir}: cannot open the store: {exc}") from None
        try:
            configure(db)
            migrate(db)
            check = _check(db, data_dir / "images")
        except sqlite3.DatabaseError as exc:
            db.close()
            raise StoreError(f"{data_dir / DB_NAME}: database is not usable: {exc}") from None
        except StoreError:
            db.close()
            raise
        return cls(data_dir, db, check)


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
