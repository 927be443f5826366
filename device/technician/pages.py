"""The technician area's pages under /technician: login (and the first-start password, on the
device's own screen only), status, capture sources, DICOM, logs and diagnostics, API tokens, and a
restart. Every form carries the CSRF token (security.py checks it for this blueprint too); gate.py
keeps everything but the login and first-start pages behind a session.

The same pages serve safe mode, where the kiosk runs without its models (no Appliance object): the
pages that need one say so instead.
"""

from __future__ import annotations

import io
import os
import signal
import zipfile
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, redirect, render_template, request

from device.appliance.context import EXTENSION as APPLIANCE
from device.core.errors import BadRequest, KioskError, NotFound
from device.machine.clock import utc_iso
from device.technician import checks, diagnostics, status
from device.technician.area import area, is_loopback
from device.technician.bundle_pages import bundles
from device.technician.credentials import CredentialError, check_new_password
from device.technician.login_gate import COOKIE, authenticated
from device.technician.views import NO_STORE, remote, running_appliance, show

technician = Blueprint("technician", __name__, url_prefix="/technician", template_folder="templates")
technician.register_blueprint(bundles)  # /technician/bundles
MAX_TOKEN_NAME = 60


def _on_own_screen() -> bool:
    return is_loopback(remote())


@technician.app_context_processor
def _every_page() -> dict:
    a = area()
    return {"safe_mode": a.safe_mode, "signed_in": authenticated(),
            "clinician_pages": APPLIANCE in current_app.extensions}


# ---- login and the first-start password -----------------------------------------------------


def _safe_next(target: str | None) -> str:
    """Only a path on this kiosk (never //host or a scheme): a login link cannot send people away."""
    parts = urlsplit(target or "")
    if not target or parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/technician/"
    return target


@technician.get("/login")
def login_form():
    if not area().credentials.has_password():
        return redirect("/technician/setup", 303)
    return show("login.html", next=_safe_next(request.args.get("next")))


@technician.post("/login")
def login():
    a = area()
    address = remote()
    target = _safe_next(request.form.get("next"))
    wait = a.limiter.wait_s(address)
    if wait > 0:
        a.credentials.audit("login_refused", address, {"reason": "too many failed logins"})
        minutes = max(1, round(wait / 60))
        return show("login.html", 429, next=target,
                     error=f"Too many failed logins from this address. Try again in {minutes} min.")
    if not a.credentials.verify(request.form.get("password", "")):
        a.limiter.failed(address)
        a.credentials.audit("login_failed", address)
        return show("login.html", 401, next=target, error="Wrong password. Try again.")
    a.limiter.succeeded(address)
    a.credentials.audit("login", address)
    response = redirect(target, 303)
    response.set_cookie(COOKIE, a.sessions.start(), httponly=True, samesite="Strict", path="/")
    return response


@technician.post("/logout")
def logout():
    a = area()
    a.sessions.end(request.cookies.get(COOKIE))
    a.credentials.audit("logout", remote())
    response = redirect("/technician/login", 303)
    response.delete_cookie(COOKIE, path="/")
    return response


def _setup_refusal() -> tuple[str, int] | None:
    if area().credentials.has_password():
        return "The technician password is already set. Log in instead.", 409
    if not _on_own_screen():
        return ("The technician password is set on the device's own screen (or by a provisioning file), "
                "not over the network."), 403
    return None


@technician.get("/setup")
def setup_form():
    refusal = _setup_refusal()
    if refusal is not None:
        return show("setup.html", refusal[1], error=refusal[0], closed=True)
    return show("setup.html")


@technician.post("/setup")
def setup():
    refusal = _setup_refusal()
    if refusal is not None:
        return show("setup.html", refusal[1], error=refusal[0], closed=True)
    password = request.form.get("password", "")
    if password != request.form.get("repeat", ""):
        return show("setup.html", 400, error="The two passwords differ. Type the same password twice.")
    try:
        check_new_password(password)
        area().credentials.set_password(password, "on the device's screen", remote())
    except CredentialError as exc:
        return show("setup.html", 400, error=str(exc)[0].upper() + str(exc)[1:] + ".")
    return redirect("/technician/login", 303)


# ---- status -----------------------------------------------------------------------------------


def _status() -> dict:
    a, k = area(), running_appliance()
    return status.collect(a.config, a.started_at, a.logbook.recent_problems(), None if k is None else k.exams)


@technician.get("/")
def status_page():
    return show("status.html", status=_status())


@technician.get("/status.json")
def status_json():
    return _status(), 200, NO_STORE


@technician.post("/restart")
def restart():
    """Asked first; confirmed (``confirm=1``), stop with RESTART_EXIT_STATUS once this answer is sent:
    systemd starts the kiosk again. The asking page sends the confirmation itself and then watches
    for another process to answer (``started``): a page served by this one could not load its script."""
    a = area()
    if request.form.get("confirm") != "1":
        return show("restarting.html", ask=True, started_at=a.started_at_utc)
    a.credentials.audit("restart", remote())
    a.restart_requested.set()
    response = Response(render_template("technician/restarting.html", ask=False), headers=NO_STORE)
    response.call_on_close(lambda: os.kill(os.getpid(), signal.SIGTERM))
    return response


@technician.get("/started")
def started():
    """When this kiosk process started, and whether in safe mode: the restart page asks, without a
    session (the restart ends it), until another process answers."""
    a = area()
    return {"started_at": a.started_at_utc, "safe_mode": bool(a.safe_mode)}, 200, NO_STORE


# ---- capture sources and DICOM ----------------------------------------------------------------


@technician.get("/sources")
def sources():
    k = running_appliance()
    return show("sources.html", sources=[] if k is None else k.capture.status(), running=k is not None, test=None)


@technician.post("/sources/test")
def test_source():
    uri = request.form.get("uri", "")
    if not uri.strip():
        raise BadRequest("enter a source URI to test, e.g. v4l2:///dev/video0 or http://camera/mjpeg")
    result = checks.test_source(uri, area().config.capture.open_timeout_s)
    area().last_test_frame = result.jpeg
    k = running_appliance()
    return show("sources.html", 200 if result.ok else 422, sources=[] if k is None else k.capture.status(),
                 running=k is not None, test=result)


@technician.get("/sources/test.jpg")
def test_frame():
    frame = area().last_test_frame
    if not frame:
        raise NotFound("no test frame yet: test a source first")
    return Response(frame, mimetype="image/jpeg", headers=NO_STORE)


# What the SCP logs when it refuses: a whole association, or one C-STORE.
REFUSALS = ("association_rejected", "store_failed")
REFUSALS_SHOWN = 20


def _dicom_page(echoes: list | None = None, done: str | None = None, status_code: int = 200):
    """The settings, and where the node runs: its routes, what is not triaged, what waits to be sent,
    the failed results (to retry) and what was refused."""
    k = running_appliance()
    node = None if k is None else k.dicom
    return show("dicom.html", status_code, dicom=area().config.dicom, echoes=echoes, node=node, done=done,
                running=node is not None, not_triaged=k.store.untriaged(1)[1] if node else 0,
                backlog=node.outbox.backlog() if node else [],
                refusals=k.store.dicom_events(REFUSALS_SHOWN, REFUSALS) if node else [])


@technician.get("/dicom")
def dicom():
    return _dicom_page()


@technician.post("/dicom/echo")
def dicom_echo():
    settings = area().config.dicom
    return _dicom_page(echoes=[checks.echo(settings, d) for d in settings.destinations])


@technician.post("/dicom/outbox/<int:item_id>/retry")
def dicom_retry(item_id: int):
    """A failed result tried again: sent again, or built again when it never was."""
    node = running_appliance() and running_appliance().dicom
    if node is None:
        raise NotFound("DICOM is off: [dicom] port is not set")
    try:
        return _dicom_page(done=node.retry(item_id))
    except KioskError as exc:
        return _dicom_page(done=exc.message, status_code=exc.status)


# ---- logs and diagnostics ---------------------------------------------------------------------


@technician.get("/logs")
def logs():
    files = [(p.name, p.stat().st_size) for p in area().logbook.files()]
    return show("logs.html", files=files, audit=area().credentials.audit_log(50))


def _attachment(data: bytes, name: str) -> Response:
    return Response(data, mimetype="application/zip",
                    headers={**NO_STORE, "Content-Disposition": f'attachment; filename="{name}"'})


@technician.get("/logs/download")
def logs_download():
    a = area()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in a.logbook.files():
            archive.write(path, f"logs/{path.name}")
    a.credentials.audit("logs_downloaded", remote())
    return _attachment(buf.getvalue(), f"bedside-logs-{_stamp()}.zip")


@technician.get("/diagnostics")
def diagnostics_download():
    a = area()
    data = diagnostics.build_archive(_status(), a.config, a.credentials.audit_log(200), a.logbook.files(),
                                     a.config.store.data_dir)
    a.credentials.audit("diagnostics_downloaded", remote())
    return _attachment(data, f"bedside-diagnostics-{_stamp()}.zip")


def _stamp() -> str:
    return utc_iso().replace(":", "").replace("-", "")[:15]


# ---- API tokens -------------------------------------------------------------------------------


@technician.get("/tokens")
def tokens():
    return show("tokens.html", tokens=area().credentials.tokens(), new_token=None)


@technician.post("/tokens")
def add_token():
    name = request.form.get("name", "").strip()
    if not name or len(name) > MAX_TOKEN_NAME or any(ord(c) < 32 for c in name):
        raise BadRequest(f"name the token (1 to {MAX_TOKEN_NAME} characters), e.g. the program that uses it")
    a = area()
    token = a.credentials.add_token(name)
    a.credentials.audit("token_created", remote(), {"name": name})
    return show("tokens.html", 201, tokens=a.credentials.tokens(), new_token=token)


@technician.post("/tokens/<int:token_id>/revoke")
def revoke_token(token_id: int):
    a = area()
    if not a.credentials.revoke_token(token_id):
        raise NotFound(f"no active token {token_id}")
    a.credentials.audit("token_revoked", remote(), {"id": token_id})
    return redirect("/technician/tokens", 303)

