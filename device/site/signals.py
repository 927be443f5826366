"""What the drift monitor and the acceptance sample watch of one result, named as models/drift.py
names the reference's signals: P(urgent) (shown, or kept apart on an UNGRADABLE result), each
refusal check's score where the bundle has refusal checks, and the model input's image statistics.
One definition for a live result and for a saved result document, so a window rebuilt from the
store at start holds what the live one held."""

from __future__ import annotations

from collections.abc import Mapping

from device.decision.triage import UNGRADED_OUTPUT, TriageResult
from models.drift import IMAGE, P_URGENT, REFUSAL


def signals_of(result: TriageResult) -> dict[str, float]:
    """A live result's signals."""
    signals = {P_URGENT: result.model_output.urgent_probability}
    if result.refusal is not None:
        signals.update({REFUSAL + c.name: c.value for c in result.refusal.checks})
    signals.update({IMAGE + k: v for k, v in result.image_statistics.items()})
    return signals


def signals_of_document(document: Mapping) -> dict[str, float]:
    """The same, from a saved result document (TriageResult.as_json(), or the study's, which the store keeps)."""
    p = document.get("urgent_probability", document.get("probability"))
    if p is None:
        p = (document.get(UNGRADED_OUTPUT) or {}).get("probability")
    signals = {} if p is None else {P_URGENT: p}
    signals.update({REFUSAL + c["name"]: c["value"] for c in (document.get("refusal") or {}).get("checks", [])})
    signals.update({IMAGE + k: v for k, v in (document.get("image_statistics") or {}).items()})
    return signals
