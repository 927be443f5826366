"""A triage result as a study keeps it: the model's typed result plus what the study adds (the
urgent class's probability, the study's own timings, the frame a live capture froze). The store
takes its columns from these fields and keeps ``as_json()`` as the study's result document."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from device.decision.smoothing import Smoothed
from device.decision.triage import UNGRADABLE, TriageResult, withhold_ungraded


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class StudyResult:
    result: TriageResult
    probability: float  # of the bundle's urgent label
    extra_timings_ms: Mapping[str, float] = field(default_factory=dict)  # the study's steps besides triage
    capture: FrameCapture | None = None

    @property
    def timings_ms(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in {**self.result.timings_ms, **self.extra_timings_ms}.items()}

    def as_json(self) -> dict:
        r = self.result.as_json()
        del r["file"]  # the study has its own file name
        r["timings_ms"] = self.timings_ms
        r["probability"] = self.probability
        if self.result.triage == UNGRADABLE:
            withhold_ungraded(r, self.probability)
        if self.capture is not None:
            r["capture"] = self.capture.as_json()
        return r
