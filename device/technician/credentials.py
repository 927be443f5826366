"""The technician's password (argon2id, via argon2-cffi), the API tokens, and the technician audit
log: one small SQLite database of its own (``<data_dir>/technician.db``), apart from the study
store, so that safe mode can open it without the store and the models.

Only hashes are kept: the password as an argon2id hash, each API token as its SHA-256 (a token is
32 random bytes, so a fast hash cannot be guessed back). A token is shown once, when made.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from device.machine.clock import utc_iso

DB_NAME = "technician.db"
MIN_PASSWORD = 10
MAX_PASSWORD = 200
TOKEN_PREFIX = "bst_"
SCHEMA = """
CREATE TABLE IF NOT EXISTS password (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    hash TEXT NOT NULL,
    set_at TEXT NOT NULL,
    set_how TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    event TEXT NOT NULL,
    remote TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE TRIGGER IF NOT EXISTS technician_audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the technician audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS technician_audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the technician audit log is append-only'); END;
"""


class CredentialError(Exception):
    """A password or provisioning file that cannot be used; the message says what to do."""


@dataclass(frozen=True)
class ApiToken:
    id: int
    name: str
    created_at: str
    revoked_at: str | None


@dataclass(frozen=True)
class AuditEntry:
    at: str
    event: str
    remote: str
    detail: dict


def check_new_password(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise CredentialError(f"the password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long")


def hash_password(password: str) -> str:
    """An argon2id hash of a new password (for provisioning files: ``bedside technician hash-password``)."""
    check_new_password(password)
    return PasswordHasher().hash(password)


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Credentials:
    def __init__(self, db: sqlite3.Connection):
        self._db = db
        self._lock = threading.Lock()
        self._hasher = PasswordHasher()

    @classmethod
    def open(cls, data_dir: Path) -> "Credentials":
        data_dir.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(data_dir / DB_NAME, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=10000")
            db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            db.close()
            raise CredentialError(f"{data_dir / DB_NAME}: not usable ({exc}); move it aside to start afresh") from None
        return cls(db)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- the password ------------------------------------------------------------------------

    def has_password(self) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM password").fetchone() is not None

    def set_password(self, password: str, how: str, remote: str) -> None:
        self._store_hash(hash_password(password), how)
        self.audit("password_set", remote, {"how": how})

    def provision(self, path: Path) -> bool:
        """Take the password hash from a provisioning file, when none is set yet; True if it was."""
        if self.has_password() or not path.is_file():
            return False
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise CredentialError(f"{path}: cannot read the provisioning file: {exc}") from None
        unknown = set(data) - {"password_hash"}
        value = data.get("password_hash")
        if unknown or not isinstance(value, str) or not value.startswith("$argon2id$"):
            raise CredentialError(
                f"{path}: the provisioning file must hold only password_hash = \"$argon2id$...\" "
                "(make one with: bedside technician hash-password)"
            )
        self._store_hash(value, f"provisioned from {path}")
        self.audit("password_set", "provisioning", {"how": "provisioning file", "file": str(path)})
        return True

    def _store_hash(self, digest: str, how: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO password (id, hash, set_at, set_how) VALUES (1, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET hash = excluded.hash, set_at = excluded.set_at, set_how = excluded.set_how",
                (digest, utc_iso(), how),
            )

    def verify(self, password: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT hash FROM password").fetchone()
        if row is None or len(password) > MAX_PASSWORD:
            return False
        try:
            self._hasher.verify(row[0], password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        if self._hasher.check_needs_rehash(row[0]):
            self._store_hash(self._hasher.hash(password), "rehashed at login")
        return True

    # ---- API tokens --------------------------------------------------------------------------

    def add_token(self, name: str) -> str:
        """A new token, returned once; only its SHA-256 is kept."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            self._db.execute(
                "INSERT INTO api_tokens (name, sha256, created_at) VALUES (?, ?, ?)",
                (name, _token_digest(token), utc_iso()),
            )
        return token

    def token_valid(self, token: str) -> bool:
        if not token.startswith(TOKEN_PREFIX) or len(token) > 100:
            return False
        digest = _token_digest(token)
        with self._lock:
            rows = self._db.execute("SELECT sha256 FROM api_tokens WHERE revoked_at IS NULL").fetchall()
        return any(hmac.compare_digest(digest, known) for (known,) in rows)

    def revoke_token(self, token_id: int) -> bool:
        with self._lock:
            cursor = self._db.execute(
                "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (utc_iso(), token_id)
            )
        return cursor.rowcount == 1

    def tokens(self) -> list[ApiToken]:
        with self._lock:
            rows = self._db.execute("SELECT id, name, created_at, revoked_at FROM api_tokens ORDER BY id").fetchall()
        return [ApiToken(*row) for row in rows]

    # ---- the audit log -----------------------------------------------------------------------

    def audit(self, event: str, remote: str, detail: dict | None = None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO audit (at, event, remote, detail) VALUES (?, ?, ?, ?)",
                (utc_iso(), event, remote, json.dumps(detail or {}, sort_keys=True)),
            )

    def audit_log(self, limit: int = 100) -> list[AuditEntry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT at, event, remote, detail FROM audit ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [AuditEntry(at, event, remote, json.loads(detail)) for at, event, remote, detail in rows]
