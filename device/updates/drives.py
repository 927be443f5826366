"""Bundle archives on removable drives: the same folders the kiosk imports images from
(``[media] import_folders``), walked the same way (no links followed, hidden entries skipped)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

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
    for folder in (f.resolve() for f in folders if f.is_dir()):
        root_depth = len(folder.parts)
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
            here = Path(dirpath)
            deeper = len(here.parts) - root_depth < max_depth
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if deeper else []
            for name in sorted(filenames):
                if name.startswith(".") or not name.endswith(SUFFIX):
                    continue
                try:
                    info = os.lstat(here / name)
                except OSError:  # the drive was pulled out
                    continue
                if stat.S_ISREG(info.st_mode):
                    found.append(DriveArchive(here / name, info.st_size))
                if len(found) >= max_found:
                    return found
    return found
