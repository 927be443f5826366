"""Model bundles through Mender, the fleet update service: a signed ``.bedside`` archive as a Mender
Artifact, and the states of the update module that installs it on the appliance.

The Artifact is written by Debian's ``mender-artifact`` (``write module-image``, payload type
``bedside-bundle``): the archive is its one file, the exam and version its meta-data, and it provides
``bedside-bundle.<exam>.version``, which the Mender server shows per device.

The update module (``systemd/mender/bedside-bundle``, installed into Mender's modules folder by
``systemd/install.sh``) hands every state to ``bedside bundle mender-module STATE DIR``, here:

    ArtifactInstall    the A/B install (signature, slot, self-test, switch, the live kiosk's health
                       check), left on trial; a failure undoes itself and fails the deployment
    ArtifactCommit     that slot committed
    ArtifactRollback   back to the committed slot (the live kiosk reloads it)
    SupportsRollback   Yes;  NeedsArtifactReboot   No (the kiosk reloads the exam in place)

Every other state has nothing to do. Mender runs modules as root while the kiosk runs as its own
user, so what an install writes is handed to the owner of the data dir.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from device.core.settings.updates import UpdateSettings
from device.updates import archive
from device.updates.errors import Refused, UpdateError
from device.updates.health import HealthCheck
from device.updates.install import InstallResult, commit, install, rollback, slots_of
from device.updates.slots import SLOTS_DIR
from device.updates.verify import limits_of

if TYPE_CHECKING:
    from device.core.settings import KioskConfig

log = logging.getLogger("bedside.updates")

PAYLOAD_TYPE = "bedside-bundle"
META_KEYS = ("exam", "version", "archive")
ANSWERS = {"SupportsRollback": "Yes", "NeedsArtifactReboot": "No"}  # the queries; other states print nothing
ACTION_STATES = ("ArtifactInstall", "ArtifactCommit", "ArtifactRollback")
HEALTH_STATES = ("ArtifactInstall", "ArtifactRollback")  # the states that change what the kiosk serves


@dataclass(frozen=True)
class Artifact:
    path: Path
    name: str
    exam: str
    version: str
    device_types: tuple[str, ...]

    def line(self) -> str:
        return (f"wrote Mender Artifact {self.name} ({PAYLOAD_TYPE}: {self.exam} {self.version}, for "
                f"{', '.join(self.device_types)}) to {self.path}")


def write_artifact(signed: Path, device_types: list[str], out: Path, name: str | None = None,
                   settings: UpdateSettings | None = None) -> Artifact:
    """A Mender Artifact holding the signed archive ``signed``; refused when the archive is unsigned
    or damaged (the appliance would refuse it after the download)."""
    contents = archive.inspect(Path(signed), limits_of(settings or UpdateSettings()))
    if contents.signature_bytes is None or contents.meta_name != "manifest.json":
        raise Refused(f"{Path(signed).name}: not a signed bundle archive: sign it first (bedside bundle sign)")
    if not device_types:
        raise UpdateError("name at least one device type (--device-type)")
    m = contents.manifest
    name = name or f"{m.id}-{m.version}"
    tool = shutil.which("mender-artifact")
    if tool is None:
        raise UpdateError("mender-artifact is not installed (Debian: apt install mender-artifact)")
    with tempfile.TemporaryDirectory(prefix="bedside-mender-") as tmp:
        meta = Path(tmp) / "meta-data.json"
        meta.write_text(json.dumps({"exam": m.id, "version": m.version, "archive": Path(signed).name}))
        args = [tool, "write", "module-image", "--type", PAYLOAD_TYPE, "--artifact-name", name,
                "--file", str(signed), "--output-path", str(out), "--meta-data", str(meta),
                "--software-filesystem", PAYLOAD_TYPE, "--software-name", m.id, "--software-version", m.version]
        for device_type in device_types:
            args += ["--device-type", device_type]
        done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        why = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise UpdateError(f"mender-artifact failed: {why[-1] if why else f'exit status {done.returncode}'}")
    return Artifact(Path(out), name, m.id, m.version, tuple(device_types))


@dataclass(frozen=True)
class Payload:
    """What Mender hands the module for one payload: the archive and the artifact's meta-data."""

    archive: Path
    exam: str
    version: str

    @classmethod
    def read(cls, tree: Path) -> "Payload":
        try:
            meta = json.loads((tree / "header" / "meta-data").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UpdateError(f"{tree}: no readable Bedside meta-data ({exc}): not an Artifact of bedside bundle mender")
        if not isinstance(meta, dict) or any(not isinstance(meta.get(k), str) for k in META_KEYS):
            raise UpdateError(f"{tree}: the meta-data lacks {', '.join(META_KEYS)}")
        found = tree / "files" / Path(meta["archive"]).name
        if not found.is_file():
            raise UpdateError(f"{tree}: the payload {found.name} is missing")
        return cls(found, meta["exam"], meta["version"])


def act(state: str, tree: Path | None, config: "KioskConfig", health: HealthCheck | None) -> str:
    """Run one of ACTION_STATES on the payload in ``tree``; prints nothing on stdout (returns "").
    Raises UpdateError: the module exits 1 and Mender fails (and rolls back) the deployment. Every
    other state is answered from ANSWERS (Download, Cleanup, ArtifactFailure and states added to
    the protocol later have nothing to do)."""
    if tree is None:
        raise UpdateError(f"{state} needs the payload's file tree")
    payload = Payload.read(Path(tree))
    try:
        result = _act(state, payload, config, health)
    finally:
        hand_over(config, payload.exam)
    log.info("%s: %s", state, result.line())
    return ""


def _act(state: str, payload: Payload, config: "KioskConfig", health: HealthCheck | None) -> InstallResult:
    if state == "ArtifactInstall":
        result = install(payload.archive, config, health, commit=False)
        if result.version != payload.version or result.exam_id != payload.exam:
            raise UpdateError(f"the archive holds {result.exam_id} {result.version}, the Artifact says "
                              f"{payload.exam} {payload.version}")
        return result
    if state == "ArtifactCommit":
        return commit(payload.exam, config, payload.version)
    state_of_exam = slots_of(config).read_state(payload.exam)
    if state_of_exam.trying is None:  # the install undid itself (or a restart did): nothing on trial
        return InstallResult(payload.exam, payload.version, "-", None, "nothing on trial to roll back")
    return rollback(payload.exam, config, health)


def hand_over(config: "KioskConfig", exam: str) -> None:
    """Run as root (Mender's modules are), give what was written for ``exam`` to the owner of the data
    dir, so that the kiosk's own user can replace it later."""
    if os.geteuid() != 0:
        return
    data_dir = Path(config.store.data_dir)
    owner = data_dir.stat()
    slots = slots_of(config)
    for top in (slots.root / exam, slots.root / SLOTS_DIR / exam):
        if not top.exists() and not top.is_symlink():
            continue
        os.chown(top, owner.st_uid, owner.st_gid, follow_symlinks=False)
        if top.is_dir() and not top.is_symlink():
            for folder, dirs, files in os.walk(top):
                for name in dirs + files:
                    os.chown(Path(folder) / name, owner.st_uid, owner.st_gid, follow_symlinks=False)
    for path in (slots.root, slots.root / SLOTS_DIR):
        if path.exists():
            os.chown(path, owner.st_uid, owner.st_gid)
