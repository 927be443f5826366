"""Bundle archives on removable drives: the same folders the kiosk imports images from
(``[media] import_folders``), walked the same way (no links followed, hidden entries skipped)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from device.machine.drive_walk import files_under
from device.updates.archive import SUFFIX


@dataclass(frozen=True)
class DriveArchive:
    path: Path
    bytes: int

    def as_json(self) -> dict:
        return {"path": str(self.path), "name": self.path.name, "bytes": self.bytes}


def find_archives(folders: list[Path], max_depth: int = 4, max_found: int = 100) -> list[DriveArchive]:
    """``*.bedside`` regular files under the folders, sorted by path."""
    found: list[DriveArchive] = []
    for _, path in files_under(folders, max_depth):
        if not path.name.endswith(SUFFIX):
            continue
        try:
            info = os.lstat(path)
        except OSError:  # the drive was pulled out
            continue
        if stat.S_ISREG(info.st_mode):
            found.append(DriveArchive(path, info.st_size))
        if len(found) >= max_found:
            break
    return found
