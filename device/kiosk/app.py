"""The Flask application factory: one Appliance (models, store, metrics) per app, blueprints by interface
(pages for people, /api/v1 and /metrics for programs), strict security headers, and errors that never leak a
traceback: bad input is a 4xx with a clear message, in JSON for the API and on the page for people."""

from __future__ import annotations

import logging

from flask import Flask, Request, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from device.appliance.context import EXTENSION
from device.appliance.running import Appliance
from device.core.errors import KioskError, SafeModeRefusal
from device.core.reserve import STORAGE_FULL, is_disk_full
from device.core.settings import KioskConfig
from device.decision.triage import cannot_assess, shown_reasons
from device.core.store import StoreError
from device.dicom.shown import SEND_WORDS
from device.kiosk.api import api, ops
from device.kiosk.dicom_api import dicom_api
from device.kiosk.display import ROUTINE_NOTE, decision_of, local_time, waiting_s, waiting_text
from device.kiosk.multipart import FastFormDataParser
from device.kiosk.pages import pages
from device.kiosk.plain_errors import PLAIN_ERRORS
from device.kiosk.request_log import log_requests
from device.kiosk.security import protect
from device.kiosk.static_files import cache_static_files
from device.technician.area import EXTENSION as TECHNICIAN, TechnicianArea
from device.technician.logbook import Logbook
from device.technician.login_gate import install_gate
from device.technician.pages import technician
from device.technician.safe_mode import safe_mode_pages, technician_only_pages

log = logging.getLogger(__name__)

# Nothing may load from anywhere but this appliance: no CDN, fonts, analytics, inline script or style.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
# Over HTTPS: browsers that saw it refuse plain HTTP to this name for a year (the device's own screen
# reaches the loopback plain-HTTP port by address, which HSTS does not cover).
HSTS = "max-age=31536000"
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on the kiosk's own
    # form posts, and security.py could not tell them from another site's.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

class KioskRequest(Request):
    # Uploads are parsed in memory (bounded by MAX_CONTENT_LENGTH); see multipart.py for why.
    form_data_parser_class = FastFormDataParser


def create_app(config: KioskConfig | None = None) -> Flask:
    """Build the appliance: the store opened and checked, every exam loaded and warmed up, and the
    technician area.

    Call ``device.appliance.context.appliance_of(app).close()`` when done with it.
    """
    config = config or KioskConfig()
    logbook = Logbook(config.store.data_dir)
    try:
        appliance = Appliance.open(config)
    except BaseException:
        logbook.close()
        raise
    try:
        technician_area = TechnicianArea(config, logbook)
    except BaseException:
        appliance.close()
        logbook.close()
        raise
    appliance.close_with(technician_area.close)
    app = _base_app(config, technician_area)
    _clinician_side(app, appliance)
    return app


def _clinician_side(app: Flask, appliance: Appliance) -> None:
    """The clinicians' pages, the JSON API and /metrics, on ``appliance``."""
    app.extensions[EXTENSION] = appliance
    app.jinja_env.filters["local_time"] = local_time
    app.jinja_env.filters["waiting"] = lambda study: waiting_text(waiting_s(study))
    app.jinja_env.globals["plain_errors"] = PLAIN_ERRORS
    app.jinja_env.globals["send_words"] = SEND_WORDS
    app.jinja_env.filters["reasons"] = shown_reasons
    app.jinja_env.filters["cannot_assess"] = cannot_assess
    app.jinja_env.filters["exam_name"] = appliance.exams.name_of
    app.jinja_env.globals["decision_of"] = decision_of
    app.jinja_env.globals["routine_note"] = ROUTINE_NOTE
    app.register_blueprint(api)
    app.register_blueprint(dicom_api)
    app.register_blueprint(ops)
    app.register_blueprint(pages)


def create_safe_app(config: KioskConfig, reason: str) -> Flask:
    """Safe mode: no models and nothing that triages; the clinicians' worklist and studies stay
    readable (Appliance.open_safe), the technician area says ``reason``. Where the studies cannot be
    opened either, the technician area alone. Close it with ``close_app``."""
    technician_area = TechnicianArea(config, Logbook(config.store.data_dir), safe_mode=reason)
    app = _base_app(config, technician_area)
    app.register_blueprint(safe_mode_pages)
    try:
        appliance = Appliance.open_safe(config, reason)
    except StoreError as exc:
        log.error("safe mode without the studies: %s", exc)
        app.register_blueprint(technician_only_pages)
        return app
    appliance.close_with(technician_area.close)
    _clinician_side(app, appliance)
    app.before_request(_refuse_triage)
    return app


def close_app(app: Flask) -> None:
    """Close what an app of create_app or create_safe_app holds."""
    appliance = app.extensions.get(EXTENSION)
    (appliance.close if appliance is not None else app.extensions[TECHNICIAN].close)()


# What triages (or loads a model) in normal mode; in safe mode each is refused in plain words.
TRIAGES = {
    "api.create_study", "pages.upload_study", "api.import_files", "pages.import_studies", "pages.keep_other_patient",
    "api.capture_from_source", "pages.live_capture", "api.reload_exam", "api.selftest_exam",
}


def _refuse_triage() -> None:
    if request.endpoint in TRIAGES:
        raise SafeModeRefusal(
            "This kiosk is in safe mode: it cannot triage new images until a technician has fixed it. "
            "The worklist and earlier studies can still be read."
        )


def _base_app(config: KioskConfig, technician_area: TechnicianArea) -> Flask:
    """What both modes share: security headers, request logs, same-origin and login checks, errors."""
    app = Flask(__name__)
    app.request_class = KioskRequest
    # Forms hold a reference, a note, a few paths: keep their memory bounded too.
    app.config.update(MAX_CONTENT_LENGTH=config.server.max_upload_mb * 2**20, MAX_FORM_MEMORY_SIZE=1 * 2**20)
    app.json.sort_keys = False
    app.extensions[TECHNICIAN] = technician_area
    cache_static_files(app)
    app.register_blueprint(technician)
    app.after_request(_security_headers)
    log_requests(app)
    protect(app, config.server)
    install_gate(app)
    app.register_error_handler(KioskError, _kiosk_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


def _security_headers(response):
    response.headers.update(SECURITY_HEADERS)
    if request.is_secure:
        response.headers["Strict-Transport-Security"] = HSTS
    return response


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.path == "/metrics"


def error_response(status: int, code: str, message: str, **extra):
    if _wants_json():
        return jsonify({"error": {"status": status, "code": code, "message": message, **extra}}), status
    if "technician" in request.blueprints or EXTENSION not in current_app.extensions:
        return render_template("technician/error.html", status=status, message=message), status
    return render_template("error.html", status=status, message=message, kind=code), status


def _count_error(code: str) -> None:
    """Counted in the kiosk's metrics (there are none in safe mode)."""
    appliance = current_app.extensions.get(EXTENSION)
    if appliance is not None:
        appliance.metrics.error(code)


def _kiosk_error(exc: KioskError):
    return error_response(exc.status, exc.code, exc.message, **exc.extra)


def _http_error(exc: HTTPException):
    if isinstance(exc, RequestEntityTooLarge):
        _count_error("too_large")
        return error_response(413, "too_large", _too_large_message())
    if 400 <= (exc.code or 500) < 500:
        _count_error(f"http_{exc.code}")
    code = (exc.name or "error").lower().replace(" ", "_")
    if exc.code == 404 and not _wants_json():
        return error_response(404, code, NO_PAGE)
    return error_response(exc.code or 500, code, exc.description or "")


# A page address this kiosk does not have, in its own words (an old bookmark, a mistyped address).
NO_PAGE = ("There is no page at this address on this kiosk. Studies are found from the worklist or under "
           "All studies.")


def _too_large_message() -> str:
    """Which limit was passed: the body's size, or (within it) the form's parts or one field's size."""
    limit = current_app.config["MAX_CONTENT_LENGTH"] // 2**20
    if (request.content_length or 0) > limit * 2**20:
        return f"the upload is larger than the limit of {limit} MiB"
    return (
        f"the form has more than {request.max_form_parts} parts or a field larger than "
        f"{request.max_form_memory_size // 2**20} MiB; send one image and a few short fields"
    )


# Requests that create one study: there a failure means it was not saved (nothing is acknowledged
# before the commit). Elsewhere the error says nothing about studies it cannot vouch for.
CREATES_A_STUDY = {"api.create_study", "pages.upload_study", "api.capture_from_source", "pages.live_capture"}


def _unexpected_error(exc: Exception):
    if is_disk_full(exc):
        log.error("disk full on %s %s: %s", request.method, request.path, exc)
        _count_error("storage_full")
        saved = "; the study was not saved" if request.endpoint in CREATES_A_STUDY else ""
        return error_response(507, "storage_full", f"{STORAGE_FULL}: the disk is full{saved}")
    log.exception("unexpected error on %s %s", request.method, request.path)
    _count_error("internal")
    if request.endpoint in CREATES_A_STUDY:
        return error_response(500, "internal", "internal error; the study was not saved, please try again")
    return error_response(500, "internal", "internal error, please try again")
