"""The free-space reserve of the data dir: new studies stop before the disk is full, so that reading
studies and writing the audit log (which every view does) keep working on a nearly full disk."""

from __future__ import annotations

import errno
import shutil
import sqlite3
from pathlib import Path

from device.core.errors import KioskError

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
STORAGE_FULL = "Storage full - export and remove old studies"


class StorageFull(KioskError):
    status = 507
    code = "storage_full"


def is_disk_full(exc: BaseException) -> bool:
    """An OSError or SQLite error that says the disk (or the quota) is full."""
    if isinstance(exc, OSError):
        return exc.errno in FULL_ERRNOS
    return isinstance(exc, sqlite3.OperationalError) and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


class Reserve:
    def __init__(self, data_dir: Path, reserve_mb: int):
        self.data_dir = data_dir
        self.reserve_bytes = reserve_mb * 2**20

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.data_dir).free

    def require(self, more_bytes: int = 0) -> None:
        """StorageFull unless `more_bytes` can be stored with the reserve still free."""
        free = self.free_bytes()
        if free - more_bytes < self.reserve_bytes:
            raise StorageFull(
                f"{STORAGE_FULL}. {free / 2**20:.0f} MiB are free in {self.data_dir} and the kiosk keeps "
                f"{self.reserve_bytes / 2**20:.0f} MiB for its records (store.reserve_mb)."
            )

    def status(self) -> dict:
        free = self.free_bytes()
        return {"free_bytes": free, "reserve_bytes": self.reserve_bytes, "ok": free >= self.reserve_bytes}
