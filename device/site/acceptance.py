"""A site acceptance: the document `bedside acceptance run` writes (``acceptance.json``), the rule
that proposes a site operating point from the site's own cases (declared by the bundle,
models.bundle.AcceptanceRule), and the checks an acceptance passes before it is applied.

The document keeps every case (file, sha256 of its bytes, label, patient, score, whether it was
gradable, its image statistics), so an apply re-derives the proposed threshold from the cases
themselves: a document whose threshold was edited by hand is refused.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator

from models.bundle import AcceptanceRule, Manifest, MonitoringReference, _Strict, describe_validation_error

KIND = "bedside-acceptance"
SCHEMA_VERSION = 1


class AcceptanceError(Exception):
    """An acceptance that cannot be applied: the message says why in plain words."""


class BundleIdentity(_Strict):
    id: str
    version: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="of the bundle's manifest.json")
    title: str


class Served(_Strict):
    """What the kiosk serves the bundle on here (the acceptance ran through exactly that)."""

    backend: str
    precision: str
    file: str
    file_sha256: str


class Case(_Strict):
    file: str = Field(description="as given: relative to the data folder, or a study id for reviewed studies")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    label: str
    positive: bool = Field(description="of the class whose sensitivity the rule protects")
    urgent: bool = Field(description="of the bundle's urgent group (the monitoring reference's groups)")
    patient: str
    p_urgent: float = Field(ge=0.0, le=1.0)
    gradable: bool = Field(description="false: the kiosk would call it UNGRADABLE (not counted in the metrics)")
    reasons: list[str] = Field(default=[], description="why not gradable, as the kiosk says it")
    triage: str = Field(description="at the bundle's own operating point, as the kiosk would show it")
    aspect: float = Field(gt=0.0, description="width / height as received")
    signals: dict[str, float] = Field(default={}, description="image statistics (models/drift.py) and refusal scores")


class Proposal(_Strict):
    threshold: float = Field(ge=0.0, le=1.0)
    target_sensitivity: float
    sensitivity: float
    specificity: float
    sensitivity_ci: tuple[float, float]
    specificity_ci: tuple[float, float]
    positives: int
    negatives: int


class AcceptanceDocument(_Strict):
    kind: Literal["bedside-acceptance"] = KIND
    schema_version: Literal[1] = SCHEMA_VERSION
    created_at: str
    seconds: float = Field(ge=0.0, description="how long the run took")
    appliance: str
    machine: dict[str, Any]
    bundle: BundleIdentity
    served: Served
    data: dict[str, Any] = Field(description="where the cases came from, unreadable files and their reasons")
    rule: AcceptanceRule
    rule_declared: bool = Field(description="false: the bundle declares none, the default was used")
    positive_class: str = Field(description="in words: the urgent group's labels, or the focus label")
    cases: list[Case]
    figures: dict[str, Any]
    proposal: Proposal | None = None
    refused: str | None = Field(default=None, description="why no site point is proposed, in plain words")
    monitoring: MonitoringReference | None = Field(
        default=None, description="the cases' signals, binned: the drift monitor's reference once applied")

    @model_validator(mode="after")
    def _one_outcome(self) -> "AcceptanceDocument":
        if (self.proposal is None) == (self.refused is None):
            raise ValueError("an acceptance either proposes a site operating point or says why not, never both")
        return self

    @property
    def judged(self) -> list[Case]:
        return [c for c in self.cases if c.gradable]


def read_document(data: bytes, name: str = "acceptance.json") -> AcceptanceDocument:
    try:
        return AcceptanceDocument.model_validate_json(data)
    except ValidationError as exc:
        raise AcceptanceError(f"{name} is not an acceptance made by `bedside acceptance run`: "
                              f"{describe_validation_error(exc)}") from None


def positive_words(manifest: Manifest, rule: AcceptanceRule) -> str:
    """What the rule's positive cases are, in the words the screens use (the finding, or the focus label)."""
    if rule.on == "focus_label":
        return manifest.label_name(manifest.policy.focus_label)
    return manifest.finding


# ---- the rule ------------------------------------------------------------------------------------


def threshold_for(y: np.ndarray, p: np.ndarray, target: float) -> float:
    """The highest threshold whose sensitivity on these cases is at least ``target``, placed midway to
    the next lower score (which changes no case here, and leaves a case just below the lowest kept
    positive on the safe side)."""
    positives = np.sort(p[y])[::-1]
    keep = math.ceil(target * len(positives) - 1e-9)
    at = positives[keep - 1]
    lower = p[p < at]
    return float((at + lower.max()) / 2) if lower.size else float(at)


def rates(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float]:
    called = p >= threshold
    return float(called[y].mean()), float((~called[~y]).mean())


def rule_words(rule: AcceptanceRule, positive: str) -> str:
    """The rule, stated."""
    return (f"the highest threshold that keeps sensitivity for {positive} at or above "
            f"{rule.sensitivity_floor + rule.margin:.3f} on these cases (the floor {rule.sensitivity_floor:.3f} "
            f"plus a margin of {rule.margin:.3f} for the sample's own error); at least {rule.min_positive} "
            f"cases of {positive} and {rule.min_negative} others are needed, and the point is refused when "
            f"keeping the floor leaves specificity below {rule.min_specificity:.2f}")


def refusal(y: np.ndarray, p: np.ndarray, rule: AcceptanceRule, positive: str) -> str | None:
    """Why the rule proposes nothing on these cases, or None."""
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos < rule.min_positive or n_neg < rule.min_negative:
        return (f"The sample is too small to say anything: the rule needs at least {rule.min_positive} cases of "
                f"{positive} and {rule.min_negative} others that the kiosk can judge; this set has {n_pos} and "
                f"{n_neg}. With fewer, one missed case moves sensitivity by more than two points. Add cases and "
                "run it again.")
    target = rule.sensitivity_floor + rule.margin
    threshold = threshold_for(y, p, target)
    _, specificity = rates(y, p, threshold)
    if specificity < rule.min_specificity:
        return (f"The floor cannot be met here: to keep sensitivity for {positive} at {target:.3f} the model would "
                f"also flag {1 - specificity:.0%} of the other cases (specificity {specificity:.2f}; the rule "
                f"allows no less than {rule.min_specificity:.2f}). The model does not separate this site's cases "
                "well enough: keep its own operating point and contact the model's team.")
    return None


def check(document: AcceptanceDocument, manifest: Manifest, bundle_sha256: str) -> None:
    """Refuse (AcceptanceError) what must not be applied to the bundle served: another bundle's, one
    that proposes nothing, one whose proposed threshold does not follow from its own cases."""
    b = document.bundle
    if b.sha256 != bundle_sha256:
        raise AcceptanceError(
            f"this acceptance is for {b.id} {b.version} (bundle sha256 {b.sha256[:12]}...), but the kiosk serves "
            f"{manifest.id} {manifest.version} (sha256 {bundle_sha256[:12]}...): run the acceptance again on this bundle")
    if document.proposal is None:
        raise AcceptanceError(f"this acceptance proposes no site operating point: {document.refused}")
    judged = document.judged
    y = np.array([c.positive for c in judged], dtype=bool)
    p = np.array([c.p_urgent for c in judged])
    why = refusal(y, p, document.rule, document.positive_class)
    if why is not None:
        raise AcceptanceError(f"its cases do not support a site operating point: {why}")
    expected = threshold_for(y, p, document.rule.sensitivity_floor + document.rule.margin)
    if not math.isclose(expected, document.proposal.threshold, rel_tol=0, abs_tol=1e-9):
        raise AcceptanceError(
            f"its proposed threshold {document.proposal.threshold:.6f} does not follow from its own cases (they give "
            f"{expected:.6f}): the file was changed after it was made; run the acceptance again")
    if document.rule != manifest.acceptance_rule():
        raise AcceptanceError("its rule is not the one this bundle declares (or its default): the file was changed "
                              "after it was made")
