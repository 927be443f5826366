"""The image files: each image once, content-addressed (images/ab/abcdef..., named by the sha256 of
its bytes), written to tmp/ and fsynced, renamed into place and the directory fsynced before any
row may name it."""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import astuple, dataclass
from pathlib import Path

from device.core.store.connection import Connection
from device.machine.clock import utc_iso
from models import atomic
from models.atomic import fsync_directory



@dataclass(frozen=True, kw_only=True)
class StoredImage:
    """An image made durable under its sha256 (put_image), as its row in the images table lists it."""

    sha256: str
    bytes: int
    media_type: str
    source_format: str
    height: int
    width: int


class ImageFiles(Connection):
    """The images/ and tmp/ folders of the data dir, and the images table that lists them."""

    images_dir: Path
    tmp_dir: Path

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


def insert_image(db: sqlite3.Connection, image: StoredImage, at: str | None = None) -> None:
    """The image's row, once: a second study of the same bytes adds none. ``at``: when it was stored
    (default now)."""
    db.execute(
        "INSERT OR IGNORE INTO images (sha256, bytes, media_type, source_format, height, width, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (*astuple(image), at or utc_iso()),
    )


def make_shards(images_dir: Path) -> None:
    """All 256 shard directories (images/00 ... images/ff), made durable (the fsync of their parent)
    before any image is written: no writer depends on a shard directory another thread just made."""
    for i in range(256):
        (images_dir / f"{i:02x}").mkdir(exist_ok=True)
    fsync_directory(images_dir)


def clear_tmp(tmp_dir: Path) -> None:
    """Half-written images from before a crash: never referenced by a row, so safe to remove."""
    for leftover in tmp_dir.iterdir():
        if leftover.is_file():
            leftover.unlink()
