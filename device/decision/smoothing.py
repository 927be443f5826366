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


@dataclass(frozen=True)
class Smoothed:
    window: int  # N asked for
    frames: int  # gradable frames averaged (<= window)
    label: str
    triage: str
    probability: float  # mean probability of the urgent label

    def as_json(self) -> dict:
        return {
            "window": self.window,
            "frames": self.frames,
            "label": self.label,
            "triage": self.triage,
            "probability": round(self.probability, 6),
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
            return Smoothed(self.window, 0, result.label, UNGRADABLE, result.urgent_probability)
        labels = self._manifest.labels
        self._probs.append(np.array([result.probabilities[name] for name in labels]))
        mean = np.mean(self._probs, axis=0)
        label, category = decide(mean, self._manifest, gradable=True)
        return Smoothed(self.window, len(self._probs), label, category, float(self._manifest.urgent_probability(mean)))
