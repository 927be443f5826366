"""The technician's bundles page (/technician/bundles), on the device.updates API: what each exam
serves and its A/B slots; install a signed archive from an upload or from a USB drive; switch to
the other slot (back or forward); serve the shipped bundle again; self-test the active bundle.

Nothing switches the live model on one tap: each switch (install, slot switch, shipped bundle) is
asked first, saying what serves now and what would serve after; the same form sent with
``confirm=1`` does it. An uploaded archive is checked (signature, hashes, appliance version,
downgrade) and held under its own name until the technician confirms or cancels, so the page names
the file they chose, and a refusal comes before the question.

In a running kiosk an install is health-checked in this process (``updates.InProcess``: the kiosk
loads the new bundle and must pass self-test requests before the install is committed, else it is
rolled back). In safe mode there are no models: an install commits after its self-test, and the
kiosk serves it at its next start. Every action is audited in the technician log.
"""

from __future__ import annotations

import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from flask import Blueprint, request
from packaging.version import InvalidVersion, Version
from werkzeug.utils import secure_filename

from device import updates
from device.core.errors import BadRequest, NotFound
from device.technician.area import area
from device.technician.views import remote, running_appliance, show

bundles = Blueprint("bundles", __name__, url_prefix="/bundles")
ERROR_STATUS = {updates.Refused: 422, updates.NotInstalled: 404, updates.Busy: 409,
                updates.SelfTestFailed: 409, updates.HealthCheckFailed: 409}
UPLOADS = "update-uploads"
HELD_FOR_S = 3600  # an upload neither installed nor cancelled is removed after this long
TOKEN = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class Question:
    """A switch of the live model, asked before it is done: the page's confirmation panel."""

    title: str
    what: str  # what would be done
    effect: str  # what serves now, and what would serve after
    action: str  # where the confirming form posts
    button: str
    fields: dict[str, str] = field(default_factory=dict)
    cancel: str | None = None  # where Cancel posts (a held upload is removed); None: a link back


def _health() -> updates.HealthCheck | None:
    k = running_appliance()
    return None if k is None else updates.InProcess(k, area().config.updates.health_requests)


def _drive_archives() -> list[updates.DriveArchive]:
    media = area().config.media
    return updates.find_archives(media.import_folders, media.max_depth)


def _listing(status_code: int = 200, **result):
    config = area().config
    exams = updates.list_installed(config)
    shipped = {e.exam_id: updates.shipped_version(config, e.exam_id) for e in exams}
    return show("bundles.html", status_code, exams=exams, shipped=shipped, drives=_drive_archives(),
                live=running_appliance() is not None, switch_words=switch_words, **result)


def switch_words(to_version: str, active_version: str | None, slot: str) -> str:
    """The button that makes ``slot`` (holding ``to_version``) active: back, forward, or the same
    version in the other slot; never 'Roll back' to something newer."""
    try:
        newer = Version(to_version) > Version(active_version or "0")
        older = Version(to_version) < Version(active_version or "0")
    except InvalidVersion:
        newer = older = False
    if older:
        return f"Roll back to {to_version} (slot {slot})"
    if newer:
        return f"Go forward to {to_version} (slot {slot})"
    return f"Switch to slot {slot} (also {to_version})"


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
        return _listing(ERROR_STATUS.get(type(exc), 409), error=exc.message, steps=steps.lines)
    line = result if isinstance(result, str) else result.line()
    a.credentials.audit(f"bundle_{action}", remote(), {**detail, "result": line})
    return _listing(message=line, steps=steps.lines)


def _refused(exc: updates.UpdateError, detail: dict):
    """An archive refused before anything was written (the question is not asked)."""
    area().credentials.audit("bundle_install_failed", remote(), {**detail, "reason": str(exc)})
    return _listing(ERROR_STATUS.get(type(exc), 409), error=exc.message, refused=True)


def _confirmed() -> bool:
    return request.form.get("confirm") == "1"


def _serving(exam: str) -> str:
    """What serves ``exam`` now, in words: '1.1.0 (slot b)', '1.0.0 (shipped)', or 'nothing'."""
    for e in updates.list_installed(area().config):
        if e.exam_id == exam and e.version:
            active = next((s.slot for s in e.slots if s.role == "active"), None)
            return f"{e.version} ({f'slot {active}' if active else e.source})"
    return "nothing"


def _install_question(verified: updates.VerifiedArchive, action: str, fields: dict[str, str],
                      cancel: str | None = None):
    """Checked, and the downgrade rule applied: ask before installing it (it becomes live)."""
    config = area().config
    slots = updates.slots_of(config)
    exam = verified.exam_id
    updates.check_downgrade(verified, updates.current_version(config, slots, exam, slots.read_state(exam)))
    question = Question(
        title=f"Install {exam} {verified.version}?",
        what=f"{verified.path.name}: {exam} {verified.version}, signed by key {verified.key_id}"
             + (", signed as a downgrade" if verified.allow_downgrade else "") + ".",
        effect=f"{_serving(exam)} triages {exam} studies now. Once installed, self-tested here and health-checked, "
               f"{verified.version} triages every new study; if a check fails, what serves now stays.",
        action=action, button=f"Install {verified.version} now", fields=fields, cancel=cancel)
    return _listing(question=question)


def _switch_question(exam: str, slot: str | None, version: str):
    """Ask before making ``slot`` (None: the shipped bundle) of ``exam`` live."""
    target = f"slot {slot}" if slot else "the shipped bundle"
    question = Question(
        title=f"Switch {exam} to {version}?",
        what=f"{exam} {version} ({target}) would triage every new study from now on.",
        effect=f"{_serving(exam)} serves now and stays installed, to switch back to. The switch is self-tested and "
               "health-checked first; if a check fails, what serves now stays.",
        action=f"/technician/bundles/{exam}/{'activate' if slot else 'shipped'}",
        button=f"Switch to {version} now", fields={"slot": slot} if slot else {})
    return _listing(question=question)


@bundles.get("")
def page():
    return _listing()


def _install(path: Path, detail: dict):
    config = area().config
    return _run("install", detail, lambda steps: updates.install(path, config, _health(), steps))


def _uploads() -> Path:
    folder = area().config.store.data_dir / UPLOADS
    folder.mkdir(parents=True, exist_ok=True)
    for held in folder.iterdir():  # uploads left neither installed nor cancelled
        if time.time() - held.stat().st_mtime > HELD_FOR_S:
            shutil.rmtree(held, ignore_errors=True)
    return folder


def _held(token: str) -> Path:
    """The held upload of ``token``: the one archive in its folder."""
    folder = _uploads() / token
    archives = sorted(folder.glob("*.bedside")) if TOKEN.match(token) and folder.is_dir() else []
    if not archives:
        raise NotFound("that upload is no longer held (it was installed, cancelled, or left for over an hour): "
                       "upload it again")
    return archives[0]


@bundles.post("/upload")
def install_upload():
    """Check the uploaded archive, hold it under its own name, and ask before installing it."""
    upload = request.files.get("archive")
    if upload is None or not upload.filename:
        raise BadRequest("choose a .bedside archive to upload first")
    name = secure_filename(upload.filename) or "upload"
    name = name if name.endswith(".bedside") else f"{name}.bedside"
    token = secrets.token_hex(8)
    folder = _uploads() / token
    folder.mkdir()
    path = folder / name
    upload.save(path)
    detail = {"archive": upload.filename[:200], "from": "upload"}
    try:
        verified = updates.verify(path, area().config.updates)
        return _install_question(verified, f"/technician/bundles/upload/{token}/install", {},
                                 f"/technician/bundles/upload/{token}/cancel")
    except updates.UpdateError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        return _refused(exc, detail)


@bundles.post("/upload/<token>/install")
def install_held(token: str):
    path = _held(token)
    try:
        return _install(path, {"archive": path.name, "from": "upload"})
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


@bundles.post("/upload/<token>/cancel")
def cancel_held(token: str):
    shutil.rmtree(_held(token).parent, ignore_errors=True)
    return _listing(message="Nothing was installed; the upload was removed.")


@bundles.post("/usb")
def install_usb():
    wanted = request.form.get("path", "")
    found = {str(d.path): d for d in _drive_archives()}
    if wanted not in found:
        raise BadRequest("that archive is not on a drive any more: put the drive back and reload the page")
    detail = {"archive": wanted, "from": "drive"}
    if _confirmed():
        return _install(found[wanted].path, detail)
    try:
        verified = updates.verify(found[wanted].path, area().config.updates)
        return _install_question(verified, "/technician/bundles/usb", {"path": wanted})
    except updates.UpdateError as exc:
        return _refused(exc, detail)


def _slot_version(exam: str, slot: str) -> str:
    for e in updates.list_installed(area().config):
        for s in e.slots if e.exam_id == exam else ():
            if s.slot == slot:
                return s.version
    raise NotFound(f"{exam} has no bundle in slot {slot}")


@bundles.post("/<exam>/activate")
def activate(exam: str):
    slot = request.form.get("slot", "")
    if slot not in ("a", "b"):
        raise BadRequest("choose slot a or b")
    if not _confirmed():
        return _switch_question(exam, slot, _slot_version(exam, slot))
    config = area().config
    return _run("activate", {"exam": exam, "slot": slot},
                lambda steps: updates.activate(exam, slot, config, _health(), steps))


@bundles.post("/<exam>/rollback")
def rollback(exam: str):
    """The other slot (the page offers it as a switch back or forward; the CLI's word is rollback)."""
    config = area().config
    if not _confirmed():
        slots = updates.slots_of(config)
        previous = slots.read_state(exam).other(slots.read_state(exam).committed)
        return _switch_question(exam, previous, _slot_version(exam, previous))
    return _run("rollback", {"exam": exam}, lambda steps: updates.rollback(exam, config, _health(), steps))


@bundles.post("/<exam>/shipped")
def use_shipped(exam: str):
    config = area().config
    if not _confirmed():
        version = updates.shipped_version(config, exam)
        if version is None:
            raise NotFound(f"{exam}: no bundle of it was shipped with this appliance")
        return _switch_question(exam, None, version)
    return _run("shipped", {"exam": exam}, lambda steps: updates.use_shipped(exam, config, _health(), steps))


@bundles.post("/<exam>/selftest")
def selftest(exam: str):
    config = area().config

    def check(steps: _Steps) -> str:
        result = updates.selftest_active(exam, config)
        if not result.ok:
            raise updates.SelfTestFailed(f"{result.exam_id} {result.version} failed its self-test: {result.reason()}")
        return f"{result.exam_id} {result.version}: self-test passed ({len(result.checks)} checks on this device)"

    return _run("selftest", {"exam": exam}, check)
