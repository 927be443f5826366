"""What this site decided about its models and what the drift monitor saw, in one small SQLite file of
its own (``<data_dir>/site.sqlite3``, WAL, synchronous=FULL), apart from the study store: the
command line applies an acceptance while the kiosk runs, and `bedside infer` / `eval --data-dir`
read it without opening the store.

- ``site_points``: every acceptance applied and every revert, append-only (triggers refuse an
  update or delete). The site operating point of an exam is its latest row for the bundle served,
  when that row applied one; a row for another bundle's sha256 never carries over.
- ``monitor_events``: every change of an exam's drift state, append-only: the audit of the monitor.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from device.decision.operating_point import SITE, OperatingPoint
from device.machine.clock import utc_iso

DB_NAME = "site.sqlite3"
APPLIED, REVERTED = "applied", "reverted"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS site_points (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    exam TEXT NOT NULL,
    bundle_sha256 TEXT NOT NULL,
    bundle_version TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('{APPLIED}', '{REVERTED}')),
    by TEXT NOT NULL,
    via TEXT NOT NULL,
    threshold REAL,
    cases INTEGER,
    sensitivity REAL,
    specificity REAL,
    document TEXT
);
CREATE INDEX IF NOT EXISTS site_points_by_exam ON site_points(exam, id);
CREATE TRIGGER IF NOT EXISTS site_points_no_update BEFORE UPDATE ON site_points
BEGIN SELECT RAISE(ABORT, 'site_points is append-only'); END;
CREATE TRIGGER IF NOT EXISTS site_points_no_delete BEFORE DELETE ON site_points
BEGIN SELECT RAISE(ABORT, 'site_points is append-only'); END;
CREATE TABLE IF NOT EXISTS monitor_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    exam TEXT NOT NULL,
    bundle_sha256 TEXT NOT NULL,
    state TEXT NOT NULL,
    previous TEXT NOT NULL,
    kind TEXT,
    reference TEXT NOT NULL,
    reasons TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS monitor_events_by_exam ON monitor_events(exam, id);
CREATE TRIGGER IF NOT EXISTS monitor_events_no_update BEFORE UPDATE ON monitor_events
BEGIN SELECT RAISE(ABORT, 'monitor_events is append-only'); END;
CREATE TRIGGER IF NOT EXISTS monitor_events_no_delete BEFORE DELETE ON monitor_events
BEGIN SELECT RAISE(ABORT, 'monitor_events is append-only'); END;
"""
_POINT_COLUMNS = ("id, at, exam, bundle_sha256, bundle_version, action, by, via, threshold, cases, sensitivity, "
                  "specificity")


@dataclass(frozen=True)
class SitePointEvent:
    """One row of site_points: an acceptance applied (with its figures) or a revert."""

    id: int
    at: str
    exam: str
    bundle_sha256: str
    bundle_version: str
    action: str
    by: str
    via: str
    threshold: float | None
    cases: int | None
    sensitivity: float | None
    specificity: float | None

    @property
    def operating_point(self) -> OperatingPoint | None:
        if self.action != APPLIED:
            return None
        return OperatingPoint(source=SITE, threshold=self.threshold, bundle_sha256=self.bundle_sha256,
                              accepted_at=self.at, accepted_by=self.by, cases=self.cases,
                              sensitivity=self.sensitivity, specificity=self.specificity)

    def as_json(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class MonitorEvent:
    at: str
    exam: str
    bundle_sha256: str
    state: str
    previous: str
    kind: str | None
    reference: str
    reasons: list[str]

    def as_json(self) -> dict:
        return dict(self.__dict__)


class SiteRecord:
    """The site's record of one data dir. Thread-safe; ``generation`` changes whenever a row was
    added, by this process or another (the kiosk notices a command line's apply at its next study)."""

    def __init__(self, db: sqlite3.Connection, path: Path):
        self._db = db
        self._lock = threading.Lock()
        self.path = path
        self._written = 0

    @classmethod
    def open(cls, data_dir: Path) -> "SiteRecord":
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / DB_NAME
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=10000")
        db.executescript(SCHEMA)
        return cls(db, path)

    @classmethod
    def open_existing(cls, data_dir: Path) -> "SiteRecord | None":
        """The record where the data dir has one (read and written as usual), else None: reading
        commands create nothing in a data dir."""
        return cls.open(data_dir) if (data_dir / DB_NAME).is_file() else None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @property
    def generation(self) -> tuple[int, int]:
        with self._lock:
            return self._db.execute("PRAGMA data_version").fetchone()[0], self._written

    def _insert(self, table: str, row: dict) -> int:
        columns = ", ".join(row)
        with self._lock:
            cursor = self._db.execute(f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(row))})",
                                      tuple(row.values()))
            self._written += 1
            return cursor.lastrowid

    # ---- site operating points --------------------------------------------------------------

    def apply(self, exam: str, bundle_sha256: str, bundle_version: str, by: str, via: str, threshold: float,
              cases: int, sensitivity: float, specificity: float, document: dict) -> SitePointEvent:
        row_id = self._insert("site_points", {
            "at": utc_iso(), "exam": exam, "bundle_sha256": bundle_sha256, "bundle_version": bundle_version,
            "action": APPLIED, "by": by, "via": via, "threshold": threshold, "cases": cases,
            "sensitivity": sensitivity, "specificity": specificity, "document": json.dumps(document)})
        return self._event(row_id)

    def revert(self, exam: str, bundle_sha256: str, bundle_version: str, by: str, via: str) -> SitePointEvent:
        row_id = self._insert("site_points", {
            "at": utc_iso(), "exam": exam, "bundle_sha256": bundle_sha256, "bundle_version": bundle_version,
            "action": REVERTED, "by": by, "via": via})
        return self._event(row_id)

    def _event(self, row_id: int) -> SitePointEvent:
        with self._lock:
            row = self._db.execute(f"SELECT {_POINT_COLUMNS} FROM site_points WHERE id = ?", (row_id,)).fetchone()
        return SitePointEvent(*row)

    def current(self, exam: str, bundle_sha256: str) -> SitePointEvent | None:
        """The acceptance in force for this exam's bundle: its latest row, when it applied one."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_POINT_COLUMNS} FROM site_points WHERE exam = ? AND bundle_sha256 = ? ORDER BY id DESC LIMIT 1",
                (exam, bundle_sha256)).fetchone()
        event = None if row is None else SitePointEvent(*row)
        return event if event is not None and event.action == APPLIED else None

    def latest(self, exam: str) -> SitePointEvent | None:
        """The exam's latest row for any bundle (an acceptance for an earlier bundle means: accept again)."""
        with self._lock:
            row = self._db.execute(f"SELECT {_POINT_COLUMNS} FROM site_points WHERE exam = ? ORDER BY id DESC LIMIT 1",
                                   (exam,)).fetchone()
        return None if row is None else SitePointEvent(*row)

    def document(self, event_id: int) -> dict | None:
        """The acceptance document an applied row stored."""
        with self._lock:
            row = self._db.execute("SELECT document FROM site_points WHERE id = ?", (event_id,)).fetchone()
        return None if row is None or row[0] is None else json.loads(row[0])

    def history(self, exam: str | None = None, limit: int = 50) -> list[SitePointEvent]:
        """Newest first."""
        where, params = ("WHERE exam = ?", (exam,)) if exam else ("", ())
        with self._lock:
            rows = self._db.execute(f"SELECT {_POINT_COLUMNS} FROM site_points {where} ORDER BY id DESC LIMIT ?",
                                    (*params, limit)).fetchall()
        return [SitePointEvent(*r) for r in rows]

    # ---- the drift monitor's audit ----------------------------------------------------------

    def monitor_changed(self, exam: str, bundle_sha256: str, state: str, previous: str, kind: str | None,
                        reference: str, reasons: list[str]) -> None:
        self._insert("monitor_events", {
            "at": utc_iso(), "exam": exam, "bundle_sha256": bundle_sha256, "state": state, "previous": previous,
            "kind": kind, "reference": reference, "reasons": json.dumps(reasons)})

    def monitor_events(self, exam: str | None = None, limit: int = 50) -> list[MonitorEvent]:
        """Newest first."""
        where, params = ("WHERE exam = ?", (exam,)) if exam else ("", ())
        with self._lock:
            rows = self._db.execute(
                "SELECT at, exam, bundle_sha256, state, previous, kind, reference, reasons FROM monitor_events "
                f"{where} ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
        return [MonitorEvent(*r[:7], json.loads(r[7])) for r in rows]
