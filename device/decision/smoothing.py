"""Smoothing a live source's results: the class probabilities of the last N gradable frames averaged
and decided under the bundle's policy, to hold a result steady while the camera looks at one
patient. An ungradable frame, or a gap in the stream (a reconnect), empties the window."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from device.decision.triage import UNGRADABLE, TriageResult, decide
from models.bundle import Manifest

SMOOTHING_GAP_S = 1.0  # frames further apart than this do not belong to the same look at the patient


@dataclass(frozen=True, kw_only=True)
class Smoothed:
    """The smoothed result; UNGRADABLE (an ungradable frame empties the window) carries no label or
    score, as an UNGRADABLE TriageResult does not."""

    window: int  # N asked for
    frames: int  # gradable frames averaged (<= window)
    triage: str
    label: str | None = None
    probability: float | None = None  # mean probability of the urgent label

    def __post_init__(self) -> None:
        if (self.triage == UNGRADABLE) != (self.label is None or self.probability is None):
            raise ValueError("a smoothed result carries a label and score exactly when it is not UNGRADABLE")

    def as_json(self) -> dict:
        return {
            "window": self.window,
            "frames": self.frames,
            "label": self.label,
            "triage": self.triage,
            "probability": None if self.probability is None else round(self.probability, 6),
        }


class Smoother:
    def __init__(self, window: int, manifest: Manifest):
        self.window = window
        self._manifest = manifest
        self._probs: deque[np.ndarray] = deque(maxlen=window)
        self._last: float | None = None

    def add(self, result: TriageResult, captured: float) -> Smoothed | None:
        if self.window <= 1:
            return None
        if result.triage == UNGRADABLE or (self._last is not None and captured - self._last > SMOOTHING_GAP_S):
            self._probs.clear()
        self._last = captured
        if result.triage == UNGRADABLE:
            return Smoothed(window=self.window, frames=0, triage=UNGRADABLE)
        labels = self._manifest.labels
        self._probs.append(np.array([result.probabilities[name] for name in labels]))
        mean = np.mean(self._probs, axis=0)
        label, category = decide(mean, self._manifest, gradable=True, threshold=result.threshold)
        return Smoothed(window=self.window, frames=len(self._probs), triage=category, label=label,
                        probability=float(self._manifest.urgent_probability(mean)))
