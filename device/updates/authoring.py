"""What the model team does on a workstation: pack a bundle folder into an archive, sign it."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from device.core.settings.updates import UpdateSettings
from device.updates import archive, signing
from device.updates.verify import limits_of


def pack_bundle(bundle_dir: Path, out: Path) -> archive.Contents:
    return archive.pack(Path(bundle_dir), Path(out))


def sign_archive(path: Path, key: Path, allow_downgrade: bool = False,
                 settings: UpdateSettings | None = None) -> signing.Statement:
    """Sign an archive in place (any earlier signature is replaced); its files are checked first."""
    path = Path(path)
    limits = limits_of(settings or UpdateSettings())
    contents = archive.inspect(path, limits)
    signature = signing.sign(contents, Path(key), allow_downgrade)
    with tempfile.TemporaryDirectory(prefix="bedside-sign-", dir=path.parent) as tmp:
        staged = Path(tmp) / "bundle"
        archive.extract(contents, staged, limits, lambda name: None)
        archive.write_archive(path, contents.manifest_bytes, contents.manifest, lambda name: staged / name, signature,
                              contents.meta_name)
    return signing.Statement.model_validate_json(json.loads(signature)["statement"])
