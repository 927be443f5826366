"""How the appliance walks removable drives and configured folders: no links followed, hidden
entries skipped, at most ``max_depth`` levels down, folders in the order given and names sorted.
Shared by the images offered for import (device/core/media.py) and the bundle archives found on
drives (device/updates/drives.py), so both lists see the same files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def existing_folders(folders: list[Path]) -> list[Path]:
    return [f.resolve() for f in folders if f.is_dir()]


def files_under(folders: list[Path], max_depth: int) -> Iterator[tuple[Path, Path]]:
    """(configured folder, file path) for every file name the walk meets; the caller checks the file."""
    for folder in existing_folders(folders):
        root_depth = len(folder.parts)
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
            here = Path(dirpath)
            deeper = len(here.parts) - root_depth < max_depth
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if deeper else []
            for name in sorted(filenames):
                if not name.startswith("."):
                    yield folder, here / name
