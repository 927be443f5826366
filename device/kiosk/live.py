"""Live capture in the kiosk: the sources' JSON API and the live pages (video with the triage drawn on
it, the source's state, and one big Capture button that saves the last triaged frame as a study)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, redirect, render_template, request, url_for

from device.capture.devices import list_video_devices
from device.capture.manager import LiveSource
from device.capture.view import CONTENT_TYPE
from device.kiosk.api import body_operator, body_text, request_body
from device.kiosk.context import kiosk
from device.kiosk.errors import Busy, KioskError, NotFound
from device.kiosk.service import THREADS_KEPT_FREE, study_json

live_api = Blueprint("live_api", __name__, url_prefix="/api/v1/sources")
live_pages = Blueprint("live_pages", __name__)
NO_STORE = {"Cache-Control": "no-store"}


def _source(source_id: str) -> LiveSource:
    source = kiosk().capture.get(source_id)
    if source is None:
        raise NotFound(f"no capture source {source_id!r}")
    return source


@live_api.get("")
def sources():
    return jsonify(
        {
            "sources": kiosk().capture.status(),
            "devices": [d.as_json() for d in list_video_devices()],
        }
    ), 200, NO_STORE


@live_api.get("/<source_id>")
def source(source_id: str):
    return jsonify(_source(source_id).status()), 200, NO_STORE


@live_api.get("/<source_id>/latest")
def latest(source_id: str):
    src = _source(source_id)
    result = src.live.latest()
    if result is None:
        raise NotFound(f"source {source_id} has no triage result yet (it is {src.stream.state})")
    return jsonify({**result.as_json(), "state": src.stream.state}), 200, NO_STORE


@live_api.get("/<source_id>/live")
def live_stream(source_id: str):
    """The live view as MJPEG; the response ends when the kiosk shuts down or the viewer leaves."""
    view = _source(source_id).view
    k = kiosk()
    capture = k.capture
    body = k.live_viewers.hold(view.parts(lambda: capture.closing))
    if body is None:
        raise Busy(
            f"this kiosk shows at most {k.live_viewers.limit} live views at once (capture.max_viewers, and "
            f"at most server.threads - {THREADS_KEPT_FREE}); close one and try again"
        )
    return Response(body, mimetype=CONTENT_TYPE, headers=NO_STORE, direct_passthrough=True)


@live_api.post("/<source_id>/capture")
def capture(source_id: str):
    body = request_body()
    study = kiosk().capture_study(source_id, body_text(body, "reference"), body_operator(body))
    return jsonify(study_json(study)), 201, {"Location": f"/api/v1/studies/{study.id}"}


@live_pages.app_context_processor
def _live_sources() -> dict:
    """The nav shows 'Live' only when sources are configured."""
    return {"has_live_sources": len(kiosk().capture) > 0}


@live_pages.get("/live")
def live_index():
    return render_template("sources.html", sources=list(kiosk().capture), devices=list_video_devices())


def _live_page(src: LiveSource, error: str | None = None) -> str:
    k = kiosk()
    return render_template("live.html", source=src, exam=k.exams.resolve(src.exam_id), operator=k.default_operator(),
                           error=error)


@live_pages.get("/live/<source_id>")
def live_page(source_id: str):
    return _live_page(_source(source_id))


@live_pages.post("/live/<source_id>/capture")
def live_capture(source_id: str):
    src = _source(source_id)
    try:
        study = kiosk().capture_study(source_id, request.form.get("reference"), request.form.get("operator"))
    except KioskError as exc:
        return _live_page(src, exc.message), exc.status
    return redirect(url_for("pages.result", study_id=study.id, saved=1), 303)
