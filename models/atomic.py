"""Durable, atomic file writes: a reader sees the old file or the whole new one, never a torn one.

A power cut must not leave a half-written manifest beside good model files, a truncated engine
that the next boot would try to load, or an acknowledged study whose image is missing. Used by
every floor, so it lives on the ground floor."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_bytes(path: Path, data: bytes | memoryview, tmp_dir: Path | None = None, mode: int = 0o644) -> Path:
    """Write to a temporary file (beside ``path``, or in ``tmp_dir`` on the same file system), fsync
    it, rename it over ``path`` and fsync the directory."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir or path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # mkstemp makes it 0600; the service may run as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return path


def fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX: the directory entry lives in the directory)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
