"""The figures of a site acceptance, from its cases: counts and refusals, AUC, sensitivity and
specificity at the bundle's point and at candidate site points (each with a 95% interval from a
bootstrap of whole patients), the ROC and calibration curves, the subgroups the bundle declares,
and how it all compares with what the bundle's card states."""

from __future__ import annotations

from collections import Counter

import numpy as np

from device.site.acceptance import Case, Proposal, rates, refusal, threshold_for
from models.bundle import AcceptanceRule, Manifest
from models.metrics import (
    cluster_bootstrap_weights, expected_calibration_error, percentile_interval, roc_auc, roc_curve, weighted_auc,
    weighted_rates,
)

CANDIDATE_SENSITIVITIES = (0.99, 0.98, 0.97, 0.95, 0.90)
CALIBRATION_BINS = 10
ROC_POINTS = 200  # the plotted curve is thinned to about this many points


def _interval(values: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in percentile_interval(values)]


def acceptance_figures(cases: list[Case], manifest: Manifest, rule: AcceptanceRule, resamples: int,
                       positive: str) -> tuple[dict, Proposal | None, str | None]:
    """(figures, the proposal, why none) of the cases; the metrics count only the cases the kiosk
    would judge (UNGRADABLE ones are reported apart)."""
    judged = [c for c in cases if c.gradable]
    y = np.array([c.positive for c in judged], dtype=bool)
    p = np.array([c.p_urgent for c in judged])
    counts = _counts(cases, judged)
    if not judged or y.all() or not y.any():
        why = (f"The sample is too small to say anything: it needs cases of {positive} and others that the kiosk "
               f"can judge; it has {int(y.sum())} and {int((~y).sum())}.")
        return {"counts": counts}, None, why
    weights = cluster_bootstrap_weights([c.patient for c in judged], resamples)
    bundle_threshold = manifest.policy.operating_point.threshold
    why = refusal(y, p, rule, positive)
    target = rule.sensitivity_floor + rule.margin
    proposed = None if why is not None else threshold_for(y, p, target)
    points = _points(y, p, weights, bundle_threshold, proposed, target)
    auc, auc_ci = round(roc_auc(y, p), 4), _interval(weighted_auc(y, p, weights))
    figures = {
        "counts": counts,
        "auc": auc,
        "auc_ci": auc_ci,
        "bootstrap": {"resamples": resamples, "unit": "patient", "patients": len({c.patient for c in judged})},
        "points": points,
        "roc": _roc(y, p),
        "calibration": _calibration(y, p),
        "subgroups": _subgroups(judged, y, p, manifest, bundle_threshold, proposed),
        "card": _card(manifest, points[0], auc, auc_ci),
    }
    proposal = None
    if proposed is not None:
        chosen = next(pt for pt in points if pt["name"] == "proposed site point")
        proposal = Proposal(threshold=proposed, target_sensitivity=target, sensitivity=chosen["sensitivity"],
                            specificity=chosen["specificity"], sensitivity_ci=tuple(chosen["sensitivity_ci"]),
                            specificity_ci=tuple(chosen["specificity_ci"]), positives=int(y.sum()),
                            negatives=int((~y).sum()))
    return figures, proposal, why


def _counts(cases: list[Case], judged: list[Case]) -> dict:
    reasons = Counter(r for c in cases if not c.gradable for r in (c.reasons or ["not gradable"]))
    return {
        "cases": len(cases),
        "judged": len(judged),
        "positive": sum(c.positive for c in judged),
        "negative": sum(not c.positive for c in judged),
        "by_label": dict(sorted(Counter(c.label for c in cases).items())),
        "ungradable": len(cases) - len(judged),
        "ungradable_reasons": dict(reasons.most_common()),
        "patients": len({c.patient for c in cases}),
    }


def _points(y: np.ndarray, p: np.ndarray, weights: np.ndarray, bundle_threshold: float, proposed: float | None,
            target: float) -> list[dict]:
    """The bundle's point, the proposed one, and candidates at usual sensitivities, each with intervals."""
    named = [("the model's own point", None, bundle_threshold)]
    if proposed is not None:
        named.append(("proposed site point", target, proposed))
    named += [(f"sensitivity >= {s:.2f}", s, threshold_for(y, p, s)) for s in CANDIDATE_SENSITIVITIES
              if abs(s - target) > 1e-9]
    thresholds = np.array([t for _, _, t in named])
    sensitivity, specificity = weighted_rates(y, p, thresholds, weights)
    sens_ci, spec_ci = percentile_interval(sensitivity), percentile_interval(specificity)
    rows = []
    for i, (name, aimed, t) in enumerate(named):
        sens, spec = rates(y, p, t)
        rows.append({"name": name, "target_sensitivity": aimed, "threshold": round(t, 6),
                     "sensitivity": round(sens, 4), "specificity": round(spec, 4),
                     "sensitivity_ci": [round(float(v), 4) for v in sens_ci[i]],
                     "specificity_ci": [round(float(v), 4) for v in spec_ci[i]],
                     "flagged": round(float((p >= t).mean()), 4)})
    return rows


def _roc(y: np.ndarray, p: np.ndarray) -> dict:
    fpr, tpr, _ = roc_curve(y, p)
    keep = np.unique(np.r_[np.linspace(0, len(fpr) - 1, min(len(fpr), ROC_POINTS)).astype(int), len(fpr) - 1])
    return {"fpr": [round(float(v), 4) for v in fpr[keep]], "tpr": [round(float(v), 4) for v in tpr[keep]]}


def _calibration(y: np.ndarray, p: np.ndarray) -> dict:
    """Reliability: per tenth of P(urgent), the mean score and the share of positives."""
    edges = np.linspace(0, 1, CALIBRATION_BINS + 1)
    index = np.clip(np.digitize(p, edges[1:-1]), 0, CALIBRATION_BINS - 1)
    bins = [{"from": round(float(edges[b]), 2), "to": round(float(edges[b + 1]), 2), "n": int((index == b).sum()),
             "mean_score": round(float(p[index == b].mean()), 4), "observed": round(float(y[index == b].mean()), 4)}
            for b in range(CALIBRATION_BINS) if (index == b).any()]
    return {"bins": bins, "ece": round(expected_calibration_error(y, p, CALIBRATION_BINS), 4),
            "brier": round(float(np.mean((p - y) ** 2)), 4)}


def _subgroups(judged: list[Case], y: np.ndarray, p: np.ndarray, manifest: Manifest, bundle_threshold: float,
               proposed: float | None) -> list[dict]:
    names = [c.file.rsplit("/", 1)[-1] for c in judged]
    labels = np.array([c.label for c in judged])
    masks = {f"label {label}": labels == label for label in sorted(set(labels))}
    if manifest.evaluation is not None:
        masks.update(manifest.evaluation.groups(names, [c.aspect for c in judged]))
    rows = []
    for name, mask in masks.items():
        if not mask.any():
            continue
        row = {"group": name, "n": int(mask.sum()), "positive": int(y[mask].sum())}
        for key, t in (("bundle", bundle_threshold), ("site", proposed)):
            if t is None:
                continue
            called = p[mask] >= t
            if y[mask].any():
                row[f"sensitivity_{key}"] = round(float(called[y[mask]].mean()), 4)
            if (~y[mask]).any():
                row[f"specificity_{key}"] = round(float((~called[~y[mask]]).mean()), 4)
        if y[mask].any() and (~y[mask]).any():
            row["auc"] = round(roc_auc(y[mask], p[mask]), 4)
        rows.append(row)
    return rows


def _card(manifest: Manifest, at_bundle: dict, auc: float, auc_ci: list[float]) -> list[dict]:
    """Each headline figure here against the range the card states over its validation splits."""
    rows = []
    for key, here, ci in (("auc", auc, auc_ci), ("sensitivity", at_bundle["sensitivity"], at_bundle["sensitivity_ci"]),
                          ("specificity", at_bundle["specificity"], at_bundle["specificity_ci"])):
        stated = [(m.split, getattr(m, key)) for m in manifest.metrics]
        if not stated:
            continue
        low, high = min(v for _, v in stated), max(v for _, v in stated)
        verdict = "within the card's range" if low - 1e-9 <= here <= high + 1e-9 else (
            "below the card's range" if here < low else "above the card's range")
        rows.append({"figure": key, "here": here, "here_ci": ci, "card_low": round(low, 4), "card_high": round(high, 4),
                     "card": [{"split": s, "value": round(v, 4)} for s, v in stated], "verdict": verdict})
    return rows
