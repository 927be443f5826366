"""The JSON API's DICOM part: what a study's received instances said in their headers (patient,
accession, study date, modality, UIDs, calling AE), the instances kept without triage (no exam for
them), the SCP's log of refusals and stores, and the outbox (a failed item retried)."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from device.appliance.context import current_appliance
from device.core.errors import NotFound

dicom_api = Blueprint("dicom_api", __name__, url_prefix="/api/v1")
EVENTS_SHOWN = 200


@dicom_api.get("/studies/<int:study_id>/dicom")
def study_instances(study_id: int):
    appliance = current_appliance()
    appliance.studies.get(study_id)  # 404 for a study that does not exist
    return jsonify({"instances": appliance.store.dicom_instances(study_id)})


@dicom_api.get("/dicom/not-triaged")
def not_triaged():
    """Instances stored and acknowledged that no exam triages, newest first: ``{instances, total}``."""
    limit = min(max(request.args.get("limit", 100, type=int), 1), 500)
    offset = max(request.args.get("offset", 0, type=int), 0)
    rows, total = current_appliance().store.untriaged(limit, offset)
    return jsonify({"instances": rows, "total": total, "limit": limit, "offset": offset})


@dicom_api.get("/dicom/events")
def events():
    """The newest EVENTS_SHOWN entries of the SCP's log, newest first."""
    return jsonify({"events": current_appliance().store.dicom_events(EVENTS_SHOWN)})


@dicom_api.get("/outbox")
def outbox():
    """What is queued for the destinations, newest first (see device/dicom/outbox.py for the states)."""
    node = current_appliance().dicom
    if node is None:
        raise NotFound("DICOM is off: [dicom] port is not set")
    return jsonify({"items": node.outbox.items()})


@dicom_api.post("/outbox/<int:item_id>/retry")
def retry(item_id: int):
    """Try a failed item again (a result never built is built again): ``{done}``."""
    node = current_appliance().dicom
    if node is None:
        raise NotFound("DICOM is off: [dicom] port is not set")
    return jsonify({"done": node.retry(item_id), "item": node.outbox.item(item_id)})
