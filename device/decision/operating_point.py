"""The operating point a result was decided at: the bundle's own, or the site's, chosen on the site's
own labelled cases and accepted by a named person (`bedside acceptance`, device/core/site_record.py).
Every result carries it, so the screen, the API, the SR and FHIR say which one decided, in the same
words."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from models.bundle import Manifest

BUNDLE, SITE = "bundle", "site"


@dataclass(frozen=True, kw_only=True)
class OperatingPoint:
    """P(urgent) >= ``threshold`` is URGENT. ``bundle_sha256``: the bundle it belongs to (a site
    point is accepted for one bundle and never carried over to another)."""

    source: str  # BUNDLE or SITE
    threshold: float
    bundle_sha256: str
    accepted_at: str | None = None  # a site point: when it was applied (UTC ISO)
    accepted_by: str | None = None  # who signed it
    cases: int | None = None  # the local cases it was chosen on
    sensitivity: float | None = None  # on those cases
    specificity: float | None = None

    def __post_init__(self) -> None:
        if self.source not in (BUNDLE, SITE):
            raise ValueError(f"unknown operating point source {self.source!r}")
        if self.source == SITE and not (self.accepted_at and self.accepted_by and self.cases):
            raise ValueError("a site operating point names when, by whom and on how many cases it was accepted")

    @classmethod
    def of_bundle(cls, manifest: Manifest, bundle_sha256: str) -> "OperatingPoint":
        op = manifest.policy.operating_point
        return cls(source=BUNDLE, threshold=op.threshold, bundle_sha256=bundle_sha256)

    @property
    def text(self) -> str:
        """One line for people: "Site operating point, accepted 2026-12-07 on 194 local cases by Dr Ada"."""
        if self.source == SITE:
            return (f"Site operating point, accepted {self.accepted_at[:10]} on {self.cases} local cases by "
                    f"{self.accepted_by}")
        return "The model's own operating point (not yet accepted on this site's cases)"

    def as_json(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if v is not None}, "text": self.text}

    @classmethod
    def from_json(cls, document: dict) -> "OperatingPoint":
        return cls(**{k: v for k, v in document.items() if k != "text"})
