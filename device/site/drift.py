"""Comparing a window of recent studies with a reference (the bundle's validation images, or the
site's acceptance sample): one population-stability index (PSI) per signal, judged against what
chance alone gives at this window's size, and the verdict ok / watch / drift with its reasons.

Telling a change in the images apart from a change in who is imaged: the reference is binned apart
for the urgent group and the others (models.bundle.DriftSignal). The share of urgent cases in the
window is fitted from the distribution of P(urgent) (a mixture of the two reference groups), and
every signal is compared with the reference re-mixed at that share. A pneumonia season moves
P(urgent) and, through the mix of cases, the image statistics, but each stays a mixture of the
reference's groups: a prevalence change, `watch`. A new processing curve or inverted films move the
image statistics where no mixture of the reference reaches: `drift`.

Chance: with n studies and k bins, n x PSI is close to a chi-square with k - 1 degrees of freedom
when nothing changed (PSI is the symmetric Kullback-Leibler divergence; to second order the Pearson
statistic over n), and the reference's own sample adds its share (an effective n of 1 / (1/n + 1/m)).
The limits are that chi-square's quantiles at the levels below, with a Bonferroni share per signal.
Written here (no scipy on the appliance): the Wilson-Hilferty approximation of the quantile.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist

import numpy as np

from models.bundle import MonitoringReference
from models.drift import P_URGENT, describe

OK, WATCH, DRIFT, COLLECTING = "ok", "watch", "drift", "collecting"
STATES = (COLLECTING, OK, WATCH, DRIFT)
# False-alarm levels per comparison (before the Bonferroni share): chosen with benchmarks/drift.py
# so that replayed validation streams give well under one false drift per 1,000 studies.
WATCH_LEVEL = 1e-3
DRIFT_LEVEL = 1e-5
PREVALENCE_GRID = np.linspace(0.0, 1.0, 201)


@lru_cache(maxsize=4096)
def chi2_quantile(p: float, dof: int) -> float:
    """The p-quantile of a chi-square with ``dof`` degrees of freedom (Wilson-Hilferty; within a few
    per cent for dof >= 2 in the upper tail used here)."""
    z = NormalDist().inv_cdf(p)
    k = max(dof, 1)
    return float(k * (1 - 2 / (9 * k) + z * (2 / (9 * k)) ** 0.5) ** 3)


def smoothed(counts: np.ndarray) -> np.ndarray:
    """Bin shares with half a count added to each bin, so that an empty bin has a finite logarithm."""
    counts = np.asarray(counts, dtype=np.float64)
    return (counts + 0.5) / (counts.sum() + 0.5 * len(counts))


class ReferenceBins:
    """A reference compiled for the comparison: every signal's bins laid end to end in one vector
    (a window's counts are one integer vector too), each group's smoothed bin shares, and the
    log-likelihood of every mixture of P(urgent)'s groups on the prevalence grid; so a comparison is
    a dozen vector operations whatever the number of signals."""

    def __init__(self, reference: MonitoringReference):
        signals = list(reference.signals)
        self.names = [s.name for s in signals]
        self.edges = [list(s.edges) for s in signals]
        self.bins = np.array([len(s.edges) + 1 for s in signals])
        self.starts = np.r_[0, np.cumsum(self.bins)[:-1]]
        self.segment = np.repeat(np.arange(len(signals)), self.bins)
        self.urgent = np.concatenate([smoothed(np.asarray(s.urgent)) for s in signals])
        self.other = np.concatenate([smoothed(np.asarray(s.other)) for s in signals])
        self.n = np.array([sum(s.urgent) + sum(s.other) for s in signals])
        self.p_urgent = self.names.index(P_URGENT) if P_URGENT in self.names else None
        first = signals[0]
        self.share_urgent = sum(first.urgent) / (sum(first.urgent) + sum(first.other))
        if self.p_urgent is not None:
            part = slice(self.starts[self.p_urgent], self.starts[self.p_urgent] + self.bins[self.p_urgent])
            mixtures = np.outer(PREVALENCE_GRID, self.urgent[part]) + np.outer(1 - PREVALENCE_GRID, self.other[part])
            self._log_mixtures, self._scores = np.log(mixtures), part

    def __len__(self) -> int:
        return int(self.bins.sum())

    def index_of(self, signals: Mapping[str, float]) -> list[int]:
        """The positions in the counts vector of one study's signals (a signal it lacks is left out)."""
        out = []
        for i, (name, edges) in enumerate(zip(self.names, self.edges)):
            value = signals.get(name)
            if value is not None and value == value:  # not NaN
                out.append(int(self.starts[i]) + bisect_right(edges, value))
        return out

    def fit_share_urgent(self, counts: np.ndarray) -> float | None:
        """The share of urgent cases that makes the reference's mixture likeliest for the window's
        P(urgent) counts (a grid search: the likelihood is concave in the share, the grid 0.005 wide)."""
        if self.p_urgent is None or not counts[self._scores].any():
            return None
        return float(PREVALENCE_GRID[np.argmax(self._log_mixtures @ counts[self._scores])])

    def psi(self, counts: np.ndarray, share: float) -> np.ndarray:
        """Every signal's PSI against the reference mixed at ``share``."""
        totals = np.add.reduceat(counts, self.starts)
        observed = (counts + 0.5) / (totals + 0.5 * self.bins)[self.segment]
        expected = share * self.urgent + (1 - share) * self.other
        return np.add.reduceat((observed - expected) * np.log(observed / expected), self.starts)


@dataclass(frozen=True)
class SignalResult:
    """One signal over the window: its PSI against the reference as mixed there, and against it
    re-mixed at the window's fitted share of urgent cases (what decides); the limits at this
    window's size."""

    name: str
    psi_reference_mix: float
    psi: float
    watch_limit: float
    drift_limit: float

    @property
    def level(self) -> str:
        return DRIFT if self.psi > self.drift_limit else WATCH if self.psi > self.watch_limit else OK

    def as_json(self) -> dict:
        return {"name": self.name, "description": describe(self.name), "psi": round(self.psi, 4),
                "psi_at_reference_prevalence": round(self.psi_reference_mix, 4),
                "watch_limit": round(self.watch_limit, 4), "drift_limit": round(self.drift_limit, 4),
                "level": self.level}

    def words(self) -> str:
        limit = self.drift_limit if self.level == DRIFT else self.watch_limit
        return f"{describe(self.name)} (PSI {self.psi:.2f}; {self.level} above {limit:.2f})"


@dataclass(frozen=True)
class Verdict:
    """What one comparison says: a level (ok / watch / drift), what kind of change (images, model
    scores, prevalence; None when nothing changed) and the reasons in words, with ``{reference}``
    where the reference is named (words() fills it in)."""

    level: str
    kind: str | None
    reasons: tuple[str, ...]
    signals: tuple[SignalResult, ...] = ()
    share_urgent: float | None = None  # fitted on the window
    reference_share_urgent: float | None = None

    def words(self, reference: str = "the reference") -> list[str]:
        return [r.replace("{reference}", reference) for r in self.reasons]

    def as_json(self) -> dict:
        return {"level": self.level, "kind": self.kind, "reasons": self.words(),
                "signals": [s.as_json() for s in self.signals],
                "prevalence": None if self.share_urgent is None else {
                    "window": round(self.share_urgent, 3), "reference": round(self.reference_share_urgent, 3)}}


@lru_cache(maxsize=4096)
def limits(bins: int, window: int, reference_n: int, signals: int, fitted: int = 0) -> tuple[float, float]:
    """(watch, drift) PSI limits of one signal at this window's size, its Bonferroni share of the levels."""
    effective = 1.0 / (1.0 / window + 1.0 / max(reference_n, 1))
    dof = max(bins - 1 - fitted, 1)
    watch, drift = (chi2_quantile(1 - level / signals, dof) / effective for level in (WATCH_LEVEL, DRIFT_LEVEL))
    return watch, drift


def compare(counts: np.ndarray, reference: ReferenceBins) -> Verdict:
    """The verdict on a window whose signals fell into ``counts`` (ReferenceBins' layout)."""
    totals = np.add.reduceat(counts, reference.starts)
    present = totals > 0
    share = reference.fit_share_urgent(counts)
    base = reference.share_urgent
    at_reference = reference.psi(counts, base)
    at_fit = at_reference if share is None else reference.psi(counts, share)
    signals = int(present.sum())
    results = []
    for i in np.flatnonzero(present):
        watch, drift = limits(int(reference.bins[i]), int(totals[i]), int(reference.n[i]), signals,
                              int(i == reference.p_urgent))
        results.append(SignalResult(reference.names[i], float(at_reference[i]), float(at_fit[i]), watch, drift))
    window = int(totals.max()) if signals else 0
    return _verdict(tuple(results), share, base if share is not None else None, window)


def _verdict(results: tuple[SignalResult, ...], share: float | None, reference_share: float | None,
             window: int) -> Verdict:
    for level in (DRIFT, WATCH):
        changed = [r for r in results if r.level == level]
        if changed:
            in_images = [r for r in changed if r.name != P_URGENT]
            kind = "images" if in_images else "model_scores"
            first = ("Recent images differ from {reference}: " + "; ".join(r.words() for r in in_images)
                     + ". New processing, another detector, inverted (MONOCHROME1) films or another camera?"
                     if in_images else
                     "The model's scores are spread unlike any mix of the urgent and other cases of {reference}: "
                     + changed[0].words() + ".")
            return Verdict(level, kind, (first, *_prevalence_words(share, reference_share)), results, share,
                           reference_share)
    scores = next((r for r in results if r.name == P_URGENT), None)
    if scores is not None and scores.psi_reference_mix > scores.watch_limit:
        return Verdict(WATCH, "prevalence", (*_prevalence_words(share, reference_share),
                       "The images themselves match {reference}, mixed at that share: who is imaged changed "
                       "(such as a pneumonia season), not the images."), results, share, reference_share)
    largest = max(results, key=lambda r: r.psi / r.watch_limit, default=None)
    words = (f"Recent studies look like {{reference}} over the last {window}" +
             (f" (the largest difference: {describe(largest.name)}, PSI {largest.psi:.2f} of {largest.watch_limit:.2f} "
              "allowed)." if largest else "."))
    return Verdict(OK, None, (words,), results, share, reference_share)


def _prevalence_words(share: float | None, reference_share: float | None) -> tuple[str, ...]:
    if share is None or reference_share is None or abs(share - reference_share) < 0.05:
        return ()
    more = "More" if share > reference_share else "Fewer"
    return (f"{more} urgent cases than in {{reference}}: about {share:.0%} of recent studies against "
            f"{reference_share:.0%}.",)
