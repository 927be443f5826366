"""The validation report: one self-contained HTML file per bundle (inline SVG, no scripts, no network).

It shows FP32 and every variant on the validation split: ROC curves on one plot, confusion
matrices at the operating point, a reliability (calibration) plot, agreement with FP32, and
latency measured side by side.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np

from models.bundle import Manifest
from models.metrics import binary_report, multiclass_report, roc_curve, softmax

COLOURS = ("#1f4e9c", "#c2410c", "#15803d", "#7e22ce", "#a16207")
SIZE, PAD = 320, 40


@dataclass(frozen=True)
class VariantRun:
    label: str  # e.g. "int8 (gpu)"
    logits: np.ndarray
    latency: dict[str, float] | None  # summarise() output at batch 1, or None if not timed


def _xy(points: np.ndarray) -> str:
    """Unit-square points -> SVG polyline coordinates (y up)."""
    xs = PAD + points[:, 0] * SIZE
    ys = PAD + (1.0 - points[:, 1]) * SIZE
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))


def _axes(title: str, xlabel: str, ylabel: str, body: str, legend: list[str]) -> str:
    keys = "".join(
        f'<text x="{PAD + SIZE - 150}" y="{PAD + SIZE - 12 - 16 * i}" fill="{COLOURS[i % len(COLOURS)]}" '
        f'font-size="12">&#9632; {html.escape(name)}</text>'
        for i, name in enumerate(legend)
    )
    w = SIZE + 2 * PAD
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{w}" role="img" aria-label="{title}">'
        f'<rect x="{PAD}" y="{PAD}" width="{SIZE}" height="{SIZE}" fill="white" stroke="#333"/>'
        f'<line x1="{PAD}" y1="{PAD + SIZE}" x2="{PAD + SIZE}" y2="{PAD}" stroke="#bbb" stroke-dasharray="4"/>'
        f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>'
        f'<text x="{w / 2}" y="{w - 8}" text-anchor="middle" font-size="12">{xlabel}</text>'
        f'<text x="12" y="{w / 2}" font-size="12" transform="rotate(-90 12 {w / 2})" '
        f'text-anchor="middle">{ylabel}</text>{body}{keys}</svg>'
    )


def _roc_svg(y: np.ndarray, runs: list[VariantRun], manifest: Manifest) -> str:
    lines = []
    for i, run in enumerate(runs):
        fpr, tpr, _ = roc_curve(y, manifest.urgent_probability(softmax(run.logits)))
        pts = np.column_stack([fpr, tpr])
        lines.append(f'<polyline fill="none" stroke-width="2" stroke="{COLOURS[i % len(COLOURS)]}" '
                     f'points="{_xy(pts)}"/>')
    return _axes("ROC, validation split", "1 - specificity", "sensitivity", "".join(lines), [r.label for r in runs])


def _calibration_svg(y: np.ndarray, runs: list[VariantRun], manifest: Manifest, bins: int = 10) -> str:
    lines = []
    for i, run in enumerate(runs):
        p = manifest.urgent_probability(softmax(run.logits))
        idx = np.clip((p * bins).astype(int), 0, bins - 1)
        pts = np.array([[p[idx == b].mean(), y[idx == b].mean()] for b in range(bins) if np.any(idx == b)])
        colour = COLOURS[i % len(COLOURS)]
        lines.append(f'<polyline fill="none" stroke-width="2" stroke="{colour}" points="{_xy(pts)}"/>')
    return _axes("Reliability", "predicted probability", "observed frequency", "".join(lines),
                 [r.label for r in runs])


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _per_class(manifest: Manifest, y_labels: np.ndarray, runs: list[VariantRun]) -> str:
    """Multi-class bundles: balanced accuracy, one-vs-rest AUC per label and the focus label's
    referral rates of every variant (empty for a binary bundle)."""
    if len(manifest.labels) <= 2:
        return ""
    m, threshold = manifest, manifest.policy.operating_point.threshold
    rows = []
    for run in runs:
        r = multiclass_report(np.asarray(y_labels), softmax(run.logits), m.labels, m.policy.urgent_labels, threshold,
                              m.policy.focus_label)
        focus = [f"{r['focus_sensitivity']:.4f}", f"{r['focus_specificity']:.4f}"] if m.policy.focus_label else []
        rows.append([run.label, f"{r['balanced_accuracy']:.4f}",
                     *(f"{r['per_class_auc'].get(label, float('nan')):.4f}" for label in m.labels), *focus])
    focus_heads = ([f"{m.policy.focus_label} referred", f"others (vs {m.policy.focus_label}) not referred"]
                   if m.policy.focus_label else [])
    return ("<h2>Per class</h2><p>One-vs-rest AUC of each label's probability; balanced accuracy of the "
            "likeliest label.</p>" + _table(["variant", "balanced accuracy", *m.labels, *focus_heads], rows))


def render(manifest: Manifest, y_labels: np.ndarray, runs: list[VariantRun], cpu: str) -> str:
    y = np.isin(y_labels, manifest.urgent_indices).astype(float)
    threshold = manifest.policy.operating_point.threshold
    base = runs[0]
    p_base = manifest.urgent_probability(softmax(base.logits)) >= threshold
    metric_rows, agree_rows, latency_rows = [], [], []
    for run in runs:
        p = manifest.urgent_probability(softmax(run.logits))
        r = binary_report(y, p, threshold)
        c = r.confusion
        metric_rows.append([run.label, f"{r.auc:.4f}", f"{r.accuracy:.4f}", f"{r.sensitivity:.4f}",
                            f"{r.specificity:.4f}", f"TP {c['tp']} FN {c['fn']} / TN {c['tn']} FP {c['fp']}",
                            f"{r.ece:.4f}"])
        agree_rows.append([run.label, f"{np.mean((p >= threshold) == p_base):.2%}",
                           f"{np.abs(run.logits - base.logits).max():.4f}"])
        if run.latency:
            latency_rows.append([run.label, f"{run.latency['p50_ms']:.3f}", f"{run.latency['p90_ms']:.3f}",
                                 f"{run.latency['p99_ms']:.3f}",
                                 f"{runs[0].latency['p50_ms'] / run.latency['p50_ms']:.2f}x"
                                 if runs[0].latency else "-"])
    title = f"{manifest.title} {manifest.version}: validation report"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;color:#111}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #999;padding:4px 8px;text-align:right}}th{{background:#eee}}
td:first-child{{text-align:left}}svg{{margin-right:1em}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Model <code>{html.escape(manifest.id)}</code>, validation split of the training data ({html.escape(manifest.provenance.split.method if manifest.provenance.split else 'as recorded')},
n={len(y)}, {int(y.sum())} {html.escape(' / '.join(manifest.policy.urgent_labels))}). Operating point: P({html.escape(
    ' + '.join(manifest.policy.urgent_labels))}) &ge; {threshold:.4f}. {html.escape(manifest.disclaimer or '')}</p>
<h2>ROC and calibration</h2>{_roc_svg(y, runs, manifest)}{_calibration_svg(y, runs, manifest)}
<h2>At the operating point</h2>
{_table(["variant", "AUC", "accuracy", "sensitivity", "specificity", "confusion", "ECE"], metric_rows)}
{_per_class(manifest, y_labels, runs)}
<h2>Agreement with FP32</h2>
{_table(["variant", "same triage category", "max |logit - FP32 logit|"], agree_rows)}
<h2>Latency, ONNX Runtime CPU, batch 1</h2><p>{html.escape(cpu)}; measured side by side in interleaved
rounds.</p>
{_table(["variant", "p50 ms", "p90 ms", "p99 ms", "speed-up vs FP32"], latency_rows)}
</body></html>
"""
