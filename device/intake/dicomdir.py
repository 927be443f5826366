"""A DICOMDIR on a USB drive or in a folder: the image files it lists, for import.

The DICOMDIR is input from outside like any file: each Referenced File ID component must be what
the standard allows (1-8 of A-Z, 0-9, _), so a record cannot point outside the DICOMDIR's folder
("..", an absolute path); the files it names are then imported one by one as loose files are.
"""

from __future__ import annotations

import re
from pathlib import Path

import pydicom

from device.intake.dicom import pydicom_warnings_recorded
from device.intake.errors import first_line

NAME = "DICOMDIR"
_COMPONENT = re.compile(r"^[A-Za-z0-9_]{1,8}$")  # PS3.10 8.2 (lower case: some writers, some file systems)
IMAGE_RECORD = "IMAGE"


class DicomdirError(Exception):
    """The DICOMDIR cannot be read, or one of its records names an impossible path."""


def is_dicomdir(path: Path) -> bool:
    return path.name.upper() == NAME


def referenced_images(dicomdir: Path) -> list[Path]:
    """The files of the DICOMDIR's IMAGE records, in record order, each inside its folder."""
    try:
        with pydicom_warnings_recorded():
            ds = pydicom.dcmread(dicomdir)
            records = list(ds.get("DirectoryRecordSequence", []))
            ids = [_file_id(r) for r in records if r.get("DirectoryRecordType") == IMAGE_RECORD]
    except Exception as exc:  # a hostile DICOMDIR: pydicom raises many kinds of errors
        raise DicomdirError(f"{dicomdir}: cannot read the DICOMDIR: {first_line(str(exc))}") from None
    return [dicomdir.parent.joinpath(*parts) for parts in ids if parts]


def _file_id(record: pydicom.Dataset) -> tuple[str, ...]:
    value = record.get("ReferencedFileID")
    if value is None:
        return ()
    parts = (value,) if isinstance(value, str) else tuple(value)
    bad = [p for p in parts if not _COMPONENT.match(str(p))]
    if bad:
        raise DicomdirError(f"a record names the file {'/'.join(map(str, parts))!r}, not a DICOM file ID")
    return tuple(map(str, parts))
