"""``bedside eval``: a bundle's metrics at its own operating point on a folder of labelled images.

The folder holds one subfolder per label (matched case-insensitively); positive = the
bundle's urgent label. Besides the metrics: patient-bootstrap confidence intervals, subgroups
(per label, per file-name group and aspect bucket the bundle declares) and, with --audit, the
shortcut audits.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from device import intake, quality
from device.commands.common import add_bundle_argument, add_runtime_arguments, open_triager
from device.triage import Triager
from models import audit
from models.bundle import AuditCheck, EvaluationPolicy, Manifest
from models.metrics import binary_report, bootstrap_intervals, subgroup_report

BATCH = 32


class DataFolderError(Exception):
    pass


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    add_bundle_argument(parser)
    add_runtime_arguments(parser)
    parser.add_argument("--data", type=Path, required=True, help="folder with one subfolder per label")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--audit", action="store_true",
                        help="also run the shortcut audits (squeeze/widen, borders, marker, exposure, JPEG)")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="patient bootstrap resamples for the confidence intervals (default 1000)")


def labelled_files(data: Path, manifest: Manifest) -> list[tuple[Path, int]]:
    if not data.is_dir():
        raise DataFolderError(f"{data}: not a directory")
    by_lower = {label.lower(): i for i, label in enumerate(manifest.labels)}
    items: list[tuple[Path, int]] = []
    for folder in sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name.lower() not in by_lower:
            raise DataFolderError(
                f"{folder}: folder name matches no label of {manifest.id} (labels: {', '.join(manifest.labels)})"
            )
        index = by_lower[folder.name.lower()]
        items += [(f, index) for f in sorted(folder.iterdir()) if f.is_file() and not f.name.startswith(".")]
    if not items:
        raise DataFolderError(f"{data}: no labelled images (expected subfolders named {manifest.labels})")
    return items


@dataclass
class Scored:
    """What the model said about each readable file of the folder."""

    files: list[tuple[Path, int]] = field(default_factory=list)  # (path, label index) of each scored file
    probs: list[np.ndarray] = field(default_factory=list)
    aspects: list[float] = field(default_factory=list)  # width / height as received
    ungradable: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def p(self) -> np.ndarray:
        return np.concatenate(self.probs) if self.probs else np.empty(0)


def predict_all(triager: Triager, items: list[tuple[Path, int]]) -> Scored:
    """Urgent-class probabilities of every readable file, its aspect, the ungradable count and errors."""
    m = triager.manifest
    scored, batch = Scored(), []

    def flush():
        if batch:
            scored.probs.append(triager.predict(np.stack(batch))[0][:, m.urgent_index])
            batch.clear()

    for path, index in tqdm(items, desc="evaluating", unit="img", file=sys.stderr, leave=False):
        try:
            img = intake.decode_file(path)
        except intake.IntakeError as exc:
            scored.errors.append(str(exc))
            continue
        scored.ungradable += not quality.assess(img, m.quality, m.input.dicom).ok
        batch.append(triager.preprocess(img))
        scored.files.append((path, index))
        scored.aspects.append(img.pixels.shape[1] / img.pixels.shape[0])
        if len(batch) == BATCH:
            flush()
    flush()
    return scored


def patient_ids(files: list[tuple[Path, int]], policy: EvaluationPolicy | None) -> list[str]:
    """One id per file (label folder + the bundle's patient pattern); a file it does not match stands alone."""
    pattern = re.compile(policy.patient_pattern) if policy and policy.patient_pattern else None
    ids = []
    for path, index in files:
        match = pattern.match(path.name) if pattern else None
        ids.append(f"{index}:{match.group(1) if match else path.name}")
    return ids


def subgroup_masks(scored: Scored, manifest: Manifest) -> dict[str, np.ndarray]:
    """Per label folder, per subgroup the bundle declares (file name patterns), per aspect bucket."""
    names = [path.name for path, _ in scored.files]
    labels = np.array([index for _, index in scored.files])
    masks = {f"label {label}": labels == i for i, label in enumerate(manifest.labels)}
    policy = manifest.evaluation
    if policy is None:
        return masks
    for group in policy.subgroups:
        pattern = re.compile(group.file_pattern)
        masks[group.name] = np.array([bool(pattern.search(n)) for n in names])
    edges = [0.0, *policy.aspect_buckets, float("inf")]
    aspects = np.array(scored.aspects)
    for lo, hi in zip(edges[:-1], edges[1:]):
        name = f"aspect >= {lo:g}" if hi == float("inf") else f"aspect < {hi:g}" if lo == 0 else f"aspect {lo:g}-{hi:g}"
        masks[name] = (aspects >= lo) & (aspects < hi)
    return masks


def audit_folder(triager: Triager, scored: Scored, y: np.ndarray) -> list[AuditCheck]:
    """The bundle's shortcut audits on this folder's readable files (decoded again, one at a time)."""
    m = triager.manifest
    images = (intake.decode_file(path).pixels for path, _ in scored.files)

    def predict(x: np.ndarray) -> np.ndarray:
        return triager.predict(x)[0][:, m.urgent_index]

    return audit.run_audit(predict, images, y, m.input, m.policy.operating_point.threshold)


def run(args: argparse.Namespace) -> int:
    triager = open_triager(args)
    m = triager.manifest
    try:
        items = labelled_files(args.data, m)
    except DataFolderError as exc:
        print(f"bedside eval: {exc}", file=sys.stderr)
        return 1
    scored = predict_all(triager, items)
    for err in scored.errors:
        print(f"skipped {err}", file=sys.stderr)
    y = np.array([index == m.urgent_index for _, index in scored.files], dtype=bool)
    if y.all() or not y.any():
        print("bedside eval: need images of both the urgent class and another class", file=sys.stderr)
        return 1
    p, threshold = scored.p, m.policy.operating_point.threshold
    report = binary_report(y, p, threshold).as_dict()
    report.update(
        ungradable=scored.ungradable,
        errors=len(scored.errors),
        positive_label=m.policy.urgent_label,
        model=triager.model.as_dict(),
        intervals=bootstrap_intervals(y, p, threshold, patient_ids(scored.files, m.evaluation), args.bootstrap),
        subgroups=subgroup_report(y, p, threshold, subgroup_masks(scored, m)),
    )
    checks = audit_folder(triager, scored, y) if args.audit else None
    if checks is not None:
        report["audit"] = [c.model_dump() for c in checks]
    if args.json:
        print(json.dumps(report))
        return 0
    print_report(report, m, triager, args.data)
    if checks is not None:
        print("\nshortcut audits (share of images whose triage changes; mean change of P):")
        print("\n".join(audit.table(checks)))
        if m.audit is not None:
            over = audit.failures(checks, m.audit)
            print("over the bundle's limit: " + "; ".join(over) if over
                  else f"every check within the bundle's limit ({m.audit.max_flip_rate:.0%})")
    return 0


def print_report(report: dict, m: Manifest, triager: Triager, data: Path) -> None:
    c, ci = report["confusion"], report["intervals"]

    def with_ci(name: str) -> str:
        lo_hi = ci.get(name)
        return f"{report[name]:.4f}" + (f" (95% CI {lo_hi[0]:.4f}-{lo_hi[1]:.4f})" if lo_hi else "")

    print(f"{m.id} {m.version} ({triager.model.precision}, {triager.model.backend}) on {data}")
    print(f"n={report['n']} (positive {report['n_positive']})  AUC {with_ci('auc')}  accuracy {with_ci('accuracy')}")
    print(f"at P({m.policy.urgent_label}) >= {report['threshold']:.3f}: sensitivity {with_ci('sensitivity')}  "
          f"specificity {with_ci('specificity')}")
    print(f"confusion: TP {c['tp']}  FN {c['fn']}  TN {c['tn']}  FP {c['fp']}   "
          f"ungradable {report['ungradable']}  unreadable {report['errors']}")
    print("intervals: bootstrap of whole patients")
    print(f"{'subgroup':<24} {'n':>5} {'AUC':>7} {'sens':>7} {'spec':>7} {'flagged':>8}")
    for g in report["subgroups"]:
        cells = [f"{g[k]:.4f}" if k in g else "-" for k in ("auc", "sensitivity", "specificity")]
        print(f"{g['group']:<24} {g['n']:>5} {cells[0]:>7} {cells[1]:>7} {cells[2]:>7} {g['flagged']:>8.1%}")
