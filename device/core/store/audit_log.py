"""The audit log (append-only: who did what to which study, when) and the kiosk's own settings (the
default operator), each change of which is audited."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from device.core.store.connection import Connection, named
from device.machine.clock import utc_iso

# Every action the audit log takes. The table's CHECK lists them: a new one needs a migration that
# rebuilds the table with it (schema.audit_log_with); a test compares the two.
AUDIT_ACTIONS = (
    "study_created",
    "study_viewed",
    "study_reviewed",
    "study_exported",
    "history_exported",
    "settings_changed",
    "review_undone",  # a review taken back within seconds of the tap (undo)
    "study_reopened",  # a reviewed study put back on the worklist
)


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: str
    operator: str
    action: str
    study_id: int | None
    detail: dict


def record(db: sqlite3.Connection, action: str, operator: str, study_id: int | None, detail: dict) -> None:
    """Append one entry, inside the caller's transaction."""
    db.execute(
        "INSERT INTO audit_log (at, operator, action, study_id, detail) VALUES (?, ?, ?, ?, ?)",
        (utc_iso(), operator, action, study_id, json.dumps(detail)),
    )


class AuditLog(Connection):
    """The audit log and settings tables."""

    def audit(self, action: str, operator: str, study_id: int | None = None, detail: dict | None = None) -> None:
        with self._transaction() as db:
            record(db, action, operator, study_id, detail or {})

    def audit_log(self, limit: int = 100, study_id: int | None = None) -> list[AuditEntry]:
        """Newest first."""
        sql = "SELECT id, at, operator, action, study_id, detail FROM audit_log"
        params: tuple = ()
        if study_id is not None:
            sql, params = sql + " WHERE study_id = ?", (study_id,)
        with self._lock:
            rows = named(self._db, sql + " ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
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
            record(db, "settings_changed", operator, None, {"key": key, "old": old, "new": value})
