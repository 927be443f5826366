"""The DICOM objects a triaged study is reported back with, built by highdicom in a new series that
references the received instance (which is never altered):

- a Comprehensive SR: the finding, the urgent class's probability, the triage category, the
  quality verdict, the model's in-domain check where the bundle has one, and the algorithm (model
  id, version, sha256), with the kiosk and the model in the Contributing Equipment Sequence; an
  UNGRADABLE study's finding is the line every screen shows ("Cannot assess: this does not look
  like a chest X-ray"), with no probability;
- a Secondary Capture of the heatmap overlay, with RESEARCH_BANNER burned into the pixels and in
  the Series Description when the bundle is research-only.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version

import cv2
import highdicom as hd
import numpy as np
import pydicom
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from device.core.store import StudyRecord
from device.decision import heatmap
from device.decision.triage import cannot_assess, reasons_text, shown_reasons
from models.bundle import Manifest

RESEARCH_BANNER = "RESEARCH USE ONLY - NOT FOR DIAGNOSIS"
MANUFACTURER = "Bedside"
SC_MAX_SIDE = 1024  # the overlay is a visual aid: no need to send it at the film's resolution
SR_SERIES, SC_SERIES = 9001, 9002  # series numbers well away from a modality's own

# Concepts without a standard code get the kiosk's private coding scheme (99 prefix: local).
_SCHEME = "99BEDSIDE"
REPORT = CodedConcept("126000", "DCM", "Imaging Measurement Report")
FINDING = CodedConcept("121071", "DCM", "Finding")
PROBABILITY = CodedConcept("PROB", _SCHEME, "Probability of the urgent finding")
TRIAGE = CodedConcept("TRIAGE", _SCHEME, "Triage category")
QUALITY = CodedConcept("QUALITY", _SCHEME, "Image quality verdict")
IN_DOMAIN = CodedConcept("INDOMAIN", _SCHEME, "In-domain check")
ALGORITHM_NAME = CodedConcept("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = CodedConcept("111003", "DCM", "Algorithm Version")
MODEL_SHA256 = CodedConcept("SHA256", _SCHEME, "Model file SHA-256")
DISCLAIMER = CodedConcept("DISCLAIMER", _SCHEME, "Intended use")
OPERATING_POINT = CodedConcept("OPPOINT", _SCHEME, "Operating point")
PROCESSING_EQUIPMENT = CodedConcept("109102", "DCM", "Processing Equipment")
NO_UNITS = CodedConcept("1", "UCUM", "no units")
PLACEHOLDER_ORIENTATION = ("A", "F")  # only to satisfy highdicom's check; blanked right after


@dataclass(frozen=True)
class ResultObjects:
    sr: pydicom.Dataset
    sc: pydicom.Dataset | None  # None where the model gives no heatmap


def result_objects(source: pydicom.Dataset, pixels: np.ndarray, study: StudyRecord, manifest: Manifest
                   ) -> ResultObjects:
    """``source``: the received instance's header; ``pixels``: its decoded image (for the overlay)."""
    equipment = [_equipment(study)]
    sr = _report(source, study, manifest, equipment)
    sc = None if study.cam is None else _heatmap(source, pixels, study, manifest, equipment)
    return ResultObjects(sr, sc)


def _equipment(study: StudyRecord) -> hd.ContributingEquipment:
    m = study.model
    return hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=PROCESSING_EQUIPMENT,
        manufacturer_model_name=m.id,
        software_versions=[f"bedside {version('bedside')}", f"{m.id} {m.version}", m.sha256],  # LO: 64 characters
    )


def _report(source: pydicom.Dataset, study: StudyRecord, manifest: Manifest, equipment: list) -> hd.sr.ComprehensiveSR:
    issues = study.result.get("quality", {}).get("issues", [])
    verdict = reasons_text(issues) or "ok"
    # An UNGRADABLE study has no finding and no score (as on every screen): the verdicts say why.
    graded = study.probability is not None
    finding = study.label if graded else cannot_assess(shown_reasons(study.result))
    items = [
        hd.sr.TextContentItem(FINDING, finding[:1024], relationship_type="CONTAINS"),
        *([hd.sr.NumContentItem(PROBABILITY, round(float(study.probability), 6), NO_UNITS,
                                relationship_type="CONTAINS")] if graded else []),
        hd.sr.TextContentItem(TRIAGE, study.triage, relationship_type="CONTAINS"),
        hd.sr.TextContentItem(QUALITY, verdict[:1024], relationship_type="CONTAINS"),
        *([hd.sr.TextContentItem(IN_DOMAIN, in_domain_text(study.result["refusal"])[:1024],
                                 relationship_type="CONTAINS")] if "refusal" in study.result else []),
        hd.sr.TextContentItem(ALGORITHM_NAME, study.model.id, relationship_type="CONTAINS"),
        hd.sr.TextContentItem(ALGORITHM_VERSION, study.model.version, relationship_type="CONTAINS"),
        hd.sr.TextContentItem(MODEL_SHA256, study.model.sha256, relationship_type="CONTAINS"),
        hd.sr.TextContentItem(OPERATING_POINT, operating_point_words(study)[:1024], relationship_type="CONTAINS"),
    ]
    if manifest.research_only:
        items.append(hd.sr.TextContentItem(DISCLAIMER, f"{RESEARCH_BANNER}: {manifest.disclaimer}"[:1024],
                                           relationship_type="CONTAINS"))
    root = hd.sr.ContainerContentItem(REPORT)
    root.ContentSequence = hd.sr.ContentSequence(items)
    sr = hd.sr.ComprehensiveSR(
        evidence=[source], content=root, series_instance_uid=generate_uid(), series_number=SR_SERIES,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
        contributing_equipment=equipment,
    )
    sr.SeriesDescription = _description("Bedside triage report", manifest)
    return sr


def operating_point_words(study: StudyRecord) -> str:
    """The threshold the study was decided at and whose it is (the site's accepted one or the model's own)."""
    op = study.result.get("operating_point")
    text = op["text"] if op else "The model's own operating point"
    return f"P >= {study.threshold:.4f}: {text}"


def in_domain_text(refusal: dict) -> str:
    """The model's in-domain check as the SR and FHIR state it: refused or accepted, with each score."""
    scores = "; ".join(f"{c['name']} {c['value']:.4g}, limit {c['threshold']:.4g}" for c in refusal["checks"])
    if refusal["refused"]:
        return f"Refused: this does not look like {refusal['subject']} ({scores})"
    return f"Accepted as {refusal['subject']} ({scores})"


def _heatmap(source: pydicom.Dataset, pixels: np.ndarray, study: StudyRecord, manifest: Manifest,
             equipment: list) -> hd.sc.SCImage:
    rgb = heatmap.overlay(pixels, study.cam, contract=manifest.input)
    scale = SC_MAX_SIDE / max(rgb.shape[:2])
    if scale < 1:
        rgb = cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    if manifest.research_only:
        rgb = burn_in(rgb, RESEARCH_BANNER)
    orientation = _orientation(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        source, np.ascontiguousarray(rgb), "RGB", 8, "PATIENT", series_instance_uid=generate_uid(),
        series_number=SC_SERIES, sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
        patient_orientation=orientation or PLACEHOLDER_ORIENTATION, transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
        contributing_equipment=equipment,
    )
    if orientation is None:
        # highdicom insists on an orientation for patient images; DICOM lets it be empty when unknown
        # (Type 2C), and a received film without one must not be sent back claiming one.
        sc.PatientOrientation = ""
    sc.SeriesDescription = _description("Bedside heatmap", manifest)
    sc.BurnedInAnnotation = "YES" if manifest.research_only else "NO"
    return sc


def burn_in(rgb: np.ndarray, text: str) -> np.ndarray:
    """``text`` in white on a black band across the top, sized to the image's width."""
    out = rgb.copy()
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, max(1, rgb.shape[1] // 500)
    (w, h), _ = cv2.getTextSize(text, font, 1.0, thickness)
    scale = 0.9 * rgb.shape[1] / w
    band = int(h * scale * 1.8)
    out[:band] = 0
    cv2.putText(out, text, (int(0.05 * rgb.shape[1]), int(band * 0.75)), font, scale, (255, 255, 255), thickness,
                cv2.LINE_AA)
    return out


def _description(what: str, manifest: Manifest) -> str:
    return f"{what} - {RESEARCH_BANNER}" if manifest.research_only else what


def _orientation(source: pydicom.Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation where it states one validly (the overlay is not rotated):
    two values, each of the letters A, P, R, L, H, F (highdicom refuses anything else)."""
    value = source.get("PatientOrientation")
    if value is None or len(value) != 2:
        return None
    row, column = str(value[0]), str(value[1])
    if not all(v and set(v) <= set("APRLHF") for v in (row, column)):
        return None
    return row, column
