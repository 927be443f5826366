"""The optional FHIR result of a triaged DICOM study: a DiagnosticReport and the Observation it
points to, in one transaction Bundle (JSON, built and validated by fhir.resources), queued in the
same outbox as the DICOM objects and delivered to a folder (one file per Bundle) or POSTed to an
HTTP endpoint.

fhir.resources ships the R4 line as R4B (4.3.0, the R4 ballot update; fhir.resources 6, the last
with 4.0.1, needs pydantic 1); every element used here is unchanged from R4 (4.0.1).

Re-sending is harmless: each entry is a conditional create (ifNoneExist on its identifier), so a
server that stored a Bundle before the kiosk saw its answer creates nothing the second time.
UNGRADABLE studies carry the category and the reason, never a score (as on every screen).
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
import uuid
from importlib.metadata import version
import pydicom
from fhir.resources.R4B.bundle import Bundle

from device.core.settings.dicom import FhirDestination
from device.core.store import StudyRecord
from device.decision.triage import cannot_assess, reasons_text, shown_reasons
from device.dicom.results import MANUFACTURER, RESEARCH_BANNER, in_domain_text
from models import atomic
from models.bundle import Manifest

KIND = "FHIR R4 Bundle"  # the outbox's sop_class for a Bundle; its sop_instance_uid is the Bundle's id (a UUID)
URI = "urn:ietf:rfc:3986"  # identifiers whose values are URIs (urn:oid:...)
UCUM = "http://unitsofmeasure.org"
CATEGORY_IMAGING = {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging"}
SECTION_RADIOLOGY = {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}
RETRYABLE_HTTP = {408, 425, 429}  # with every 5xx: the endpoint may take it later


class NotDelivered(Exception):
    """The endpoint or folder cannot take it now; the outbox tries again."""


class Refused(Exception):
    """The endpoint refused the Bundle for good (a 4xx): sending it again will not help."""


def report_bundle(source: pydicom.Dataset, study: StudyRecord, manifest: Manifest) -> tuple[str, bytes]:
    """(the Bundle's id, its JSON) for a study made from the received ``source`` header; raises
    pydantic's ValidationError where a resource would not be valid FHIR."""
    bundle_id, observation_url, report_url = (str(uuid.uuid4()) for _ in range(3))
    observation_url, report_url = f"urn:uuid:{observation_url}", f"urn:uuid:{report_url}"
    finding = manifest.finding
    subject = {"identifier": {"value": str(source.get("PatientID", "")) or "unknown"},
               "display": str(source.get("PatientName", "")) or "unknown"}
    imaging_study = {"type": "ImagingStudy", "identifier": {"system": URI, "value": f"urn:oid:{source.StudyInstanceUID}"}}
    m = study.model
    algorithm = f"{m.id} {m.version} (sha256 {m.sha256}) on {MANUFACTURER} {version('bedside')}"
    observation = {
        "resourceType": "Observation",
        "identifier": [{"system": URI, "value": observation_url}],
        "status": "preliminary",  # a machine's triage: a person reviews it
        "category": [{"coding": [CATEGORY_IMAGING]}],
        "code": {"text": f"AI triage for {finding}"},
        "subject": subject,
        "effectiveDateTime": study.created_at,
        "issued": study.created_at,
        "valueCodeableConcept": {"text": study.triage},
        "method": {"text": algorithm},
        "derivedFrom": [imaging_study],
        "note": [{"text": _verdict(study)}],
    }
    if study.probability is not None:  # an UNGRADABLE study has none
        observation["component"] = [{
            "code": {"text": f"Model score for {finding} (0 to 1; operating point {study.threshold:.4f})"},
            "valueQuantity": {"value": round(float(study.probability), 6), "unit": "1", "system": UCUM, "code": "1"},
        }]
    report = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": URI, "value": report_url}],
        "status": "preliminary",
        "category": [{"coding": [SECTION_RADIOLOGY]}],
        "code": {"text": f"{manifest.title}: AI triage"},
        "subject": subject,
        "effectiveDateTime": study.created_at,
        "issued": study.created_at,
        "imagingStudy": [imaging_study],
        "result": [{"reference": observation_url}],
        "conclusion": _conclusion(study, finding, manifest),
    }
    bundle = Bundle.model_validate({
        "resourceType": "Bundle", "id": bundle_id, "type": "transaction",
        "entry": [_entry(observation_url, observation), _entry(report_url, report)],
    })
    return bundle_id, bundle.model_dump_json().encode()


def _entry(full_url: str, resource: dict) -> dict:
    (identifier,) = resource["identifier"]
    return {"fullUrl": full_url, "resource": resource, "request": {
        "method": "POST", "url": resource["resourceType"],
        "ifNoneExist": f"identifier={identifier['system']}|{identifier['value']}"}}


def _verdict(study: StudyRecord) -> str:
    issues = study.result.get("quality", {}).get("issues", [])
    text = f"Image quality: {reasons_text(issues) or 'ok'}"
    if "refusal" in study.result:
        text += f". In-domain check: {in_domain_text(study.result['refusal'])}"
    return text


def _conclusion(study: StudyRecord, finding: str, manifest: Manifest) -> str:
    line = {"URGENT": f"Suspected {finding} - review first", "ROUTINE": f"No {finding} pattern found"}.get(
        study.triage) or cannot_assess(shown_reasons(study.result))
    research = f" {RESEARCH_BANNER}." if manifest.research_only else ""
    return f"{study.triage}: {line}.{research}"


def deliver(destination: FhirDestination, bundle_id: str, data: bytes, tls: ssl.SSLContext | None = None) -> None:
    """Write or POST one Bundle; raises NotDelivered (try again) or Refused (for good). ``tls``: the
    context an https:// url is checked with (None: the system's CAs)."""
    if destination.folder is not None:
        try:
            destination.folder.mkdir(parents=True, exist_ok=True)
            atomic.write_bytes(destination.folder / f"{bundle_id}.json", data)
        except OSError as exc:
            raise NotDelivered(f"cannot write to {destination.folder}: {exc.strerror or exc}") from None
        return
    request = urllib.request.Request(destination.url, data=data, method="POST", headers={
        "Content-Type": "application/fhir+json", "Accept": "application/fhir+json"})
    try:
        with urllib.request.urlopen(request, timeout=destination.timeout_s, context=tls) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        why = f"{destination.url} answered {exc.code} {exc.reason}: {exc.read(300).decode(errors='replace')}"
        if exc.code >= 500 or exc.code in RETRYABLE_HTTP:
            raise NotDelivered(why) from None
        raise Refused(why) from None
    except (urllib.error.URLError, OSError) as exc:  # refused, unreachable, timed out
        reason = getattr(exc, "reason", exc)
        raise NotDelivered(f"cannot reach {destination.url}: {reason}") from None
