"""The triage policy and its result: a model's probabilities become URGENT or ROUTINE under the
bundle's operating point (UNGRADABLE where the image failed its quality checks or the model refused
it, device/decision/refusal.py), and the result records exactly which model decided.

Everything model-specific (labels, threshold, urgent labels) comes from the bundle manifest; the
model is run elsewhere (device/runtime/triager.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from device.decision import quality
from device.decision.operating_point import OperatingPoint
from device.decision.refusal import RefusalReport, reasons
from models.bundle import Manifest

URGENT, ROUTINE, UNGRADABLE = "URGENT", "ROUTINE", "UNGRADABLE"
TRIAGE_ORDER = (URGENT, UNGRADABLE, ROUTINE)  # the categories, most urgent first (lists sort by it)
# Where an UNGRADABLE result keeps what the model said: for audit only. The image failed the
# quality checks or was refused, so the numbers describe nothing a clinician should read.
UNGRADED_OUTPUT = "ungraded_model_output"
NOT_JUDGED = "the image failed the quality checks"  # the reason of an UNGRADABLE result that names none


def shown_reasons(document: dict) -> list[dict]:
    """Why a stored result (its ``as_json()`` document) is UNGRADABLE, each ``{code, message, action,
    detail}``: its ``reasons``, or for a document saved before results held them, its quality issues."""
    if "reasons" in document:
        return document["reasons"]
    return document.get("quality", {}).get("issues", [])


def cannot_assess(reasons: list[dict]) -> str:
    """The one line an UNGRADABLE result is shown with everywhere (screen, live view, SR, FHIR, the
    command line): 'Cannot assess: this does not look like a chest X-ray'."""
    if not reasons:
        return f"Cannot assess: {NOT_JUDGED}"
    message = reasons[0]["message"]
    return f"Cannot assess: {message[:1].lower()}{message[1:]}"


def reasons_text(reasons: list[dict]) -> str:
    """Each reason with what to do and its figures, for a report read away from the screen (SR, FHIR)."""
    return "; ".join(f"{r['message']}. {r['action']}" + (f" ({r['detail']})" if r.get("detail") else "")
                     for r in reasons)


@dataclass(frozen=True)
class ModelRef:
    """Exactly which model decided: enough to trace any result back to a file."""

    id: str
    version: str
    sha256: str
    precision: str
    backend: str

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "version": self.version,
            "sha256": self.sha256,
            "precision": self.precision,
            "backend": self.backend,
        }


@dataclass(frozen=True, kw_only=True)
class ModelOutput:
    """What the model said of one image: the likeliest label under the policy, every label's
    probability, and P(urgent) as the bundle's policy combines them."""

    label: str
    probabilities: dict[str, float]
    urgent_probability: float

    def as_json(self) -> dict:
        return {"probabilities": self.probabilities, "probability": self.urgent_probability, "label": self.label}


@dataclass(frozen=True, kw_only=True)
class TriageResult:
    """One image's result. An UNGRADABLE one carries no label, score or heatmap: the image failed its
    quality checks or the model refused it (``refusal``), and a number or a map on it would read as a finding. What the model said is kept
    apart (``ungraded_output``), for audit only. Made with ``of``; refused at construction otherwise,
    so every output (the study, the store, live results, DICOM SR, FHIR) only renders what it holds."""

    source: str
    triage: str
    threshold: float
    quality: quality.QualityReport
    model: ModelRef
    timings_ms: dict[str, float]
    label: str | None = None
    probabilities: dict[str, float] | None = None
    urgent_probability: float | None = None
    ungraded_output: ModelOutput | None = None
    image_notes: tuple[str, ...] = ()
    cam: np.ndarray | None = field(default=None, repr=False, compare=False)
    batch_size: int = 1  # studies run through the model together with this one (a burst)
    refusal: RefusalReport | None = None  # the model's own checks, where the bundle has them
    operating_point: OperatingPoint | None = None  # the one it was decided at (threshold is its threshold)
    # The model input's image statistics (models/drift.py), for the drift monitor; never a finding.
    image_statistics: dict[str, float] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.triage not in TRIAGE_ORDER:
            raise ValueError(f"unknown triage category {self.triage!r}")
        shown = (self.label, self.probabilities, self.urgent_probability)
        if self.triage == UNGRADABLE:
            if any(v is not None for v in shown) or self.cam is not None:
                raise ValueError("an UNGRADABLE result carries no label, score or heatmap (see ungraded_output)")
        elif any(v is None for v in shown) or self.ungraded_output is not None or self.reasons:
            raise ValueError(f"a {self.triage} result carries its label and scores, no ungraded output, and no "
                             "reason not to judge the image")

    @property
    def reasons(self) -> tuple[quality.QualityIssue, ...]:
        """Why the image is not judged (its quality issues, else the refusal); empty when it is."""
        return reasons(self.quality, self.refusal)

    @classmethod
    def of(cls, output: ModelOutput, triage: str, cam: np.ndarray | None = None, **fields) -> "TriageResult":
        """The result of ``output`` in category ``triage``; an UNGRADABLE one keeps the output apart."""
        if triage == UNGRADABLE:
            return cls(triage=triage, ungraded_output=output, **fields)
        return cls(triage=triage, label=output.label, probabilities=output.probabilities,
                   urgent_probability=output.urgent_probability, cam=cam, **fields)

    @property
    def model_output(self) -> ModelOutput:
        """What the model said, whether it is shown or kept apart."""
        if self.ungraded_output is not None:
            return self.ungraded_output
        return ModelOutput(label=self.label, probabilities=self.probabilities, urgent_probability=self.urgent_probability)

    def withheld(self, report: quality.QualityReport) -> "TriageResult":
        """This result, UNGRADABLE under ``report`` (a failed quality report: a camera frame's checks)."""
        return TriageResult.of(
            self.model_output, UNGRADABLE, source=self.source, threshold=self.threshold, quality=report,
            model=self.model, timings_ms=self.timings_ms, image_notes=self.image_notes, batch_size=self.batch_size,
            refusal=self.refusal, operating_point=self.operating_point, image_statistics=self.image_statistics,
        )

    @property
    def latency_ms(self) -> float:
        return sum(self.timings_ms.values())

    def as_json(self) -> dict:
        out = {
            "file": self.source,
            "label": self.label,
            "probabilities": self.probabilities,
            "urgent_probability": self.urgent_probability,
            "triage": self.triage,
            "threshold": self.threshold,
            "quality": self.quality.as_dict(),
            "reasons": [i.as_dict() for i in self.reasons],
            "model": self.model.as_dict(),
            "latency_ms": round(self.latency_ms, 3),
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "image_notes": list(self.image_notes),
            "batch_size": self.batch_size,
        }
        if self.ungraded_output is not None:
            out[UNGRADED_OUTPUT] = self.ungraded_output.as_json()
        if self.refusal is not None:
            out["refusal"] = self.refusal.as_json()
        if self.operating_point is not None:
            out["operating_point"] = self.operating_point.as_json()
        if self.image_statistics:
            out["image_statistics"] = {k: round(v, 6) for k, v in self.image_statistics.items()}
        return out


def decide(probs: np.ndarray, manifest: Manifest, gradable: bool, threshold: float | None = None) -> tuple[str, str]:
    """(label, triage category) for one probability vector under the bundle's policy at ``threshold``
    (default: the bundle's own operating point): the label is the likeliest of the urgent labels when
    P(urgent) reaches the threshold, else of the others."""
    urgent = manifest.urgent_indices
    if threshold is None:
        threshold = manifest.policy.operating_point.threshold
    if manifest.urgent_probability(probs) >= threshold:
        group, category = urgent, URGENT
    else:
        group, category = [i for i in range(len(manifest.labels)) if i not in urgent], ROUTINE
    return manifest.labels[max(group, key=lambda i: probs[i])], (category if gradable else UNGRADABLE)


def urgent_map(cam: np.ndarray, manifest: Manifest) -> np.ndarray:
    """(N, labels, h, w) class-activation maps -> (N, h, w) map of the urgent group: the
    log-sum-exp of its labels' maps (the map itself for a group of one)."""
    maps = cam[:, manifest.urgent_indices].astype(np.float64)
    top = maps.max(axis=1)
    return (top + np.log(np.exp(maps - top[:, None]).sum(axis=1))).astype(np.float32)
