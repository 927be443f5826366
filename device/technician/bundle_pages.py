"""The technician's bundles page (/technician/bundles), on the device.updates API: what each exam
serves and its A/B slots; install a signed archive from an upload or from a USB drive; activate
the other slot; roll back; self-test the active bundle.

In a running kiosk an install is health-checked in this process (``updates.InProcess``: the kiosk
loads the new bundle and must pass self-test requests before the install is committed, else it is
rolled back). In safe mode there are no models: an install commits after its self-test, and the
kiosk serves it at its next start. Every action is audited in the technician log.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from flask import Blueprint, request

from device import updates
from device.core.errors import BadRequest
from device.technician.area import area
from device.technician.views import remote, running_appliance, show

bundles = Blueprint("bundles", __name__, url_prefix="/bundles")
ERROR_STATUS = {updates.Refused: 422, updates.NotInstalled: 404, updates.Busy: 409,
                updates.SelfTestFailed: 409, updates.HealthCheckFailed: 409}
UPLOADS = "update-uploads"


def _health() -> updates.HealthCheck | None:
    k = running_appliance()
    return None if k is None else updates.InProcess(k, area().config.updates.health_requests)


def _drive_archives() -> list[updates.DriveArchive]:
    media = area().config.media
    return updates.find_archives(media.import_folders, media.max_depth)


def _listing(status_code: int = 200, **result):
    config = area().config
    return show("bundles.html", status_code, exams=updates.list_installed(config), drives=_drive_archives(),
                live=running_appliance() is not None, **result)


class _Steps:
    """The install's steps as they ran, for the result on the page (the files extracted as one line)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._extract_line: int | None = None
        self._files = 0

    def __call__(self, step: str, detail: str) -> None:
        if step == "extract":
            self._files += 1
            if self._extract_line is None:
                self._extract_line = len(self.lines)
                self.lines.append("")
            self.lines[self._extract_line] = f"extract {self._files} file{'s' if self._files > 1 else ''}"
            return
        self.lines.append(f"{step} {detail}".strip())


def _run(action: str, detail: dict, call):
    """Run one update action; its one-line outcome (or refusal) on the page and in the audit log."""
    steps = _Steps()
    a = area()
    try:
        result = call(steps)
    except updates.UpdateError as exc:
        a.credentials.audit(f"bundle_{action}_failed", remote(), {**detail, "reason": str(exc)})
        return _listing(ERROR_STATUS.get(type(exc), 409), error=str(exc), steps=steps.lines)
    line = result if isinstance(result, str) else result.line()
    a.credentials.audit(f"bundle_{action}", remote(), {**detail, "result": line})
    return _listing(message=line, steps=steps.lines)


@bundles.get("")
def page():
    return _listing()


def _install(path: Path, detail: dict):
    config = area().config
    return _run("install", detail, lambda steps: updates.install(path, config, _health(), steps))


@bundles.post("/upload")
def install_upload():
    upload = request.files.get("archive")
    if upload is None or not upload.filename:
        raise BadRequest("choose a .bedside archive to upload first")
    config = area().config
    folder = config.store.data_dir / UPLOADS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{secrets.token_hex(8)}.bedside"
    try:
        upload.save(path)
        return _install(path, {"archive": upload.filename[:200], "from": "upload"})
    finally:
        path.unlink(missing_ok=True)


@bundles.post("/usb")
def install_usb():
    wanted = request.form.get("path", "")
    found = {str(d.path): d for d in _drive_archives()}
    if wanted not in found:
        raise BadRequest("that archive is not on a drive any more: put the drive back and reload the page")
    return _install(found[wanted].path, {"archive": wanted, "from": "drive"})


@bundles.post("/<exam>/activate")
def activate(exam: str):
    slot = request.form.get("slot", "")
    if slot not in ("a", "b"):
        raise BadRequest("choose slot a or b")
    config = area().config
    return _run("activate", {"exam": exam, "slot": slot},
                lambda steps: updates.activate(exam, slot, config, _health(), steps))


@bundles.post("/<exam>/rollback")
def rollback(exam: str):
    config = area().config
    return _run("rollback", {"exam": exam}, lambda steps: updates.rollback(exam, config, _health(), steps))


@bundles.post("/<exam>/selftest")
def selftest(exam: str):
    config = area().config

    def check(steps: _Steps) -> str:
        result = updates.selftest_active(exam, config)
        if not result.ok:
            raise updates.SelfTestFailed(f"{result.exam_id} {result.version} failed its self-test: {result.reason()}")
        return f"{result.exam_id} {result.version}: self-test passed ({len(result.checks)} checks on this device)"

    return _run("selftest", {"exam": exam}, check)
