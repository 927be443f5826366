"""Import requests that name a DICOMDIR: the DICOMDIR stands for the image files it lists."""

from __future__ import annotations

from pathlib import Path

from device.core import media
from device.core.errors import BadRequest, KioskError
from device.intake.dicomdir import DicomdirError, is_dicomdir, referenced_images


def expand_dicomdirs(paths: list[str], import_folders: list[Path]) -> list[str]:
    """``paths`` with each DICOMDIR replaced by its image files (each still checked to be inside
    an import folder when it is imported). A DICOMDIR that cannot be read fails the request."""
    out: list[str] = []
    for path in paths:
        try:
            resolved = media.resolve_import(path, import_folders)
        except KioskError:
            out.append(path)  # the import reports it, in its place
            continue
        if not is_dicomdir(resolved):
            out.append(path)
            continue
        try:
            out += [str(p) for p in referenced_images(resolved)]
        except DicomdirError as exc:
            raise BadRequest(str(exc)) from None
    return out
