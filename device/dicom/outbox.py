"""The persistent outbox: every DICOM object to send, one row per (destination, SOP Instance UID),
in its own SQLite file beside the store's (WAL, synchronous=FULL) with the object's file in
outbox/ (fsynced before its row is committed).

States: queued (waiting, maybe after failed attempts) -> sending -> sent, or failed (the peer
answered with a failure status: resending the same object will not help). A result that could not
be built at all is a failed item too (UNBUILT, no file), one per study and destination, so that
nothing is lost without a trace: the technician sees it beside the others and retries it, which
builds the result again (device/dicom/node.py). A failed item retried goes back to queued. A row left in
'sending' by a crash goes back to queued at start: the peer may have stored it already, and a PACS
keeps one instance per SOP Instance UID, so the resend is harmless; a row marked sent is never
sent again.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from device.machine.clock import utc_iso
from models import atomic

DB_NAME = "outbox.sqlite3"
_NOT_NAME = re.compile(r"[^0-9A-Za-z.-]")  # a file name from a UID or a UUID
STATES = ("queued", "sending", "sent", "failed")
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_id INTEGER NOT NULL,
    destination TEXT NOT NULL,
    sop_class TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    file TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN {STATES}),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    next_attempt REAL NOT NULL,
    created_at TEXT NOT NULL,
    sent_at TEXT,
    UNIQUE (destination, sop_instance_uid)
)"""
ITEM_COLUMNS = ("id", "study_id", "destination", "sop_class", "sop_instance_uid", "state", "attempts", "last_error")
UNBUILT = "Result (not built)"  # the sop_class of the failed item that stands for a result not built


@dataclass(frozen=True)
class Item:
    id: int
    study_id: int
    destination: str
    sop_class: str
    sop_instance_uid: str
    file: Path
    attempts: int


class Outbox:
    def __init__(self, data_dir: Path):
        self.folder = data_dir / "outbox"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(data_dir / DB_NAME, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(SCHEMA)
        self.requeue_sending()

    def requeue_sending(self) -> None:
        """Rows left 'sending' (a crash, an error in the sender) go back to queued."""
        with self._lock:
            self._db.execute("UPDATE outbox SET state = 'queued' WHERE state = 'sending'")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, study_id: int, destination: str, sop_class: str, sop_instance_uid: str, data: bytes,
            suffix: str = ".dcm") -> None:
        """Queue one encoded object (a DICOM file; a FHIR Bundle, whose id is a UUID, with suffix
        ".json") for ``destination``; durable when this returns."""
        name = f"{destination}-{_NOT_NAME.sub('', sop_instance_uid)[:64] or 'object'}{suffix}"
        atomic.write_bytes(self.folder / name, data)
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO outbox (study_id, destination, sop_class, sop_instance_uid, file, state,"
                " next_attempt, created_at) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
                (study_id, destination, sop_class, sop_instance_uid, name, time.time(), utc_iso()),
            )

    def add_unbuilt(self, study_id: int, destination: str, reason: str) -> None:
        """The study's result for ``destination`` could not be built: a failed item saying why (one per
        study and destination; a later failure updates its reason)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO outbox (study_id, destination, sop_class, sop_instance_uid, file, state, attempts,"
                " last_error, next_attempt, created_at) VALUES (?, ?, ?, ?, '', 'failed', 1, ?, 0, ?)"
                " ON CONFLICT (destination, sop_instance_uid) DO UPDATE SET attempts = attempts + 1,"
                " last_error = excluded.last_error",
                (study_id, destination, UNBUILT, f"unbuilt-{study_id}", reason[:500], utc_iso()),
            )

    def drop_unbuilt(self, study_id: int) -> None:
        """The study's result was built after all: its stand-in failed items go (its objects are queued)."""
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE study_id = ? AND sop_class = ?", (study_id, UNBUILT))

    def item(self, item_id: int) -> dict | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(ITEM_COLUMNS)} FROM outbox WHERE id = ?", (item_id,)).fetchone()
        return None if row is None else dict(zip(ITEM_COLUMNS, row))

    def requeue(self, item_id: int) -> bool:
        """Send a failed item again (not a result that was never built: that is built again instead)."""
        with self._lock:
            cur = self._db.execute("UPDATE outbox SET state = 'queued', next_attempt = ? WHERE id = ?"
                                   " AND state = 'failed' AND sop_class != ?", (time.time(), item_id, UNBUILT))
        return cur.rowcount == 1

    def due(self, now: float) -> list[Item]:
        """Queued items whose time has come, marked sending, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, study_id, destination, sop_class, sop_instance_uid, file, attempts FROM outbox"
                " WHERE state = 'queued' AND next_attempt <= ? ORDER BY id", (now,)
            ).fetchall()
            self._db.executemany("UPDATE outbox SET state = 'sending' WHERE id = ?", [(r[0],) for r in rows])
        return [Item(*r[:5], self.folder / r[5], r[6]) for r in rows]

    def next_due(self) -> float | None:
        with self._lock:
            (when,) = self._db.execute("SELECT min(next_attempt) FROM outbox WHERE state = 'queued'").fetchone()
        return when

    def sent(self, item: Item) -> None:
        self._set(item, "sent", "", 0.0, sent_at=utc_iso())

    def failed(self, item: Item, error: str) -> None:
        """The peer refused it for good."""
        self._set(item, "failed", error, 0.0)

    def retry(self, item: Item, error: str, after_s: float) -> None:
        self._set(item, "queued", error, time.time() + after_s)

    def _set(self, item: Item, state: str, error: str, next_attempt: float, sent_at: str | None = None) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE outbox SET state = ?, attempts = attempts + 1, last_error = ?, next_attempt = ?,"
                " sent_at = ? WHERE id = ?", (state, error[:500], next_attempt, sent_at, item.id),
            )

    def items_of(self, study_ids: list[int]) -> list[dict]:
        """Every item of these studies, oldest first (the pages show each study's send state)."""
        if not study_ids:
            return []
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(ITEM_COLUMNS)} FROM outbox WHERE study_id IN ({', '.join('?' * len(study_ids))})"
                " ORDER BY id", tuple(study_ids),
            ).fetchall()
        return [dict(zip(ITEM_COLUMNS, r)) for r in rows]

    def counts(self) -> list[dict]:
        """How many items each destination has in each state (the metrics' outbox gauge)."""
        with self._lock:
            rows = self._db.execute("SELECT destination, state, count(*) FROM outbox GROUP BY destination, state").fetchall()
        return [{"destination": d, "state": s, "count": n} for d, s, n in rows]

    def backlog(self) -> list[dict]:
        """Per destination, for the technician: how many items wait (queued or being sent), were
        refused for good (failed) and were sent; when the oldest waiting one was queued, and the
        newest error of one not sent (a peer that is down: 'Connection refused')."""
        with self._lock:
            rows = self._db.execute(
                "SELECT destination, sum(state IN ('queued', 'sending')), sum(state = 'failed'), sum(state = 'sent'),"
                " min(CASE WHEN state IN ('queued', 'sending') THEN created_at END),"
                " (SELECT last_error FROM outbox e WHERE e.destination = o.destination AND e.state != 'sent'"
                "  AND e.last_error != '' ORDER BY e.id DESC LIMIT 1)"
                " FROM outbox o GROUP BY destination ORDER BY destination"
            ).fetchall()
        keys = ("destination", "waiting", "failed", "sent", "oldest_waiting_since", "last_error")
        return [dict(zip(keys, row)) for row in rows]

    def items(self, limit: int = 500) -> list[dict]:
        """Newest first, as GET /api/v1/outbox lists them."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(ITEM_COLUMNS)} FROM outbox ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [dict(zip(ITEM_COLUMNS, r)) for r in rows]
