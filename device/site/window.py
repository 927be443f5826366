"""A rolling window of one exam's latest studies, binned on a reference as they come, and the state
that follows the verdicts on it (device/site/drift.py): changed only when ``confirm`` studies in a
row agree, so one odd film neither raises nor clears a drift."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from device.site.drift import COLLECTING, ReferenceBins, Verdict, compare
from models.bundle import MonitoringReference


class Window:
    """The latest ``size`` studies' signals (name -> value), with the reference's bin counts kept as
    studies come and go: a comparison costs the same whatever the window's size."""

    def __init__(self, size: int):
        self.size = size
        self._signals: deque[Mapping[str, float]] = deque(maxlen=size)
        self._bins: deque[list[int]] = deque(maxlen=size)
        self.reference: ReferenceBins | None = None
        self._counts = np.zeros(0)

    def __len__(self) -> int:
        return len(self._signals)

    def use(self, reference: MonitoringReference | None) -> None:
        """Compare with this reference from now on (its bins applied to the studies already held)."""
        self.reference = None if reference is None else ReferenceBins(reference)
        held = list(self._signals)
        self._signals.clear()
        self._bins.clear()
        self._counts = np.zeros(0 if self.reference is None else len(self.reference))
        for signals in held:
            self.add(signals)

    def add(self, signals: Mapping[str, float]) -> None:
        if len(self._signals) == self.size:
            self._counts[self._bins[0]] -= 1
        bins = [] if self.reference is None else self.reference.index_of(signals)
        self._counts[bins] += 1
        self._signals.append(signals)
        self._bins.append(bins)

    def verdict(self) -> Verdict | None:
        """The comparison of the window with the reference (None without one)."""
        return None if self.reference is None else compare(self._counts, self.reference)


@dataclass
class Tracker:
    """An exam's state: collecting until ``min_studies``, then ok / watch / drift, each change only
    after ``confirm`` consecutive verdicts at the new level."""

    min_studies: int
    confirm: int
    state: str = COLLECTING
    verdict: Verdict | None = None
    _pending: str | None = None
    _pending_for: int = 0

    def update(self, studies: int, verdict: Verdict | None) -> bool:
        """Take the verdict on ``studies`` studies; True when the state changed."""
        self.verdict = verdict
        level = COLLECTING if studies < self.min_studies or verdict is None else verdict.level
        if level == self.state:
            self._pending, self._pending_for = None, 0
            return False
        if level == COLLECTING:  # fewer studies than needed (a new reference, a new bundle): at once
            self.state, self._pending, self._pending_for = COLLECTING, None, 0
            return True
        self._pending_for = self._pending_for + 1 if level == self._pending else 1
        self._pending = level
        if self._pending_for < self.confirm and self.state != COLLECTING:
            return False
        self.state, self._pending, self._pending_for = level, None, 0
        return True
