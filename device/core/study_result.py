"""A triage result as a study keeps it: the model's typed result plus what the study adds (the
study's own timings, the frame a live capture froze). The store takes its columns from these
fields and keeps ``as_json()`` as the study's result document; an UNGRADABLE result renders as it
is, without a label, score or heatmap (device/decision/triage.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from device.decision.smoothing import Smoothed
from device.decision.triage import TriageResult


@dataclass(frozen=True, kw_only=True)
class FrameCapture:
    """Where a captured study's frame came from."""

    source: str
    uri: str  # password redacted
    frame_seq: int
    frame_captured_at: str  # UTC ISO
    frame_to_result_ms: float
    smoothed: Smoothed | None

    def as_json(self) -> dict:
        return {**asdict(self), "smoothed": self.smoothed.as_json() if self.smoothed else None}


@dataclass(frozen=True, kw_only=True)
class StudyResult:
    result: TriageResult
    extra_timings_ms: Mapping[str, float] = field(default_factory=dict)  # the study's steps besides triage
    capture: FrameCapture | None = None

    @property
    def timings_ms(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in {**self.result.timings_ms, **self.extra_timings_ms}.items()}

    def as_json(self) -> dict:
        r = self.result.as_json()
        del r["file"]  # the study has its own file name
        r["timings_ms"] = self.timings_ms
        r["probability"] = self.result.urgent_probability  # the document's name for it since its first version
        if self.capture is not None:
            r["capture"] = self.capture.as_json()
        return r
