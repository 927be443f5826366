"""Removable drives and configured folders: images to import, and places to export to.

Paths that come from a request are only accepted inside the configured folders (after resolving
links), so the kiosk never reads or writes anywhere else on the machine.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from device.core.errors import BadRequest
from device.intake import headers
from device.machine.drive_walk import existing_folders, files_under

_SNIFF_BYTES = 132
_FORMAT_NAMES = {"jpeg": "JPEG", "png": "PNG", "tiff": "TIFF", "dicom": "DICOM", "dicom-raw": "DICOM"}


@dataclass(frozen=True)
class Importable:
    path: Path
    folder: Path
    format: str
    bytes: int

    @property
    def relative(self) -> str:
        return str(self.path.relative_to(self.folder))

    def as_json(self) -> dict:
        return {"path": str(self.path), "folder": str(self.folder), "name": self.relative,
                "format": self.format, "bytes": self.bytes}


def sniff_file(path: Path) -> str | None:
    """'JPEG', 'DICOM'... from the first bytes (DICOM files often have no extension), or None.

    Only regular files, not followed through links: opening a FIFO would block for ever, and a link
    could point anywhere on the machine."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError:  # removed or unreadable since listed (a drive pulled out)
        return None
    return _FORMAT_NAMES.get(headers.sniff(head) or "")


def find_importable(folders: list[Path], max_files: int, max_depth: int) -> list[Importable]:
    """Images and DICOM files under the folders (hidden entries skipped), sorted by folder and name."""
    found: list[Importable] = []
    for folder, path in files_under(folders, max_depth):
        fmt = sniff_file(path)
        if fmt is None:
            continue
        try:
            size = path.stat().st_size
        except OSError:  # removed or unreadable since listed (a drive pulled out)
            continue
        found.append(Importable(path, folder, fmt, size))
        if len(found) >= max_files:
            break
    return found


def resolve_import(path: str, folders: list[Path]) -> Path:
    """The file, if it lies inside one of the import folders; BadRequest otherwise."""
    resolved = _resolve(path)
    if not any(resolved.is_relative_to(f) for f in existing_folders(folders)):
        raise BadRequest(f"{path} is not inside an import folder ({', '.join(map(str, folders))})")
    try:
        regular = resolved.is_file()
    except OSError as exc:  # a name too long for the file system
        raise BadRequest(f"{path}: not a usable file name: {exc.strerror}") from None
    if not regular:
        raise BadRequest(f"{path}: no such file")
    return resolved


def export_targets(folders: list[Path], default: Path) -> list[Path]:
    """Where exports may go: <data_dir>/exports, each writable configured folder, and the writable
    mount points (USB drives) up to two levels below them (/media/<user>/<drive>)."""
    targets = [default]
    for folder in existing_folders(folders):
        candidates = [folder]
        for child in _subdirs(folder):
            candidates += [child, *_subdirs(child)]
        for c in candidates:
            if (c == folder or os.path.ismount(c)) and os.access(c, os.W_OK) and c not in targets:
                targets.append(c)
    return targets


INTERNAL_LABEL = "This kiosk (internal storage)"


def target_label(target: Path, internal: Path) -> str:
    """What a person calls an export target: the drive's label (the desktop mounts a drive under
    /media/<user>/<label>, so its folder's name), or the kiosk's own storage."""
    return INTERNAL_LABEL if target == internal else target.name or str(target)


def resolve_export(path: str, targets: list[Path]) -> Path:
    resolved = _resolve(path)
    if not any(resolved == t.resolve() or resolved.is_relative_to(t.resolve()) for t in targets):
        raise BadRequest(f"{path} is not an export destination; choose one of: {', '.join(map(str, targets))}")
    return resolved


def _resolve(path: str) -> Path:
    try:
        return Path(path).resolve()
    except ValueError as exc:  # a NUL character
        raise BadRequest(f"{path!r} is not a usable path: {exc}") from None
    except RuntimeError:  # pathlib's "Symlink loop"
        raise BadRequest(f"{path!r} is not a usable path: its links form a loop") from None
    except OSError as exc:  # a name too long, a component that cannot be read
        raise BadRequest(f"{path!r} is not a usable path: {exc.strerror or exc}") from None


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
