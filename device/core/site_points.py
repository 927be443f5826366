"""Which operating point each exam decides at, from the site's record (device/core/site_record.py):
the site's accepted point for the bundle served, else the bundle's own. Looked up for every study
(cached until the record changes, which a command line's apply in another process does too), and
applied or reverted here, audited in the record."""

from __future__ import annotations

import logging
import threading

from device.core.site_record import APPLIED, SitePointEvent, SiteRecord
from device.decision.operating_point import OperatingPoint
from device.site.acceptance import AcceptanceDocument, AcceptanceError, check
from models.bundle import Bundle, MonitoringReference

log = logging.getLogger(__name__)


class SitePoints:
    def __init__(self, record: SiteRecord):
        self.record = record
        self._lock = threading.Lock()
        self._generation: tuple[int, int] | None = None
        self._cache: dict[tuple[str, str], SitePointEvent | None] = {}

    def accepted(self, exam_id: str, bundle: Bundle) -> SitePointEvent | None:
        """The acceptance in force for this exam's bundle, if any."""
        generation = self.record.generation
        key = (exam_id, bundle.sha256)
        with self._lock:
            if generation != self._generation:
                self._cache.clear()
                self._generation = generation
            if key not in self._cache:
                self._cache[key] = self.record.current(exam_id, bundle.sha256)
            return self._cache[key]

    def operating_point(self, exam_id: str, bundle: Bundle) -> OperatingPoint:
        event = self.accepted(exam_id, bundle)
        if event is None:
            return OperatingPoint.of_bundle(bundle.manifest, bundle.sha256)
        return event.operating_point

    def site_reference(self, event: SitePointEvent) -> MonitoringReference | None:
        """The acceptance sample's monitoring reference, as it was applied."""
        document = self.record.document(event.id) or {}
        reference = document.get("monitoring")
        return None if reference is None else MonitoringReference.model_validate(reference)

    def apply(self, document: AcceptanceDocument, bundle: Bundle, signed_by: str, via: str) -> SitePointEvent:
        """Store an acceptance for the bundle served (AcceptanceError, nothing stored, when it does not fit it)."""
        name = _signer(signed_by)
        check(document, bundle.manifest, bundle.sha256)
        proposal = document.proposal
        event = self.record.apply(bundle.manifest.id, bundle.sha256, bundle.manifest.version, name, via,
                                  proposal.threshold, proposal.positives + proposal.negatives, proposal.sensitivity,
                                  proposal.specificity, document.model_dump(mode="json"))
        log.info("%s: site operating point %.4f applied by %s (%s)", bundle.manifest.id, proposal.threshold, name, via)
        return event

    def revert(self, bundle: Bundle, signed_by: str, via: str) -> SitePointEvent:
        """Back to the bundle's own point (AcceptanceError when no site point is in force)."""
        exam_id = bundle.manifest.id
        name = _signer(signed_by)
        if self.accepted(exam_id, bundle) is None:
            raise AcceptanceError(f"{exam_id} already decides at the model's own operating point")
        event = self.record.revert(exam_id, bundle.sha256, bundle.manifest.version, name, via)
        log.info("%s: site operating point reverted by %s (%s)", exam_id, name, via)
        return event

    def status(self, exam_id: str, bundle: Bundle) -> dict:
        """The operating point in force and, where an earlier bundle was accepted and this one is not,
        that acceptance is needed again."""
        accepted = self.accepted(exam_id, bundle)
        latest = self.record.latest(exam_id)
        needed_again = (accepted is None and latest is not None and latest.action == APPLIED
                        and latest.bundle_sha256 != bundle.sha256)
        status = {"operating_point": self.operating_point(exam_id, bundle).as_json(),
                  "accepted": None if accepted is None else accepted.as_json(), "needed_again": needed_again}
        if needed_again:
            status["words"] = (f"Acceptance needed again: this site accepted {exam_id} {latest.bundle_version} "
                               f"(sha256 {latest.bundle_sha256[:12]}...), but the kiosk now serves "
                               f"{bundle.manifest.version} (sha256 {bundle.sha256[:12]}...), which decides at its own "
                               "operating point until it is accepted.")
        return status


def _signer(name: str | None) -> str:
    """Who signs, as given: a name of 1 to 120 characters without control characters."""
    name = (name or "").strip()
    if not name or len(name) > 120 or any(ord(c) < 32 for c in name):
        raise AcceptanceError("name who signs it (1 to 120 characters, e.g. 'Dr Ada Obi, clinical lead')")
    return name
