"""``bundle verify``: everything about an archive that can be judged before anything is written."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from device.core.settings.updates import UpdateSettings
from device.updates import archive, signing
from device.updates.errors import Refused
from models.bundle import Manifest


def appliance_version() -> str:
    return metadata.version("bedside")


def limits_of(settings: UpdateSettings) -> archive.Limits:
    return archive.Limits(max_bytes=settings.max_archive_mb * 2**20, max_files=settings.max_files)


@dataclass(frozen=True)
class VerifiedArchive:
    """An archive whose structure, hashes, signature and appliance range were checked."""

    contents: archive.Contents
    signed: signing.Signed

    @property
    def path(self) -> Path:
        return self.contents.path

    @property
    def manifest(self) -> Manifest:
        return self.contents.manifest

    @property
    def exam_id(self) -> str:
        return self.manifest.id

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def key_id(self) -> str:
        return self.signed.key_id

    @property
    def allow_downgrade(self) -> bool:
        return self.signed.statement.allow_downgrade

    def as_json(self) -> dict:
        return {"path": str(self.path), "exam": self.exam_id, "version": self.version, "key_id": self.key_id,
                "allow_downgrade": self.allow_downgrade, "appliance": self.manifest.appliance,
                "bytes": self.contents.size, "files": len(self.manifest.files)}


def verify(path: Path, settings: UpdateSettings, trust_dir: Path | None = None) -> VerifiedArchive:
    """Check an archive; raises Refused with the first reason it cannot be installed here."""
    contents = archive.inspect(Path(path), limits_of(settings))
    if contents.meta_name != archive.MANIFEST_NAME:
        raise Refused(f"{Path(path).name} is an application release, not a model bundle; it is not installed here",
                      command="install it with `bedside app install`")
    signed = signing.check(contents, trust_dir or settings.trust_dir)
    here = appliance_version()
    if not contents.manifest.runs_on(here):
        raise Refused(f"{Path(path).name}: {contents.manifest.id} {contents.manifest.version} needs appliance "
                      f"version {contents.manifest.appliance}; this appliance is {here}")
    return VerifiedArchive(contents, signed)
