"""``bedside eval``: a bundle's metrics at its own operating point on a folder of labelled images.

The folder holds one subfolder per label (matched case-insensitively); positive = the
bundle's urgent group, scored by P(urgent) as the policy combines it. Or it is a one-vs-rest
folder, `<label>/` and `not_<label>/` for one urgent label (external test sets often label only
melanoma): then `auc` is that of P(label), `sensitivity` the share of `<label>` images triaged
URGENT and `specificity` the share of the others triaged ROUTINE, in the same JSON shape.
Besides the metrics: patient-bootstrap confidence intervals, subgroups (per folder, per
file-name group and aspect bucket the bundle declares), for a multi-class bundle its per-class
metrics (`multiclass`), and, with --audit, the bundle's shortcut audits (also on the files of
its audit group alone, where it declares one).

A bundle with a refusal check (issue 21): the images it refuses are reported apart (`refusal`:
how many, what share, per label) and the metrics are those of what it judged, with the figures
on every image beside them (`including_refused`). Images that fail the quality checks are scored
and counted as before (`ungradable`).

`--must-refuse DIR` (instead of --data): a folder (any depth) of images the exam must not judge;
the share the device would call UNGRADABLE, by reason (the quality checks, and which of them, or
the model's refusal check), and the files it would have judged.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from device import intake
from device.commands.common import add_bundle_argument, add_runtime_arguments, add_site_argument, open_triager
from device.decision import quality, refusal
from device.decision.triage import UNGRADABLE
from device.runtime.triager import Triager
from models import audit
from models.bundle import AuditCheck, EvaluationPolicy, Manifest
from models.metrics import binary_report, bootstrap_intervals, multiclass_report, roc_auc, subgroup_report

BATCH = 32


class DataFolderError(Exception):
    pass


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    add_bundle_argument(parser)
    add_runtime_arguments(parser)
    add_site_argument(parser)
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", type=Path, help="folder with one subfolder per label")
    data.add_argument("--must-refuse", type=Path, metavar="DIR",
                      help="a folder (any depth) of images the exam must not judge: the share it refuses, by reason")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--audit", action="store_true",
                        help="also run the shortcut audits (squeeze/widen, borders, marker, exposure, JPEG)")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="patient bootstrap resamples for the confidence intervals (default 1000)")


NOT = -1  # the label index of files in a one-vs-rest folder's not_<label>/


def one_vs_rest_label(names: list[str], manifest: Manifest) -> str | None:
    """The label of a `<label>/` + `not_<label>/` folder pair, None when the folders are not one."""
    lower = sorted((n.lower() for n in names), key=lambda n: n.startswith("not_"))
    if len(lower) != 2 or lower[1] != f"not_{lower[0]}":
        return None
    label = next((l for l in manifest.labels if l.lower() == lower[0]), None)
    if label is None:
        return None
    if label not in manifest.policy.urgent_labels:
        raise DataFolderError(f"{label} is not an urgent label of {manifest.id} (urgent: "
                              f"{', '.join(manifest.policy.urgent_labels)}): a one-vs-rest folder must name one")
    return label


def labelled_files(data: Path, manifest: Manifest) -> tuple[list[tuple[Path, int]], str | None]:
    """(file, label index) pairs (NOT for a not_<label>/ file) and the one-vs-rest label, if it is one."""
    if not data.is_dir():
        raise DataFolderError(f"{data}: not a directory")
    folders = sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
    by_lower = {label.lower(): i for i, label in enumerate(manifest.labels)}
    single = one_vs_rest_label([f.name for f in folders], manifest)
    if single is not None:
        by_lower = {single.lower(): manifest.labels.index(single), f"not_{single.lower()}": NOT}
    items: list[tuple[Path, int]] = []
    for folder in folders:
        if folder.name.lower() not in by_lower:
            raise DataFolderError(
                f"{folder}: folder name matches no label of {manifest.id} (labels: {', '.join(manifest.labels)}; "
                "or a one-vs-rest pair such as mel/ and not_mel/)"
            )
        index = by_lower[folder.name.lower()]
        items += [(f, index) for f in sorted(folder.iterdir()) if f.is_file() and not f.name.startswith(".")]
    if not items:
        raise DataFolderError(f"{data}: no labelled images (expected subfolders named {manifest.labels})")
    return items, single


@dataclass
class Scored:
    """What the model said about each readable file of the folder."""

    files: list[tuple[Path, int]] = field(default_factory=list)  # (path, label index) of each scored file
    probs: list[np.ndarray] = field(default_factory=list)  # (batch, labels) softmax probabilities
    refusals: list[np.ndarray] = field(default_factory=list)  # (batch,) refused by the model's own check
    aspects: list[float] = field(default_factory=list)  # width / height as received
    ungradable: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def probabilities(self) -> np.ndarray:
        return np.concatenate(self.probs) if self.probs else np.empty((0, 0))

    @property
    def refused(self) -> np.ndarray:
        """Whether the bundle's refusal check refused each scored file (all False without one)."""
        return np.concatenate(self.refusals) if self.refusals else np.zeros(0, bool)

    @property
    def indices(self) -> np.ndarray:
        return np.array([index for _, index in self.files], dtype=np.int64)

    def judged(self) -> "Scored":
        """The files the refusal check did not refuse (their aspects and probabilities with them)."""
        keep = ~self.refused
        return Scored(files=[f for f, k in zip(self.files, keep) if k], probs=[self.probabilities[keep]],
                      refusals=[self.refused[keep]], aspects=[a for a, k in zip(self.aspects, keep) if k],
                      ungradable=self.ungradable, errors=self.errors)


def predict_all(triager: Triager, items: list[tuple[Path, int]]) -> Scored:
    """Probabilities of every readable file, its aspect, the ungradable count and errors."""
    m = triager.manifest
    scored, batch = Scored(), []

    def flush():
        if batch:
            run = triager.run_model(np.stack(batch))
            scored.probs.append(run.probabilities)
            scored.refusals.append(np.zeros(len(batch), bool) if run.refusal_scores is None else
                                   np.array([refusal.assess(row, m.refusal).refused for row in run.refusal_scores]))
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
    return [f"{index}:{policy.patient_of(path.name) if policy else path.name}" for path, index in files]


def subgroup_masks(scored: Scored, manifest: Manifest) -> dict[str, np.ndarray]:
    """Per label folder, per subgroup the bundle declares (file name patterns), per aspect bucket."""
    names = [path.name for path, _ in scored.files]
    labels = scored.indices
    masks = {f"label {label}": labels == i for i, label in enumerate(manifest.labels) if (labels == i).any()}
    if (labels == NOT).any():
        masks["not labelled urgent"] = labels == NOT
    policy = manifest.evaluation
    return masks if policy is None else {**masks, **policy.groups(names, scored.aspects)}


def audit_folder(triager: Triager, scored: Scored, y: np.ndarray) -> list[AuditCheck]:
    """The bundle's shortcut audits on this folder's readable files (decoded again, one at a time),
    and on the files of the audit group the bundle declares (by file name and label folder)."""
    m = triager.manifest
    images = (intake.decode_file(path).pixels for path, _ in scored.files)

    def predict(x: np.ndarray) -> np.ndarray:
        return m.urgent_probability(triager.predict(x)[0])

    names = m.audit.checks if m.audit is not None else list(audit.CHECKS)
    group = m.audit.group if m.audit is not None else None
    in_group = audit.group_members(group, [path.name for path, _ in scored.files],
                                   [m.labels[i] if i != NOT else "" for i in scored.indices])
    return audit.run_audit(predict, images, y, m.input, triager.operating_point.threshold, names, group, in_group)


def folder_report(scored: Scored, m: Manifest, single: str | None, bootstrap: int,
                  threshold: float | None = None) -> dict:
    """The binary report of the urgent group (or of the one-vs-rest label), and its extras, at
    ``threshold`` (default: the bundle's own operating point)."""
    probs = scored.probabilities
    threshold = m.policy.operating_point.threshold if threshold is None else threshold
    p = m.urgent_probability(probs)
    if single is not None:
        y = scored.indices == m.labels.index(single)
    else:
        y = np.isin(scored.indices, m.urgent_indices)
    if y.all() or not y.any():
        raise DataFolderError("need images of both the urgent class and another class")
    report = binary_report(y, p, threshold).as_dict()
    if single is not None:
        report.update(auc=roc_auc(y, probs[:, m.labels.index(single)]), auc_of=f"P({single})")
    report.update(
        positive_label=single or " + ".join(m.policy.urgent_labels),
        intervals=bootstrap_intervals(y, p, threshold, patient_ids(scored.files, m.evaluation), bootstrap),
        subgroups=subgroup_report(y, p, threshold, subgroup_masks(scored, m)),
    )
    if single is not None:
        report["intervals"].pop("auc", None)  # resampled on P(urgent), not on P(label)
    if len(m.labels) > 2 and single is None:
        report["multiclass"] = multiclass_report(scored.indices, probs, m.labels, m.policy.urgent_labels, threshold,
                                                 m.policy.focus_label)
    return report


def run(args: argparse.Namespace) -> int:
    triager = open_triager(args)
    m = triager.manifest
    if args.must_refuse is not None:
        return must_refuse(triager, args.must_refuse, args.json)
    try:
        items, single = labelled_files(args.data, m)
        scored = predict_all(triager, items)
        for err in scored.errors:
            print(f"skipped {err}", file=sys.stderr)
        report = folder_report(scored.judged(), m, single, args.bootstrap, triager.operating_point.threshold)
    except DataFolderError as exc:
        print(f"bedside eval: {exc}", file=sys.stderr)
        return 1
    report.update(ungradable=scored.ungradable, errors=len(scored.errors), model=triager.model.as_dict(),
                  operating_point=triager.operating_point.as_json(),
                  refusal=refusal_report(scored, m, single, triager.operating_point.threshold))
    y = np.isin(scored.indices, [m.labels.index(single)] if single else m.urgent_indices)
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
        group = m.audit.group if m.audit is not None else None
        if group is not None and not any(c.group == group.name for c in checks):
            print(f"no {group.name} in this folder ({group.label}/ files named like {group.file_pattern!r}): "
                  "the audit group's rates are not measured")
        if m.audit is not None:
            over = audit.failures(checks, m.audit)
            print("over the bundle's limit: " + "; ".join(over) if over
                  else f"every check within the bundle's limit ({m.audit.max_flip_rate:.0%})")
    return 0


def refusal_report(scored: Scored, m: Manifest, single: str | None, threshold: float) -> dict | None:
    """How many labelled images the bundle's refusal check refused (None without one), per label,
    and the metrics at the operating point in use (``threshold``) on every image, refused ones included."""
    if m.refusal is None:
        return None
    refused = scored.refused
    names = {i: label for i, label in enumerate(m.labels)} | {NOT: f"not_{single}"}
    y = scored.indices == m.labels.index(single) if single else np.isin(scored.indices, m.urgent_indices)
    every = binary_report(y, m.urgent_probability(scored.probabilities), threshold).as_dict()
    return {
        "n": int(refused.size), "refused": int(refused.sum()), "share": float(refused.mean()) if refused.size else 0.0,
        "calibrated_refusal_rate": m.refusal.calibrated_refusal_rate,
        "by_label": {names[i]: int(refused[scored.indices == i].sum()) for i in sorted(set(scored.indices.tolist()))},
        "including_refused": {k: every[k] for k in ("n", "auc", "sensitivity", "specificity")},
    }


def image_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` (any depth), hidden ones left out, in order."""
    if not folder.is_dir():
        raise DataFolderError(f"{folder}: not a directory")
    return sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                          p.relative_to(folder).parts))


def must_refuse(triager: Triager, folder: Path, as_json: bool) -> int:
    """``--must-refuse``: the device's verdict on every image of a folder the exam must not judge."""
    m = triager.manifest
    try:
        files = image_files(folder)
    except DataFolderError as exc:
        print(f"bedside eval: {exc}", file=sys.stderr)
        return 1
    results, errors = [], []
    for start in tqdm(range(0, len(files), BATCH), desc="evaluating", unit="batch", file=sys.stderr, leave=False):
        prepared = []
        for path in files[start:start + BATCH]:
            try:
                prepared.append(triager.prepare(intake.decode_file(path), str(path)))
            except intake.IntakeError as exc:
                errors.append(str(exc))
        if prepared:
            results += triager.triage_prepared(prepared)
    report = refusal_summary(results, m)
    report.update(folder=str(folder), unreadable=len(errors), model=triager.model.as_dict())
    if as_json:
        print(json.dumps(report))
        return 0
    print(f"{m.id} {m.version} ({triager.model.precision}, {triager.model.backend}) on {folder}")
    print(f"n={report['n']}  refused {report['refused']} ({report['share']:.1%})  judged {report['judged']}  "
          f"unreadable {report['unreadable']}")
    print(f"by reason: quality checks {report['by_reason']['quality']}, refusal check "
          f"{report['by_reason']['refusal_check'] if m.refusal else '- (the bundle has none)'}")
    for code, n in report["quality_codes"].items():
        print(f"  {code:<18} {n:>6}")
    if report["judged_files"]:
        print("judged (should have been refused): " + ", ".join(report["judged_files"][:20])
              + (" ..." if report["judged"] > 20 else ""))
    return 0


def refusal_summary(results: list, m: Manifest) -> dict:
    """Refused share of ``results`` (TriageResults), by reason: the first quality issue's check, or
    the model's refusal check; the files judged URGENT or ROUTINE."""
    n = len(results)
    refused = [r.reasons[0].code if r.reasons else "quality" for r in results if r.triage == UNGRADABLE]
    by_check = refused.count(refusal.NOT_IN_DOMAIN)
    codes: dict[str, int] = {}
    for code in refused:
        if code != refusal.NOT_IN_DOMAIN:
            codes[code] = codes.get(code, 0) + 1
    judged = [r for r in results if r.triage != UNGRADABLE]
    return {
        "n": n, "refused": len(refused), "share": len(refused) / n if n else 0.0,
        "by_reason": {"quality": len(refused) - by_check, "refusal_check": by_check},
        "quality_codes": dict(sorted(codes.items(), key=lambda kv: -kv[1])),
        "judged": len(judged), "judged_triage": {t: sum(r.triage == t for r in judged) for t in ("URGENT", "ROUTINE")},
        "judged_files": [r.source for r in judged],
    }


def print_report(report: dict, m: Manifest, triager: Triager, data: Path) -> None:
    c, ci = report["confusion"], report["intervals"]

    def with_ci(name: str) -> str:
        lo_hi = ci.get(name)
        return f"{report[name]:.4f}" + (f" (95% CI {lo_hi[0]:.4f}-{lo_hi[1]:.4f})" if lo_hi else "")

    print(f"{m.id} {m.version} ({triager.model.precision}, {triager.model.backend}) on {data}")
    print(f"n={report['n']} (positive {report['n_positive']})  AUC {with_ci('auc')}  accuracy {with_ci('accuracy')}")
    auc_of = f" ({report['auc_of']})" if "auc_of" in report else ""
    print(f"positive: {report['positive_label']}{auc_of}")
    print(f"at P({' + '.join(m.policy.urgent_labels)}) >= {report['threshold']:.3f} "
          f"({report['operating_point']['text']}): sensitivity {with_ci('sensitivity')}  specificity "
          f"{with_ci('specificity')}")
    print(f"confusion: TP {c['tp']}  FN {c['fn']}  TN {c['tn']}  FP {c['fp']}   "
          f"ungradable {report['ungradable']}  unreadable {report['errors']}")
    refused = report.get("refusal")
    if refused is not None:
        every = refused["including_refused"]
        print(f"refused by the model's check: {refused['refused']} of {refused['n']} ({refused['share']:.2%}; "
              f"calibrated for {refused['calibrated_refusal_rate']:.2%}), per label "
              + ", ".join(f"{k} {v}" for k, v in refused["by_label"].items())
              + f"; the figures above are on what it judged (on every image: AUC {every['auc']:.4f}, "
              f"sensitivity {every['sensitivity']:.4f}, specificity {every['specificity']:.4f})")
    print("intervals: bootstrap of whole patients")
    print(f"{'subgroup':<24} {'n':>5} {'AUC':>7} {'sens':>7} {'spec':>7} {'flagged':>8}")
    for g in report["subgroups"]:
        cells = [f"{g[k]:.4f}" if k in g else "-" for k in ("auc", "sensitivity", "specificity")]
        print(f"{g['group']:<24} {g['n']:>5} {cells[0]:>7} {cells[1]:>7} {cells[2]:>7} {g['flagged']:>8.1%}")
    if "multiclass" in report:
        print("\n".join(multiclass_lines(report["multiclass"])))


def multiclass_lines(mc: dict) -> list[str]:
    """Per-class AUC, balanced accuracy and the confusion matrix (rows: truth, columns: arg-max)."""
    labels = mc["labels"]
    lines = [f"\nbalanced accuracy {mc['balanced_accuracy']:.4f}  accuracy {mc['accuracy']:.4f}  "
             f"urgent-group AUC {mc['urgent_auc']:.4f}"]
    if mc.get("focus"):
        lines.append(f"{mc['focus']}: referred {mc['focus_sensitivity']:.4f} of them (sensitivity), "
                     f"{mc['focus_specificity']:.4f} of the others not referred (specificity)")
    lines.append("one-vs-rest AUC: " + "  ".join(f"{k} {v:.4f}" for k, v in mc["per_class_auc"].items()))
    lines.append("confusion (rows: true label, columns: likeliest label)")
    lines.append(f"{'':>8}" + "".join(f"{label:>7}" for label in labels))
    for label, row in zip(labels, mc["confusion"]):
        lines.append(f"{label:>8}" + "".join(f"{v:>7}" for v in row))
    return lines
