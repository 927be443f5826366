"""The triage policy and its result: a model's probabilities become URGENT or ROUTINE under the
bundle's operating point (UNGRADABLE where the image failed its quality checks), and the result
records exactly which model decided.

Everything model-specific (labels, threshold, urgent labels) comes from the bundle manifest; the
model is run elsewhere (device/runtime/triager.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from device.decision import quality
from models.bundle import Manifest

URGENT, ROUTINE, UNGRADABLE = "URGENT", "ROUTINE", "UNGRADABLE"
TRIAGE_ORDER = (URGENT, UNGRADABLE, ROUTINE)  # the categories, most urgent first (lists sort by it)
# Where an UNGRADABLE result document keeps what the model said: for audit only. The image failed
# the quality checks, so the numbers describe nothing a clinician should read.
UNGRADED_OUTPUT = "ungraded_model_output"


def withhold_ungraded(document: dict, probability: float | None) -> dict:
    """An UNGRADABLE result document with its score, probabilities and label moved under
    UNGRADED_OUTPUT (and None where they were), so no screen or client reads them as a finding."""
    document[UNGRADED_OUTPUT] = {"probabilities": document["probabilities"], "probability": probability,
                                 "label": document["label"]}
    document["probabilities"] = document["probability"] = document["label"] = None
    return document


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


@dataclass(frozen=True)
class TriageResult:
    source: str
    label: str
    probabilities: dict[str, float]
    urgent_probability: float  # P(urgent) as the bundle's policy combines the probabilities
    triage: str
    threshold: float
    quality: quality.QualityReport
    model: ModelRef
    timings_ms: dict[str, float]
    image_notes: tuple[str, ...] = ()
    cam: np.ndarray | None = field(default=None, repr=False, compare=False)
    batch_size: int = 1  # studies run through the model together with this one (a burst)

    @property
    def latency_ms(self) -> float:
        return sum(self.timings_ms.values())

    def as_json(self) -> dict:
        return {
            "file": self.source,
            "label": self.label,
            "probabilities": self.probabilities,
            "urgent_probability": self.urgent_probability,
            "triage": self.triage,
            "threshold": self.threshold,
            "quality": self.quality.as_dict(),
            "model": self.model.as_dict(),
            "latency_ms": round(self.latency_ms, 3),
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "image_notes": list(self.image_notes),
            "batch_size": self.batch_size,
        }


def decide(probs: np.ndarray, manifest: Manifest, gradable: bool) -> tuple[str, str]:
    """(label, triage category) for one probability vector under the bundle's policy: the label is
    the likeliest of the urgent labels when P(urgent) reaches the threshold, else of the others."""
    urgent = manifest.urgent_indices
    if manifest.urgent_probability(probs) >= manifest.policy.operating_point.threshold:
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
