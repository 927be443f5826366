"""``bedside eval``: a bundle's metrics at its own operating point on a folder of labelled images.

The folder holds one subfolder per label (matched case-insensitively); positive = the
bundle's urgent label.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from device import intake, quality
from device.commands.common import add_bundle_argument, add_runtime_arguments, open_triager
from device.triage import Triager
from models.bundle import Manifest
from models.metrics import binary_report

BATCH = 32


class DataFolderError(Exception):
    pass


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    add_bundle_argument(parser)
    add_runtime_arguments(parser)
    parser.add_argument("--data", type=Path, required=True, help="folder with one subfolder per label")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


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


def predict_all(triager: Triager, items: list[tuple[Path, int]]):
    """Urgent-class probabilities, true labels, ungradable count and per-file errors."""
    m = triager.manifest
    probs, labels, batch, batch_labels, errors, ungradable = [], [], [], [], [], 0

    def flush():
        if batch:
            p, _ = triager.predict(np.stack(batch))
            probs.append(p[:, m.urgent_index])
            labels.extend(batch_labels)
            batch.clear()
            batch_labels.clear()

    for path, index in tqdm(items, desc="evaluating", unit="img", file=sys.stderr, leave=False):
        try:
            img = intake.decode_file(path)
        except intake.IntakeError as exc:
            errors.append(str(exc))
            continue
        ungradable += not quality.assess(img, m.quality, m.input.dicom).ok
        batch.append(triager.preprocess(img))
        batch_labels.append(index)
        if len(batch) == BATCH:
            flush()
    flush()
    y = np.asarray(labels) == m.urgent_index
    return np.concatenate(probs) if probs else np.empty(0), y, ungradable, errors


def run(args: argparse.Namespace) -> int:
    triager = open_triager(args)
    m = triager.manifest
    try:
        items = labelled_files(args.data, m)
    except DataFolderError as exc:
        print(f"bedside eval: {exc}", file=sys.stderr)
        return 1
    p, y, ungradable, errors = predict_all(triager, items)
    for err in errors:
        print(f"skipped {err}", file=sys.stderr)
    if y.all() or not y.any():
        print("bedside eval: need images of both the urgent class and another class", file=sys.stderr)
        return 1
    report = binary_report(y, p, m.policy.operating_point.threshold).as_dict()
    report.update(
        ungradable=ungradable,
        errors=len(errors),
        positive_label=m.policy.urgent_label,
        model=triager.model.as_dict(),
    )
    if args.json:
        print(json.dumps(report))
    else:
        c = report["confusion"]
        print(f"{m.id} {m.version} ({triager.model.precision}, {triager.model.backend}) on {args.data}")
        print(f"n={report['n']} (positive {report['n_positive']})  AUC {report['auc']:.4f}  "
              f"accuracy {report['accuracy']:.4f}")
        print(f"at P({m.policy.urgent_label}) >= {report['threshold']:.3f}: sensitivity {report['sensitivity']:.4f}  "
              f"specificity {report['specificity']:.4f}")
        print(f"confusion: TP {c['tp']}  FN {c['fn']}  TN {c['tn']}  FP {c['fp']}   "
              f"ungradable {ungradable}  unreadable {len(errors)}")
    return 0
