"""The pages a clinician touches: home, new study, result, history, settings, and the live view of
each capture source (video with the triage drawn on it, and one big Capture button).

Plain HTML forms with POST-redirect-GET, so every action works with the keyboard; csrf.js adds the
CSRF token every form post must carry (security.py), kiosk.js drag and drop, the heatmap toggle and a
busy state.
"""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, url_for

from device.appliance.context import current_appliance
from device.capture.devices import list_video_devices
from device.capture.manager import LiveSource
from device.core.errors import BadRequest, KioskError, OtherPatient
from device.decision.refusal import WRONG_EXAM
from device.decision.triage import TRIAGE_ORDER, UNGRADABLE, shown_reasons
from device.dicom.shown import facts_of
from device.kiosk.params import study_filter

pages = Blueprint("pages", __name__)
MAX_OFFSET = 2**62
UNDO_SHOWN_S = 10  # how long the result page offers Undo after Mark reviewed (kiosk.js counts it down)


def _new_study_page(status: int = 200, error: str | None = None, error_kind: str | None = None):
    """The form again, with the reason when a study was refused (``error_kind``: the intake kind)."""
    k = current_appliance()
    exam_id = request.values.get("exam", "")  # "": the exam that takes the image (study_service.py)
    return render_template(
        "new.html",
        exams=list(k.exams),
        exam_id=exam_id,
        importable=k.studies.importable(),
        import_folders=k.config.media.import_folders,
        operator=k.studies.default_operator(),
        reference=request.values.get("reference", ""),
        require_reference=k.config.ui.require_reference,
        error=error,
        error_kind=error_kind,
    ), status


def _page_number() -> int:
    """?page=N (from 1), kept within SQLite's integers for any page size."""
    try:
        page = max(1, int(request.values.get("page", "1") or 1))
    except ValueError:
        raise BadRequest("page must be a number") from None
    return min(page, MAX_OFFSET // current_appliance().config.ui.page_size)


def _dicom_facts(studies, with_instances: bool = False) -> dict:
    """What came with each study by DICOM (patient, accession, send state), by study id."""
    k = current_appliance()
    return facts_of(k.store, k.dicom and k.dicom.outbox, [s.id for s in studies], with_instances)


def _worklist_args() -> dict:
    k = current_appliance()
    size, page = k.config.ui.page_size, _page_number()
    studies, total = k.store.worklist(size, (page - 1) * size)
    return {"studies": studies, "total": total, "page": page, "pages": max(1, -(-total // size)),
            "counts": k.store.unreviewed_counts(), "dicom": _dicom_facts(studies),
            "not_triaged": k.store.untriaged(1)[1]}


@pages.get("/")
def home():
    return render_template("home.html", exams=list(current_appliance().exams), **_worklist_args())


@pages.get("/worklist")
def worklist_panel():
    """The home screen's worklist alone: kiosk.js fetches it to show new studies without a reload."""
    return render_template("_worklist.html", **_worklist_args()), 200, {"Cache-Control": "no-store"}


@pages.get("/studies/new")
def new_study():
    return _new_study_page()


@pages.post("/studies")
def upload_study():
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        return _new_study_page(400, "Choose an image file first.")
    try:
        study = current_appliance().studies.create_study(
            upload.read(), upload.filename, request.form.get("exam"),
            request.form.get("reference"), request.form.get("operator"),
        )
    except OtherPatient as exc:
        return _other_patient_page(exc, "upload")
    except KioskError as exc:
        return _new_study_page(exc.status, exc.message, exc.code)
    return redirect(url_for("pages.result", study_id=study.id, saved=1), 303)


def _other_patient_page(exc: OtherPatient, source: str):
    """A possible patient mix-up: both references, a link to the earlier study, and a choice."""
    k = current_appliance()
    return render_template("other_patient.html", mixup=exc, source=source, exam_id=request.form.get("exam", ""),
                           operator=request.form.get("operator", ""), earlier=k.store.get(exc.earlier_study)), 409


@pages.post("/studies/keep")
def keep_other_patient():
    """The person confirmed that an image saved for another patient belongs to this one too."""
    form = request.form
    study = current_appliance().studies.keep_other_patient(
        form.get("image", ""), form.get("filename", ""), form.get("exam"), form.get("reference"),
        form.get("operator"), form.get("source", "upload"),
    )
    return redirect(url_for("pages.result", study_id=study.id, saved=1), 303)


@pages.post("/studies/import")
def import_studies():
    paths = request.form.getlist("path")
    if not paths:
        return _new_study_page(400, "Tick at least one file to import.")
    try:
        outcome = current_appliance().studies.import_files(
            paths, request.form.get("exam"), request.form.get("reference"), request.form.get("operator")
        )
    except KioskError as exc:
        return _new_study_page(exc.status, exc.message, exc.code)
    if len(outcome) == 1 and not isinstance(outcome[0][1], KioskError):
        return redirect(url_for("pages.result", study_id=outcome[0][1].id, saved=1), 303)
    return render_template("imported.html", outcome=outcome, is_error=lambda r: isinstance(r, KioskError),
                           is_mixup=lambda r: isinstance(r, OtherPatient), exam_id=request.form.get("exam", ""),
                           operator=request.form.get("operator", ""))


@pages.get("/studies/<int:study_id>")
def result(study_id: int):
    k = current_appliance()
    study = k.studies.view(study_id, None)
    exam = next((e for e in k.exams if e.id == study.exam), None)
    reruns = [k.store.get(rerun_id) for rerun_id, _ in k.store.reruns_of(study.id)]
    wrong_exam = study.triage == UNGRADABLE and any(r["code"] in WRONG_EXAM for r in shown_reasons(study.result))
    # the exams this image was run as already: this study's, its reruns', the one it was run from
    tried = {study.exam, *(s.exam for s in reruns), *([k.store.get(study.rerun_of).exam] if study.rerun_of else [])}
    linked = {study.rerun_of, *(s.id for s in reruns)}  # the same image, run as another exam: no mix-up
    same_image = [(i, ref) for i, ref in k.store.studies_with_image(study.image_sha256)
                  if i != study.id and i not in linked]
    return render_template(
        "result.html",
        study=study,
        manifest=k.exams.manifest(study.exam),
        next_case=next((s for s in k.store.worklist(2)[0] if s.id != study.id), None),
        dicom=_dicom_facts([study], with_instances=True).get(study.id),
        exam=exam,
        reruns=reruns,
        run_as=[e for e in k.exams if e.id not in tried] if wrong_exam else [],
        same_image=same_image,
        other_patients=[(i, ref) for i, ref in same_image
                        if ref and study.reference and ref.casefold() != study.reference.casefold()],
        saved=request.args.get("saved") == "1",
        reviewed=request.args.get("reviewed") == "1",
        reopened=request.args.get("reopened") == "1",
        undo_seconds=UNDO_SHOWN_S,
        exported=request.args.get("exported"),
        targets=k.studies.export_choices(),
        operator=k.studies.default_operator(),
    )


@pages.post("/studies/<int:study_id>/review")
def review(study_id: int):
    form = request.form
    current_appliance().studies.review(study_id, form.get("note"), form.get("operator"), form.get("change") == "1")
    return redirect(url_for("pages.result", study_id=study_id, reviewed=1), 303)


@pages.post("/studies/<int:study_id>/run-as")
def run_as(study_id: int):
    study = current_appliance().studies.run_as(study_id, request.form.get("exam"), request.form.get("operator"))
    return redirect(url_for("pages.result", study_id=study.id, saved=1), 303)


@pages.get("/not-triaged")
def not_triaged():
    """Images received by DICOM that no exam triages: kept and acknowledged, listed here."""
    k = current_appliance()
    size, page = k.config.ui.page_size, _page_number()
    rows, total = k.store.untriaged(size, (page - 1) * size)
    return render_template("not_triaged.html", rows=rows, total=total, page=page, pages=max(1, -(-total // size)))


@pages.post("/studies/<int:study_id>/reopen")
def reopen(study_id: int):
    form = request.form
    current_appliance().studies.reopen(study_id, form.get("operator"), form.get("undo") == "1")
    return redirect(url_for("pages.result", study_id=study_id, reopened=1), 303)


@pages.post("/studies/<int:study_id>/export")
def export_study(study_id: int):
    studies = current_appliance().studies
    folder = studies.export_study(study_id, request.form.get("destination"), request.form.get("operator"))
    exported = f"{studies.label_of(folder)}, folder {folder.name}"
    return redirect(url_for("pages.result", study_id=study_id, exported=exported), 303)


def _history_args() -> dict:
    return {
        "triage": [t for t in request.values.getlist("triage") if t],
        "from": request.values.get("from", ""),
        "to": request.values.get("to", ""),
        "q": request.values.get("q", ""),
        "reviewed": request.values.get("reviewed", ""),
    }


@pages.get("/history")
def history():
    return _history_page()


@pages.post("/history/export")
def export_history():
    args = _history_args()
    where = study_filter(args["triage"], args["from"], args["to"], args["q"], args["reviewed"])
    studies = current_appliance().studies
    path, count = studies.export_history(where, request.form.get("destination"), request.form.get("operator"))
    return _history_page(message=f"Exported {count} studies to {studies.label_of(path)}, file {path.name}")


def _history_page(message: str | None = None):
    k = current_appliance()
    args = _history_args()
    size, page = k.config.ui.page_size, _page_number()
    where = study_filter(args["triage"], args["from"], args["to"], args["q"], args["reviewed"])
    studies, total = k.store.list(where, size, (page - 1) * size)
    return render_template(
        "history.html",
        studies=studies,
        dicom=_dicom_facts(studies),
        total=total,
        page=page,
        pages=max(1, -(-total // size)),
        args=args,
        categories=TRIAGE_ORDER,
        targets=k.studies.export_choices(),
        operator=k.studies.default_operator(),
        message=message,
    )


@pages.route("/settings", methods=["GET", "POST"])
def settings():
    k = current_appliance()
    message = None
    if request.method == "POST":
        # Recorded under the operator who was the default until now (the new name when there was none).
        k.studies.set_default_operator(request.form.get("operator"), None)
        message = "Saved."
    return render_template(
        "settings.html",
        operator=k.studies.default_operator(),
        message=message,
        audit=k.store.audit_log(50),
        health=k.health(),
        data_dir=k.config.store.data_dir,
    )


# ---- live capture ------------------------------------------------------------------------------


@pages.app_context_processor
def _every_page() -> dict:
    """The nav shows 'Live' only when sources are configured; base.html sets up the keyboard."""
    k = current_appliance()
    return {"has_live_sources": len(k.capture) > 0, "on_screen_keyboard": k.config.ui.on_screen_keyboard}


@pages.get("/live")
def live_index():
    return render_template("sources.html", sources=list(current_appliance().capture), devices=list_video_devices())


def _live_page(src: LiveSource, error: str | None = None) -> str:
    k = current_appliance()
    return render_template("live.html", source=src, exam=k.exams.resolve(src.exam_id),
                           operator=k.studies.default_operator(), poll_ms=max(200, round(1000 / k.config.capture.view_fps)),
                           require_reference=k.config.ui.require_reference, error=error)


@pages.get("/live/<source_id>")
def live_page(source_id: str):
    return _live_page(current_appliance().live_source(source_id))


@pages.post("/live/<source_id>/capture")
def live_capture(source_id: str):
    src = current_appliance().live_source(source_id)
    frame = request.form.get("frame", "")
    if frame and not frame.isdigit():
        raise BadRequest("frame must be a frame number")
    try:
        study = current_appliance().capture_study(
            source_id, request.form.get("reference"), request.form.get("operator"), int(frame) if frame else None
        )
    except KioskError as exc:
        return _live_page(src, exc.message), exc.status
    return redirect(url_for("pages.result", study_id=study.id, saved=1), 303)
