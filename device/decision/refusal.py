"""The refusal: the model's own answer to "may I judge this image?", after the model and before the
triage policy.

A bundle that declares a refusal policy (models/bundle.py, RefusalPolicy) computes one score per
check in the same model run, each a graph output with one value per image; higher means less like
the images the exam judges. An image is refused when any score is above its check's threshold, and
the study is then UNGRADABLE: "This does not look like {subject}. {advice}", with no score and no
heatmap, the scores and thresholds kept for Details. Nothing here knows a model: the checks, their
thresholds and the words all come from the bundle.

``in_domain`` is the one answer to "is this the exam for this image?" that routing an upload to an
exam and the "Run as another exam" offer share: the refusal check where the bundle has one, and the
quality checks that say the image is of another kind (quality.WRONG_KIND).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from device.decision.quality import WRONG_KIND, QualityIssue, QualityReport
from models.bundle import RefusalPolicy

NOT_IN_DOMAIN = "not_in_domain"  # the issue code of a refused image
WRONG_EXAM = WRONG_KIND | {NOT_IN_DOMAIN}  # reasons that say another exam may judge the image


class RefusalOutputError(ValueError):
    """A refusal output that is not one finite value per image: the runtime or the bundle is broken."""


@dataclass(frozen=True)
class CheckValue:
    """One check's score on one image, beside the threshold it was held against."""

    name: str
    statistic: str
    value: float
    threshold: float

    @property
    def refused(self) -> bool:
        return self.value > self.threshold

    def as_json(self) -> dict:
        return {"name": self.name, "statistic": self.statistic, "value": self.value, "threshold": self.threshold,
                "refused": self.refused}


@dataclass(frozen=True)
class RefusalReport:
    """Every check's score on one image, and what the exam judges, in words."""

    checks: tuple[CheckValue, ...]
    subject: str
    advice: str

    @property
    def refused(self) -> bool:
        return any(c.refused for c in self.checks)

    def issue(self) -> QualityIssue:
        """The reason a refused image is UNGRADABLE, as every screen and report shows it."""
        return QualityIssue(NOT_IN_DOMAIN, f"This does not look like {self.subject}", self.advice, self.detail)

    @property
    def detail(self) -> str:
        return "; ".join(f"{c.name} {c.value:.4g} ({'above' if c.refused else 'within'} the limit {c.threshold:.4g}:"
                         f" {c.statistic})" for c in self.checks)

    def as_json(self) -> dict:
        return {"refused": self.refused, "subject": self.subject, "advice": self.advice,
                "checks": [c.as_json() for c in self.checks]}


def scores(outputs: Mapping[str, np.ndarray], policy: RefusalPolicy, n: int) -> np.ndarray:
    """(n, checks): each check's output of a batch of ``n`` images, as float64. Raises
    RefusalOutputError for an output that is not (n,) or (n, 1), or holds NaN (NaN > threshold is
    False: a broken output would accept every image)."""
    columns = []
    for check in policy.checks:
        value = np.asarray(outputs[check.output], dtype=np.float64)
        if value.shape not in ((n,), (n, 1)):
            raise RefusalOutputError(f"refusal output {check.output!r} has shape {value.shape}, not ({n},) or ({n}, 1)")
        if np.isnan(value).any():
            raise RefusalOutputError(f"refusal output {check.output!r} holds NaN")
        columns.append(value.reshape(n))
    return np.stack(columns, axis=1)


def assess(values: np.ndarray, policy: RefusalPolicy) -> RefusalReport:
    """The report of one image's scores (one per check, in the policy's order)."""
    checks = tuple(CheckValue(c.name, c.statistic, float(v), c.threshold) for c, v in zip(policy.checks, values))
    return RefusalReport(checks, policy.subject, policy.advice)


def reasons(quality: QualityReport, refusal: RefusalReport | None) -> tuple[QualityIssue, ...]:
    """Why an image is not judged, in the order of the path: its quality issues; else, when the model
    refused it, that. Empty when it is judged."""
    if quality.issues:
        return quality.issues
    if refusal is not None and refusal.refused:
        return (refusal.issue(),)
    return ()


def in_domain(quality: QualityReport, refusal: RefusalReport | None) -> bool:
    """Whether this exam is one for the image: no quality issue says it is of another kind, and the
    model's refusal check (where the bundle has one) accepts it. A bad image of the right kind (blurred,
    overexposed) is in the domain: its exam says what is wrong with it."""
    if any(i.code in WRONG_KIND for i in quality.issues):
        return False
    return refusal is None or not refusal.refused
