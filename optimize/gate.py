"""The accuracy gate: a variant is accepted only if it keeps FP32's accuracy on validation images."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from models.metrics import roc_auc, softmax

MAX_AUC_DROP = 0.002
MIN_AGREEMENT = 0.995
# How far this CPU's fused INT8 kernels may stray from the graph as written, in logits: rounding
# moves them by up to about 0.013 on the chest and skin models; 16-bit overflow on a CPU without
# VNNI moved them by 2.6-2.8.
MAX_KERNEL_DEVIATION = 0.05
# A variant may change the FP32 model's refusal decision (UNGRADABLE "not in the exam's domain" or
# not) on at most this share of the validation images and negatives together.
MAX_REFUSAL_CHANGE = 0.01


@dataclass(frozen=True)
class GateResult:
    variant: str
    n: int
    auc_fp32: float
    auc_variant: float
    auc_drop: float
    agreement: float
    max_logit_deviation: float
    passed: bool
    reasons: tuple[str, ...]
    kernel_deviation: float | None = None  # CPU variants: this CPU's fused kernels against the graph
    refusal_changed: float | None = None  # bundles with a refusal check: share of refusal decisions changed
    refusal_n: int | None = None  # validation images + negatives the refusal decisions were compared on

    def manifest_entry(self) -> dict[str, float | int | str | bool]:
        entry = {k: v for k, v in asdict(self).items() if k not in ("reasons", "variant") and v is not None}
        entry.update(max_auc_drop=MAX_AUC_DROP, min_agreement=MIN_AGREEMENT, data="validation split")
        if self.kernel_deviation is not None:
            entry.update(max_kernel_deviation=MAX_KERNEL_DEVIATION)
        if self.refusal_changed is not None:
            entry.update(max_refusal_change=MAX_REFUSAL_CHANGE,
                         refusal_data="validation split and negatives (every family, models/training/negatives.py)")
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in entry.items()}


def gate(
    variant: str, fp32_logits: np.ndarray, logits: np.ndarray, y: np.ndarray, urgent: list[int], threshold: float
) -> GateResult:
    """AUC drop <= 0.002 and triage-category agreement >= 99.5% against FP32 on the same images.

    `urgent`: the label indices whose probabilities make P(urgent) (see models.bundle.TriagePolicy).
    """
    p32, p = softmax(fp32_logits)[:, urgent].sum(1), softmax(logits)[:, urgent].sum(1)
    positive = np.isin(y, urgent)
    auc32, auc = roc_auc(positive, p32), roc_auc(positive, p)
    agreement = float(np.mean((p32 >= threshold) == (p >= threshold)))
    reasons = []
    if auc32 - auc > MAX_AUC_DROP:
        reasons.append(f"AUC drops by {auc32 - auc:.4f} (allowed {MAX_AUC_DROP})")
    if agreement < MIN_AGREEMENT:
        reasons.append(f"triage agrees with FP32 on {agreement:.2%} of images (needed {MIN_AGREEMENT:.1%})")
    return GateResult(
        variant=variant,
        n=int(len(y)),
        auc_fp32=auc32,
        auc_variant=auc,
        auc_drop=auc32 - auc,
        agreement=agreement,
        max_logit_deviation=float(np.abs(logits - fp32_logits).max()),
        passed=not reasons,
        reasons=tuple(reasons),
    )


def kernel_check(result: GateResult, as_written: np.ndarray, fused: np.ndarray) -> GateResult:
    """``result`` (judged on the graph as written) with the check that ONNX Runtime's fused kernels
    on this CPU, which a CPU device serves with, compute that same graph on the same images."""
    deviation = float(np.abs(fused - as_written).max())
    if deviation <= MAX_KERNEL_DEVIATION:
        return replace(result, kernel_deviation=deviation)
    why = (f"ONNX Runtime's INT8 kernels on this CPU do not compute this graph: logits up to {deviation:.2f} "
           f"from the graph as written (allowed {MAX_KERNEL_DEVIATION})")
    return replace(result, kernel_deviation=deviation, passed=False, reasons=(*result.reasons, why))


def refusal_check(result: GateResult, fp32_refused: np.ndarray, refused: np.ndarray) -> GateResult:
    """``result`` with the check that the variant keeps FP32's refusal decisions (validation images
    and negatives, the same images for both)."""
    changed = float(np.mean(np.asarray(fp32_refused) != np.asarray(refused)))
    out = replace(result, refusal_changed=changed, refusal_n=int(len(refused)))
    if changed <= MAX_REFUSAL_CHANGE:
        return out
    why = f"changes the refusal decision on {changed:.2%} of images (allowed {MAX_REFUSAL_CHANGE:.0%})"
    return replace(out, passed=False, reasons=(*result.reasons, why))
