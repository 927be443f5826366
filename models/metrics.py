"""Classification metrics in plain numpy (used by training, the optimizer gate and `bedside eval`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax over the last axis, stable for large logits."""
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rates, true-positive rates and the thresholds (score >= t is positive), ties grouped."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError("y_true and score must be 1-D and of equal length")
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        raise ValueError("ROC needs both positive and negative examples")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    tpr = np.r_[0.0, tps / pos]
    fpr = np.r_[0.0, fps / neg]
    thresholds = np.r_[np.inf, s[last_of_tie]]
    return fpr, tpr, thresholds


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(y_true, score)
    return float(np.trapezoid(tpr, fpr))


@dataclass(frozen=True)
class BinaryReport:
    n: int
    n_positive: int
    auc: float
    accuracy: float
    sensitivity: float
    specificity: float
    threshold: float
    confusion: dict[str, int]
    brier: float
    ece: float

    def as_dict(self) -> dict:
        return asdict(self)


def expected_calibration_error(y_true: np.ndarray, prob: np.ndarray, bins: int = 10) -> float:
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(prob, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            ece += mask.mean() * abs(p[mask].mean() - y[mask].mean())
    return float(ece)


def binary_report(y_true: np.ndarray, prob: np.ndarray, threshold: float) -> BinaryReport:
    """Metrics at an operating point; positive = the urgent class, predicted when prob >= threshold."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(prob, dtype=np.float64)
    pred = p >= threshold
    tp = int((pred & y).sum())
    tn = int((~pred & ~y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    n_pos, n_neg = tp + fn, tn + fp
    return BinaryReport(
        n=int(y.size),
        n_positive=n_pos,
        auc=roc_auc(y, p),
        accuracy=(tp + tn) / y.size,
        sensitivity=tp / n_pos,
        specificity=tn / n_neg,
        threshold=float(threshold),
        confusion={"tp": tp, "fn": fn, "tn": tn, "fp": fp},
        brier=float(np.mean((p - y) ** 2)),
        ece=expected_calibration_error(y, p),
    )


def _point_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """The metrics that exist for this sample: AUC only with both classes present, and so on."""
    pred = p >= threshold
    out = {"flagged": float(pred.mean())}
    if y.any():
        out["sensitivity"] = float(pred[y].mean())
    if (~y).any():
        out["specificity"] = float((~pred[~y]).mean())
    if y.any() and (~y).any():
        out["auc"] = roc_auc(y, p)
        out["accuracy"] = float((pred == y).mean())
    return out


def bootstrap_intervals(y_true: np.ndarray, prob: np.ndarray, threshold: float, clusters: list[str],
                        resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile confidence intervals of each metric, resampling whole clusters (patients) with
    replacement: images of one patient are correlated, so resampling images would be too narrow."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(prob, dtype=np.float64)
    names, index = np.unique(np.asarray(clusters), return_inverse=True)
    members = [np.flatnonzero(index == k) for k in range(len(names))]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        rows = np.concatenate([members[k] for k in rng.integers(0, len(members), len(members))])
        for name, value in _point_metrics(y[rows], p[rows], threshold).items():
            draws.setdefault(name, []).append(value)
    tail = (1.0 - level) / 2 * 100
    return {name: [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))]
            for name, v in sorted(draws.items()) if len(v) == resamples}


def subgroup_report(y_true: np.ndarray, prob: np.ndarray, threshold: float,
                    groups: dict[str, np.ndarray]) -> list[dict]:
    """Per subgroup (name -> boolean mask): n, positives and the metrics its classes allow."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(prob, dtype=np.float64)
    rows = []
    for name, mask in groups.items():
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            rows.append({"group": name, "n": int(mask.sum()), "n_positive": int(y[mask].sum()),
                         **_point_metrics(y[mask], p[mask], threshold)})
    return rows


def multiclass_report(y_true: np.ndarray, prob: np.ndarray, labels: tuple[str, ...] | list[str],
                      urgent: tuple[str, ...] | list[str], threshold: float, focus: str | None = None) -> dict:
    """Multi-class metrics: one-vs-rest AUC per class, balanced accuracy and the confusion matrix
    of the arg-max, and the triage view: P(urgent group) = the sum of the urgent labels'
    probabilities against `threshold`, its AUC for the urgent group, and for the `focus` label
    (the one whose sensitivity the operating point protects, e.g. melanoma) the share of its
    images referred (sensitivity) and of the others not referred (specificity)."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(prob, dtype=np.float64)
    k = len(labels)
    if p.shape != (len(y), k):
        raise ValueError(f"probabilities must have shape (n, {k})")
    predicted = p.argmax(1)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y, predicted), 1)
    recall = [confusion[i, i] / confusion[i].sum() for i in range(k) if confusion[i].sum()]
    per_class_auc = {}
    for i, label in enumerate(labels):
        if 0 < (y == i).sum() < len(y):
            per_class_auc[label] = roc_auc(y == i, p[:, i])
    urgent_idx = [list(labels).index(u) for u in urgent]
    score = p[:, urgent_idx].sum(1)
    is_urgent = np.isin(y, urgent_idx)
    report = {
        "n": int(len(y)), "labels": list(labels), "counts": [int((y == i).sum()) for i in range(k)],
        "balanced_accuracy": float(np.mean(recall)), "accuracy": float((predicted == y).mean()),
        "per_class_auc": per_class_auc, "confusion": confusion.tolist(),
        "urgent_labels": list(urgent), "threshold": float(threshold),
        "urgent_auc": roc_auc(is_urgent, score) if 0 < is_urgent.sum() < len(y) else float("nan"),
        "urgent_sensitivity": float((score[is_urgent] >= threshold).mean()) if is_urgent.any() else float("nan"),
        "urgent_specificity": float((score[~is_urgent] < threshold).mean()) if (~is_urgent).any() else float("nan"),
        "referred": float((score >= threshold).mean()),
    }
    if focus is not None:
        pos = y == list(labels).index(focus)
        report.update(
            focus=focus,
            focus_urgent_auc=roc_auc(pos, score) if 0 < pos.sum() < len(y) else float("nan"),
            focus_sensitivity=float((score[pos] >= threshold).mean()) if pos.any() else float("nan"),
            focus_specificity=float((score[~pos] < threshold).mean()) if (~pos).any() else float("nan"),
        )
    return report


def cluster_bootstrap_weights(clusters: list[str], resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples, n) how many times each item is drawn when whole clusters (patients) are resampled
    with replacement: one row per resample, to weight every statistic of that resample at once."""
    names, index = np.unique(np.asarray(clusters), return_inverse=True)
    rng = np.random.default_rng(seed)
    k = len(names)
    picks = rng.integers(0, k, (resamples, k)) + k * np.arange(resamples)[:, None]
    drawn = np.bincount(picks.ravel(), minlength=resamples * k).reshape(resamples, k).astype(np.float64)
    return drawn[:, index]


def weighted_rates(y_true: np.ndarray, prob: np.ndarray, thresholds: np.ndarray,
                   weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity and specificity, (resamples, thresholds) each, of ``prob >= threshold`` under each
    row of ``weights`` (cluster_bootstrap_weights); NaN where a resample drew no case of a class."""
    y = np.asarray(y_true).astype(bool)
    called = np.asarray(prob, dtype=np.float64)[:, None] >= np.asarray(thresholds, dtype=np.float64)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = (weights[:, y] @ called[y]) / weights[:, y].sum(1, keepdims=True)
        specificity = (weights[:, ~y] @ ~called[~y]) / weights[:, ~y].sum(1, keepdims=True)
    return sensitivity, specificity


def weighted_auc(y_true: np.ndarray, prob: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The ROC AUC under each row of ``weights`` (ties count half), (resamples,); NaN without both classes."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(prob, dtype=np.float64)
    values, group = np.unique(p, return_inverse=True)  # ascending
    neg = np.zeros((len(weights), len(values)))
    np.add.at(neg.T, group[~y], weights[:, ~y].T)
    below = np.cumsum(neg, axis=1) - neg  # negative weight strictly below each value
    credit = below + 0.5 * neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights[:, y] * credit[:, group[y]]).sum(1) / (weights[:, y].sum(1) * weights[:, ~y].sum(1))


def percentile_interval(draws: np.ndarray, level: float = 0.95, axis: int = 0) -> np.ndarray:
    """The percentile interval of bootstrap draws along ``axis`` (NaN draws left out): [..., 2] lower, upper."""
    tail = (1.0 - level) / 2 * 100
    return np.stack([np.nanpercentile(draws, tail, axis=axis), np.nanpercentile(draws, 100 - tail, axis=axis)], -1)
