"""Add a gated INT8 or FP16 variant to a bundle: quantize, gate against FP32, measure, write.

Nothing is written to the bundle unless a candidate passes the gate, and nothing at all before
every slow step (quantization, gate, latency, report) is done; see ``_commit`` for the order.
"""

from __future__ import annotations

import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from models import atomic, audit
from models.bundle import (AuditCheck, Bundle, DriftSignal, Manifest, Variant, file_entry, load_bundle, sha256_file,
                           write_manifest)
from models.training.images import decode_rgb
from models.metrics import softmax
from models.training.monitoring import variant_signals
from optimize import quantize
from optimize.errors import OptimizeError
from optimize.gate import GateResult, gate, kernel_check, refusal_check
from optimize.heldout import calibration_batch, default_data_dir, negative_batch, redraw_split, validation_batch
from optimize.ort_eval import judged_fused, logits, refused, session
from optimize.report import VariantRun, render
from optimize.timing import interleaved_latencies, summarise

REPORT_NAME = "report.html"
NEGATIVES_PER_FAMILY = 30  # negatives of each family the refusal decisions are compared on
CARD_NAME = "MODEL_CARD.md"
CARD_BEGIN, CARD_END = "<!-- optimize:begin -->", "<!-- optimize:end -->"


@dataclass
class Candidate:
    precision: str
    name: str
    file: str
    targets: tuple[str, ...]
    notes: str
    result: GateResult | None = None
    latency: dict[str, float] | None = None
    audit: list[AuditCheck] | None = None
    refused: list[str] = field(default_factory=list)  # why the gate or the audits refused it
    monitoring: list[DriftSignal] | None = None  # its own model-score signals (Variant.monitoring)


@dataclass
class Outcome:
    accepted: list[Candidate] = field(default_factory=list)
    rejected: list[Candidate] = field(default_factory=list)
    report: Path | None = None


def candidates_for(precision: str) -> list[Candidate]:
    if precision == "int8":
        return [
            Candidate("int8", r.name, f"model.{r.name}.onnx", r.targets, r.notes)
            for r in (quantize.TENSORRT_INT8, quantize.CPU_INT8)
        ]
    if precision == "fp16":
        return [Candidate("fp16", "fp16", "model.fp16.onnx", ("gpu",),
                          "FP16 weights and activations, FP32 inputs/outputs (for TensorRT)")]
    raise ValueError(f"no optimizer for precision {precision!r}")


def _refusal_outputs(m: Manifest) -> dict[str, float]:
    """The refusal check's graph outputs and their thresholds (none without a refusal policy)."""
    return {c.output: c.threshold for c in m.refusal.checks} if m.refusal else {}


def _build(c: Candidate, bundle: Bundle, tmp: Path, calib: Callable[[], np.ndarray], method: str) -> None:
    fp32 = bundle.path_of(bundle.manifest.variant("fp32").file)
    keep_float = tuple(_refusal_outputs(bundle.manifest))
    if c.precision == "fp16":
        quantize.convert_fp16(fp32, tmp, keep_float)
        return
    recipe = quantize.TENSORRT_INT8 if c.name == quantize.TENSORRT_INT8.name else quantize.CPU_INT8
    quantize.quantize_int8(fp32, tmp, bundle.manifest.input.tensor_name, calib(), recipe, method, keep_float)


def _audit(path: Path, precision: str, m: Manifest, images: list[np.ndarray], positive: np.ndarray,
           in_group: np.ndarray | None, threads: int) -> list[AuditCheck]:
    """The bundle's shortcut audits on one candidate file, at the bundle's threshold, run as the gate
    runs it: on every validation image, and on the audit group's alone where the bundle declares one."""
    sess = session(path, threads, fused=judged_fused(precision))

    def predict(x: np.ndarray) -> np.ndarray:
        return m.urgent_probability(softmax(sess.run([m.outputs.logits], {m.input.tensor_name: x})[0].astype(np.float64)))

    return audit.run_audit(predict, images, positive, m.input, m.policy.operating_point.threshold, m.audit.checks,
                           m.audit.group, in_group)


def _check(c: Candidate, m: Manifest, path: Path, audit_data: Callable[[], tuple], threads: int) -> list[str]:
    """Why a candidate is refused (empty: accepted): the accuracy gate, then the bundle's audit limits."""
    if not c.result.passed:
        return list(c.result.reasons)
    if m.audit is None:
        return []
    c.audit = _audit(path, c.precision, m, *audit_data(), threads)
    return audit.failures(c.audit, m.audit)


def _cpu_latencies(paths: list[Path], m: Manifest, threads: int) -> list[dict[str, float]]:
    x = np.zeros((1, m.input.channels, m.input.height, m.input.width), np.float32)
    runs = []
    for path in paths:
        sess = session(path, threads)
        runs.append(lambda batch, s=sess: s.run([m.outputs.logits], {m.input.tensor_name: batch}))
    return [summarise(s, 1) for s in interleaved_latencies(runs, x, calls=300, rounds=10)]


def add_variant(
    bundle_dir: Path,
    precision: str,
    data_dir: Path | None,
    calibration_images: int = 300,
    method: str = "percentile",
    seed: int = 0,
    threads: int = 2,
    log: Callable[[str], None] = lambda _: None,
) -> Outcome:
    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    data_dir = data_dir or default_data_dir(bundle)
    if not data_dir.is_dir():
        raise OptimizeError(f"no calibration data at {data_dir}: refusing to quantize without it (pass --calibration DIR)")
    held = redraw_split(bundle, data_dir)
    log(f"validation split redrawn: {len(held.val)} images; training side: {len(held.train)}")
    x_val, y_val = validation_batch(bundle, held)
    fp32_path = bundle.path_of(m.variant("fp32").file)
    fp32_logits = logits(fp32_path, m.input.tensor_name, m.outputs.logits, x_val, threads)
    val_logits = {fp32_path: fp32_logits}  # ONNX file -> its validation logits, for the report
    calib_cache: list[np.ndarray] = []

    def calib() -> np.ndarray:
        if not calib_cache:
            calib_cache.append(calibration_batch(bundle, held, calibration_images, seed))
            log(f"calibration: {calibration_images} training images (seed {seed}), method {method}")
        return calib_cache[0]

    audit_cache: list[tuple] = []

    def audit_data() -> tuple[list[np.ndarray], np.ndarray, np.ndarray | None]:
        if not audit_cache:
            in_group = audit.group_members(m.audit.group, [s.path.name for s in held.val],
                                           [m.labels[s.label] for s in held.val])
            audit_cache.append(([decode_rgb(s.path) for s in held.val], np.isin(y_val, m.urgent_indices), in_group))
        return audit_cache[0]

    checks = _refusal_outputs(m)
    if checks:
        x_refusal = np.concatenate([x_val, negative_batch(bundle, held, NEGATIVES_PER_FAMILY)])
        fp32_refused = refused(fp32_path, m.input.tensor_name, checks, x_refusal, threads)
        log(f"refusal: FP32 refuses {fp32_refused[:len(x_val)].mean():.2%} of validation, "
            f"{fp32_refused[len(x_val):].mean():.2%} of {len(x_refusal) - len(x_val)} negatives")
    outcome = Outcome()
    with tempfile.TemporaryDirectory(dir=bundle.root, prefix=".optimize-") as work:
        for c in candidates_for(precision):
            tmp = Path(work) / c.file
            _build(c, bundle, tmp, calib, method)
            val_logits[tmp] = logits(tmp, m.input.tensor_name, m.outputs.logits, x_val, threads,
                                     fused=judged_fused(c.precision))
            c.result = gate(c.name, fp32_logits, val_logits[tmp], y_val, m.urgent_indices,
                            m.policy.operating_point.threshold)
            if "cpu" in c.targets and c.precision == "int8":
                fused = logits(tmp, m.input.tensor_name, m.outputs.logits, x_val, threads, fused=True)
                c.result = kernel_check(c.result, val_logits[tmp], fused)
            if checks:
                c.result = refusal_check(c.result, fp32_refused, refused(
                    tmp, m.input.tensor_name, checks, x_refusal, threads, fused=judged_fused(c.precision)))
            c.refused = _check(c, m, tmp, audit_data, threads)
            worst = f", worst audit flip rate {max(a.flip_rate for a in c.audit):.2%}" if c.audit else ""
            kernels = ("" if c.result.kernel_deviation is None
                       else f", this CPU's kernels within {c.result.kernel_deviation:.4f} of the graph")
            refusal = ("" if c.result.refusal_changed is None
                       else f", refusal decisions changed on {c.result.refusal_changed:.2%} of {c.result.refusal_n}")
            log(f"{c.name}: AUC {c.result.auc_variant:.4f} (FP32 {c.result.auc_fp32:.4f}), agreement "
                f"{c.result.agreement:.2%}, max logit deviation {c.result.max_logit_deviation:.4f}{kernels}{refusal}"
                f"{worst}: "
                f"{'FAIL: ' + '; '.join(c.refused) if c.refused else 'PASS'}")
            (outcome.rejected if c.refused else outcome.accepted).append(c)
        if not outcome.accepted:
            return outcome
        paths = [Path(work) / c.file for c in outcome.accepted]
        for c, lat in zip(outcome.accepted, _cpu_latencies(paths, m, threads)):
            c.latency = lat
        staged = {}
        for c in outcome.accepted:
            tmp = Path(work) / c.file
            c.file = f"model.{c.name}.{sha256_file(tmp)[:8]}.onnx"  # never overwrites a file in use
            staged[c.file] = tmp
        if m.monitoring is not None:
            for c in outcome.accepted:
                c.monitoring = variant_signals(bundle, held.val, staged[c.file])
            log(f"monitoring: model-score signals of {len(outcome.accepted)} variant(s) on {len(held.val)} images")
        manifest, dropped = _with_variants(bundle, precision, outcome.accepted, staged)
        report, card = _documents(bundle, manifest, staged, x_val, y_val, val_logits, threads)
        outcome.report = _commit(bundle.root, manifest, staged, report, card, dropped)
    return outcome


def _with_variants(
    bundle: Bundle, precision: str, accepted: list[Candidate], staged: dict[str, Path]
) -> tuple[Manifest, set[str]]:
    """The manifest with this precision's variants replaced, and the files it no longer needs."""
    m = bundle.manifest
    kept = [v for v in m.variants if v.precision != precision]
    new = [Variant(precision=c.precision, file=c.file, targets=list(c.targets), notes=c.notes,
                   gate=c.result.manifest_entry(), audit=c.audit, monitoring=c.monitoring) for c in accepted]
    used = {v.file for v in kept + new}
    dropped = {v.file for v in m.variants if v.precision == precision} - used
    files = {k: v for k, v in m.files.items() if k not in dropped}
    files.update({name: file_entry(path) for name, path in staged.items()})
    return m.model_copy(update={"variants": kept + new, "files": files}), dropped


def _documents(bundle: Bundle, manifest: Manifest, staged: dict[str, Path], x_val, y_val,
               val_logits: dict[Path, np.ndarray], threads: int):
    """The report (HTML) and the model card (Markdown, or None if the bundle has none), as bytes.

    ``val_logits`` holds the validation logits already computed (FP32 and the gated candidates);
    only variants kept from earlier runs are evaluated again here.
    """
    variants = sorted(manifest.variants, key=lambda v: ("fp32", "fp16", "int8").index(v.precision))
    paths = [staged.get(v.file, bundle.path_of(v.file)) for v in variants]
    latencies = _cpu_latencies(paths, manifest, threads)
    runs = [
        VariantRun(f"{v.precision} ({'/'.join(v.targets)})",
                   val_logits[p] if p in val_logits
                   else logits(p, manifest.input.tensor_name, manifest.outputs.logits, x_val, threads,
                               fused=judged_fused(v.precision)), lat)
        for v, p, lat in zip(variants, paths, latencies)
    ]
    cpu = f"{platform.processor() or platform.machine()}, {threads} threads"
    report = render(manifest, y_val, runs, cpu).encode("utf-8")
    card_path = bundle.root / CARD_NAME
    card = _card_text(card_path.read_text(encoding="utf-8"), variants, latencies) if card_path.exists() else None
    return report, None if card is None else card.encode("utf-8")


def _commit(root: Path, manifest: Manifest, staged: dict[str, Path], report: bytes, card: bytes | None,
            dropped: set[str]) -> Path:
    """The write phase, after every slow step: new model files under new names, then the report and
    card (each replaced atomically), then the manifest that names them; only then are superseded
    files deleted. An interruption leaves the old bundle valid, except in the few milliseconds
    between replacing the report/card and the manifest."""
    for name, tmp in staged.items():
        os.replace(tmp, root / name)
    atomic.fsync_directory(root)
    files = dict(manifest.files)
    atomic.write_bytes(root / REPORT_NAME, report)
    files[REPORT_NAME] = file_entry(root / REPORT_NAME)
    if card is not None:
        atomic.write_bytes(root / CARD_NAME, card)
        files[CARD_NAME] = file_entry(root / CARD_NAME)
    write_manifest(root, manifest.model_copy(update={"files": files}))
    for name in dropped:
        (root / name).unlink(missing_ok=True)
    load_bundle(root)  # the bundle we leave behind must verify
    return root / REPORT_NAME


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _card_text(text: str, variants: list[Variant], latencies: list[dict[str, float]]) -> str:
    rows = ["| variant | targets | file | AUC drop | agreement | max logit dev. | refusal changed | "
            "worst audit flip rate | ORT CPU b1 p50 ms |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for v, lat in zip(variants, latencies):
        g = v.gate or {}
        worst = max(v.audit, key=lambda a: a.flip_rate) if v.audit else None
        where = "" if worst is None or worst.group is None else f", {worst.group}"
        rows.append(
            f"| {v.precision} | {', '.join(v.targets)} | `{v.file}` | "
            f"{g.get('auc_drop', 0.0):.4f} | {g.get('agreement', 1.0):.2%} | "
            f"{g.get('max_logit_deviation', 0.0):.4f} | "
            f"{_share(g.get('refusal_changed'))} | "
            f"{f'{worst.flip_rate:.2%} ({worst.name}{where})' if worst else '-'} | {lat['p50_ms']:.3f} |"
        )
    section = "\n".join([
        CARD_BEGIN,
        "## Optimized variants",
        "",
        "Each variant passed the accuracy gate against FP32 on the validation split (AUC drop <= 0.002, "
        "triage agreement >= 99.5%) and the bundle's shortcut audits (manifest `audit`); `report.html` has "
        "the ROC, calibration and confusion details. The INT8 graphs are judged as written (quantize, "
        "dequantize, float convolution: what TensorRT and VNNI kernels compute, the same on every CPU up "
        "to float rounding). "
        "The CPU graph's weights use 7 bits, so that x86 CPUs without VNNI, which add pairs of products "
        "in 16 bits, compute it as written too; ONNX Runtime's kernels on the CPU that made it stayed "
        "within 0.05 logits of it (`kernel_deviation` in the manifest). "
        "A bundle's refusal check is computed in float in every variant (only the shared network below it is "
        "quantized); a variant may change FP32's refusal decision on at most 1% of the validation images and "
        f"negatives ({NEGATIVES_PER_FAMILY} of every family) together (`refusal_changed` in the manifest).",
        "",
        *rows,
        CARD_END,
    ])
    if CARD_BEGIN in text:
        head, _, rest = text.partition(CARD_BEGIN)
        text = head + section + rest.partition(CARD_END)[2]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    return text
