"""An application release: a signed set of wheels (the ``bedside`` wheel and every dependency) that
``bedside app install`` installs into a new virtual environment with pip, offline. Its
``release.json`` takes the place a bundle's ``manifest.json`` has in the same archive format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from models.bundle import FileEntry, _Strict, describe_validation_error, file_entry

RELEASE_NAME = "release.json"
APP_ID = "bedside-app"


class Release(_Strict):
    schema_version: Literal[1] = 1
    id: Literal["bedside-app"] = APP_ID
    version: str = Field(pattern=r"^\d+\.\d+\.\d+$", description="the bedside version the set installs")
    files: dict[str, FileEntry] = Field(min_length=1, description="every wheel, by file name")

    @model_validator(mode="after")
    def _wheels(self) -> "Release":
        for name in self.files:
            if "/" in name or not name.endswith(".whl"):
                raise ValueError(f"file {name!r} is not a wheel file name")
        if not any(name.startswith(f"bedside-{self.version}-") for name in self.files):
            raise ValueError(f"no bedside-{self.version} wheel in files")
        return self


def parse_release(data: bytes, where: str) -> Release:
    try:
        return Release.model_validate_json(data)
    except ValidationError as exc:
        raise ValueError(f"{where}: invalid {RELEASE_NAME}: {describe_validation_error(exc)}") from None


def release_for(wheel_dir: Path, version: str) -> bytes:
    """The release.json text for every wheel in a folder (``pip wheel -w DIR``)."""
    wheels = sorted(Path(wheel_dir).glob("*.whl"))
    release = Release(version=version, files={w.name: file_entry(w) for w in wheels})
    return (json.dumps(release.model_dump(mode="json"), indent=2) + "\n").encode("utf-8")
