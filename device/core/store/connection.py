"""The store's one SQLite connection, shared by the request threads behind a lock (commits are
serialized anyway, and every statement here is short), and how it is configured: write-ahead
logging with synchronous=FULL, so a commit returns after the log is on disk."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class StoreError(Exception):
    """The store cannot be opened or used safely (corrupt database, unwritable data dir)."""


class Connection:
    """What every table of the store stands on: the connection, its lock, and transactions."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db
        self._lock = threading.RLock()

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


def named(db: sqlite3.Connection, sql: str, params: tuple = ()) -> sqlite3.Cursor:
    """Run ``sql`` on a cursor whose rows are read by column name, never by position."""
    cursor = db.cursor()
    cursor.row_factory = sqlite3.Row
    return cursor.execute(sql, params)


def configure(db: sqlite3.Connection) -> None:
    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise StoreError(f"the database cannot use write-ahead logging (journal_mode is {mode})")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    db.execute("PRAGMA busy_timeout=10000")
