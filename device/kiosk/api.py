"""The JSON API, version 1: the same operations the pages offer (studies, imports, exports, settings,
live capture sources), for programs and tests, and /metrics.

Errors are ``{"error": {"status", "code", "message", ...}}`` with a 4xx status (see app.py).
"""

from __future__ import annotations

import time
from dataclasses import asdict

from flask import Blueprint, Response, jsonify, request, url_for

from device.appliance.context import current_appliance
from device.appliance.running import THREADS_KEPT_FREE
from device.capture.devices import list_video_devices
from device.capture.view import CONTENT_TYPE as MJPEG
from device.core.errors import BadRequest, Busy, KioskError, NotFound, UnsupportedBody
from device.core.monitoring import CONTENT_TYPE
from device.core.study_service import study_json
from device.dicom.shown import facts_of
from device.kiosk.display import worklist_json
from device.kiosk.params import study_filter

api = Blueprint("api", __name__, url_prefix="/api/v1")
ops = Blueprint("ops", __name__)  # /metrics, where Prometheus looks by default
MAX_PAGE = 500
IMMUTABLE = "private, max-age=86400, immutable"
NO_STORE = {"Cache-Control": "no-store"}


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"'{name}' must be an integer, not {raw!r}") from None
    if not low <= value <= high:
        raise BadRequest(f"'{name}' must be between {low} and {high}")
    return value


JSON_TYPES = {dict: "an object", list: "an array", bool: "true or false", int: "a number", float: "a number"}


def request_body() -> dict:
    """A JSON object body (an empty body is an empty object). Only application/json: a form on
    another site can post text/plain or form data without the browser asking first, never JSON."""
    if not request.get_data(cache=True):
        return {}
    if not request.is_json:
        raise UnsupportedBody(f"send the body as application/json, not {request.mimetype or 'no content type'}")
    try:
        data = request.get_json(silent=True)
    except RecursionError:
        raise BadRequest("the JSON body is nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def body_text(body: dict, key: str) -> str | None:
    """An optional text field of the body: a string or absent (or null); BadRequest naming the key otherwise."""
    value = body.get(key)
    if value is None or isinstance(value, str):
        return value
    raise BadRequest(f"'{key}' must be a string, not {JSON_TYPES.get(type(value), type(value).__name__)}")


FLAG_TEXT = {"1": True, "true": True, "0": False, "false": False, "": False}


def body_flag(body: dict, key: str) -> bool:
    """An optional yes/no field: JSON true/false, or a form's "1"/"0"; absent is false."""
    value = body.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in FLAG_TEXT:
        return FLAG_TEXT[value.lower()]
    raise BadRequest(f"'{key}' must be true or false")


def body_operator(body: dict) -> str | None:
    """Who acts: the body's operator, else (None) the kiosk's default operator. Never a header or
    query parameter, which anything that can send a request could set to any name."""
    return body_text(body, "operator")


def _history_triage(body: dict) -> list[str]:
    """The history export's triage filter: a list of categories or one comma-separated string."""
    triage = body.get("triage") or []
    if isinstance(triage, str):
        return triage.split(",")
    if isinstance(triage, list) and all(isinstance(t, str) for t in triage):
        return triage
    raise BadRequest("'triage' must be a list of categories, like [\"URGENT\"], or a string \"URGENT,ROUTINE\"")


def triage_args() -> list[str]:
    """?triage=URGENT&triage=ROUTINE or ?triage=URGENT,ROUTINE."""
    return [part for value in request.args.getlist("triage") for part in value.split(",")]


@api.post("/studies")
def create_study():
    upload = request.files.get("file")
    if upload is None:
        raise BadRequest("no file: send the image as multipart/form-data in a field named 'file'")
    study = current_appliance().studies.create_study(
        upload.read(),
        upload.filename or "upload",
        request.form.get("exam"),
        request.form.get("reference"),
        body_operator(request.form),
        other_patient_ok=body_flag(request.form, "other_patient"),
    )
    first = current_appliance().store.first_with_image(study.image_sha256)
    body = {**study_json(study), "duplicate_of": first if first != study.id else None}
    return jsonify(body), 201, {"Location": f"/api/v1/studies/{study.id}"}


@api.get("/studies")
def list_studies():
    where = study_filter(triage_args(), request.args.get("from"), request.args.get("to"), request.args.get("q"),
                         request.args.get("reviewed"))
    limit = _int_arg("limit", 50, 1, MAX_PAGE)
    offset = _int_arg("offset", 0, 0, 2**62)
    studies, total = current_appliance().store.list(where, limit, offset)
    return jsonify({"studies": [study_json(s) for s in studies], "total": total, "limit": limit, "offset": offset})


@api.get("/worklist")
def worklist():
    """The unreviewed studies in the order the home screen shows them, with the counts by category."""
    limit = _int_arg("limit", 50, 1, MAX_PAGE)
    offset = _int_arg("offset", 0, 0, 2**62)
    k = current_appliance()
    store = k.store
    studies, total = store.worklist(limit, offset)
    now = time.time()
    dicom = facts_of(store, k.dicom and k.dicom.outbox, [s.id for s in studies])
    return jsonify({
        "studies": [worklist_json(s, now, dicom.get(s.id)) for s in studies], "total": total, "limit": limit,
        "offset": offset,
        "counts": store.unreviewed_counts(),
    }), 200, NO_STORE


@api.get("/studies/<int:study_id>")
def get_study(study_id: int):
    return jsonify(study_json(current_appliance().studies.view(study_id, None)))


@api.get("/studies/<int:study_id>/image")
def study_image(study_id: int):
    studies = current_appliance().studies
    study = studies.get(study_id)
    response = Response(studies.image_bytes(study), mimetype=study.media_type)
    response.headers["Content-Disposition"] = f'inline; filename="study-{study.id}-{study.image_sha256[:12]}"'
    response.headers["Cache-Control"] = IMMUTABLE
    return response


@api.get("/studies/<int:study_id>/preview")
def study_preview(study_id: int):
    studies = current_appliance().studies
    jpeg = studies.renders.preview_jpeg(studies.get(study_id))
    return Response(jpeg, mimetype="image/jpeg", headers={"Cache-Control": IMMUTABLE})


@api.get("/studies/<int:study_id>/window")
def study_window(study_id: int):
    """How a DICOM study's grayscale is windowed (the file's window centre/width, or the data's
    range), for window/level in look-closer; its values are at /window/values."""
    studies = current_appliance().studies
    meta = studies.renders.window_values(studies.get(study_id)).meta
    return jsonify({**meta, "values": url_for("api.study_window_values", study_id=study_id)})


@api.get("/studies/<int:study_id>/window/values")
def study_window_values(study_id: int):
    studies = current_appliance().studies
    window = studies.renders.window_values(studies.get(study_id))
    return Response(window.codes, mimetype="application/octet-stream", headers={"Cache-Control": IMMUTABLE})


@api.get("/studies/<int:study_id>/full")
def study_full(study_id: int):
    studies = current_appliance().studies
    jpeg = studies.renders.full_jpeg(studies.get(study_id))
    return Response(jpeg, mimetype="image/jpeg", headers={"Cache-Control": IMMUTABLE})


@api.get("/studies/<int:study_id>/heatmap")
def study_heatmap(study_id: int):
    studies = current_appliance().studies
    study = studies.get(study_id)
    png = studies.renders.heatmap_png(study)
    if png is None:
        raise NotFound(f"study {study_id}: its model ({study.model.id}) gives no heatmap")
    return Response(png, mimetype="image/png", headers={"Cache-Control": IMMUTABLE})


@api.post("/studies/<int:study_id>/review")
def review_study(study_id: int):
    body = request_body()
    study = current_appliance().studies.review(study_id, body_text(body, "note"), body_operator(body),
                                               body_flag(body, "change"))
    return jsonify(study_json(study))


@api.post("/studies/<int:study_id>/run-as")
def run_as(study_id: int):
    """``{exam, operator}``: the study's image as another exam, a new study linked to this one (201)."""
    body = request_body()
    study = current_appliance().studies.run_as(study_id, body_text(body, "exam"), body_operator(body))
    return jsonify(study_json(study)), 201, {"Location": f"/api/v1/studies/{study.id}"}


@api.post("/studies/<int:study_id>/reopen")
def reopen_study(study_id: int):
    """Put a reviewed study back on the worklist; ``undo``: taking back a review just made."""
    body = request_body()
    study = current_appliance().studies.reopen(study_id, body_operator(body), body_flag(body, "undo"))
    return jsonify(study_json(study))


@api.post("/studies/<int:study_id>/export")
def export_study(study_id: int):
    body = request_body()
    folder = current_appliance().studies.export_study(study_id, body_text(body, "destination"), body_operator(body))
    return jsonify({"path": str(folder)}), 201


@api.post("/exports/history")
def export_history():
    body = request_body()
    where = study_filter(_history_triage(body), body_text(body, "from"), body_text(body, "to"), body_text(body, "q"),
                         body_text(body, "reviewed"))
    path, count = current_appliance().studies.export_history(where, body_text(body, "destination"), body_operator(body))
    return jsonify({"path": str(path), "studies": count}), 201


@api.get("/exports/targets")
def export_targets():
    return jsonify({"targets": [str(t) for t in current_appliance().studies.export_targets()]})


@api.get("/imports")
def importable():
    return jsonify({"files": [f.as_json() for f in current_appliance().studies.importable()]})


@api.post("/imports")
def import_files():
    body = request_body()
    paths = body.get("paths")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise BadRequest("'paths' must be a list of file paths (see GET /api/v1/imports)")
    outcome = current_appliance().studies.import_files(
        paths, body_text(body, "exam"), body_text(body, "reference"), body_operator(body)
    )
    studies = [study_json(r) for _, r in outcome if not isinstance(r, KioskError)]
    errors = [
        {"path": p, "status": r.status, "code": r.code, "message": r.message}
        for p, r in outcome
        if isinstance(r, KioskError)
    ]
    status = 201 if studies else errors[0]["status"]
    return jsonify({"studies": studies, "errors": errors}), status


@api.get("/exams")
def exams():
    return jsonify({"exams": [e.as_json() for e in current_appliance().exams]})


@api.post("/exams/<exam_id>/reload")
def reload_exam(exam_id: str):
    """Serve the bundle now installed for the exam (after `bedside bundle install`, activate or rollback
    switched its slot): loaded, warmed up, then swapped in; the old one stays if loading fails (409)."""
    request_body()  # JSON only, so a cross-site form cannot make the kiosk reload
    return jsonify(current_appliance().reload_exam(exam_id))


@api.post("/exams/<exam_id>/selftest")
def selftest_exam(exam_id: str):
    """The serving model of the exam on its bundle's golden inputs: ``ok`` and the differences."""
    request_body()
    return jsonify(current_appliance().selftest_exam(exam_id))


@api.get("/settings")
def get_settings():
    return jsonify({"operator": current_appliance().studies.default_operator()})


@api.put("/settings")
def put_settings():
    body = request_body()
    unknown = set(body) - {"operator"}
    if unknown:
        raise BadRequest(f"unknown setting {sorted(unknown)[0]!r}; settable: operator")
    if "operator" in body:
        current_appliance().studies.set_default_operator(body_text(body, "operator"), None)
    return get_settings()


@api.get("/audit")
def audit_log():
    study = request.args.get("study")
    study_id = _int_arg("study", 0, 1, 2**62) if study else None
    entries = current_appliance().store.audit_log(_int_arg("limit", 100, 1, 1000), study_id)
    return jsonify({"entries": [asdict(e) for e in entries]})


@api.get("/health")
def health():
    report = current_appliance().health()
    return jsonify(report), 200 if report["ready"] else 503


# ---- live capture sources ------------------------------------------------------------------


@api.get("/sources")
def sources():
    return jsonify(
        {
            "sources": current_appliance().capture.status(),
            "devices": [d.as_json() for d in list_video_devices()],
        }
    ), 200, NO_STORE


@api.get("/sources/<source_id>")
def source(source_id: str):
    return jsonify(current_appliance().live_source(source_id).status()), 200, NO_STORE


@api.get("/sources/<source_id>/latest")
def latest(source_id: str):
    """The newest result; its frame's picture is at ``picture``, and a capture naming its ``frame.seq``
    stores exactly this pair, for a while after newer frames were judged (device/capture/live.py)."""
    src = current_appliance().live_source(source_id)
    result = src.live.show()
    if result is None:
        raise NotFound(f"source {source_id} has no triage result yet (it is {src.stream.state})")
    picture = url_for("api.live_picture", source_id=source_id, seq=result.seq)
    return jsonify({**result.as_json(), "state": src.stream.state, "picture": picture}), 200, NO_STORE


@api.get("/sources/<source_id>/frames/<int:seq>")
def live_picture(source_id: str, seq: int):
    """The judged frame ``seq`` with its result drawn on it, while it is kept (see latest)."""
    src = current_appliance().live_source(source_id)
    result = src.live.shown(seq)
    if result is None:
        raise NotFound(f"source {source_id}: frame {seq} is no longer kept; ask for the latest result again")
    return Response(src.view.picture(result), mimetype="image/jpeg", headers=NO_STORE)


@api.get("/sources/<source_id>/live")
def live_stream(source_id: str):
    """The live view as MJPEG; the response ends when the kiosk shuts down or the viewer leaves."""
    view = current_appliance().live_source(source_id).view
    k = current_appliance()
    capture = k.capture
    body = k.live_viewers.hold(view.parts(lambda: capture.closing))
    if body is None:
        raise Busy(
            f"this kiosk shows at most {k.live_viewers.limit} live views at once (capture.max_viewers, and "
            f"at most server.threads - {THREADS_KEPT_FREE}); close one and try again"
        )
    return Response(body, mimetype=MJPEG, headers=NO_STORE, direct_passthrough=True)


@api.post("/sources/<source_id>/capture")
def capture_from_source(source_id: str):
    body = request_body()
    frame = body.get("frame")
    if frame is not None and (isinstance(frame, bool) or not isinstance(frame, int)):
        raise BadRequest("'frame' must be the number of a frame (frame.seq of /latest)")
    study = current_appliance().capture_study(source_id, body_text(body, "reference"), body_operator(body), frame)
    return jsonify(study_json(study)), 201, {"Location": f"/api/v1/studies/{study.id}"}


@ops.get("/metrics")
def metrics():
    return Response(current_appliance().metrics.render(), headers={"Content-Type": CONTENT_TYPE})
