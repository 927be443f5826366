"""Writing exports to a folder or USB drive: one study (image, heatmap, result JSON), or the history as CSV.

Every file is fsynced, and its folder, before the kiosk says "exported", so a drive pulled out
right after holds complete files.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from device.core.store import StudyRecord
from device.decision.triage import shown_reasons
from models.atomic import fsync_directory

EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "tiff": ".tif", "dicom": ".dcm"}
HISTORY_COLUMNS = (
    "id", "created_at", "exam", "source", "reference", "operator", "filename", "triage", "label",
    "probability", "threshold", "model_id", "model_version", "model_sha256", "backend", "precision",
    "quality_ok", "quality_issues", "not_judged_because", "reviewed_at", "reviewed_by", "review_note", "image_sha256",
)


# A spreadsheet runs a cell that begins with one of these as a formula (=HYPERLINK(...), +cmd|...).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """Text that a spreadsheet would run as a formula, made inert with a leading apostrophe (OWASP's
    advice for CSV injection); other values as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _stamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def _write(path: Path, data: bytes) -> None:
    """Write a new file durably; a file left half-written (drive full or pulled out) is removed."""
    with open(path, "xb") as fh:
        try:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        except OSError:
            path.unlink(missing_ok=True)
            raise


def _unique_dir(parent: Path, stem: str) -> Path:
    for n in range(1000):
        candidate = parent / (stem if n == 0 else f"{stem}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent / stem}: too many exports with this name")


def export_study(destination: Path, study: StudyRecord, study_json: dict, image: bytes, heatmap_png: bytes | None) -> Path:
    """A new folder `bedside-study-<id>-<time>` under destination; returns it."""
    destination.mkdir(parents=True, exist_ok=True)
    folder = _unique_dir(destination, f"bedside-study-{study.id}-{_stamp()}")
    try:
        _write(folder / f"image{EXTENSIONS.get(study.source_format, '.bin')}", image)
        if heatmap_png is not None:
            _write(folder / "heatmap.png", heatmap_png)
        _write(folder / "result.json", (json.dumps(study_json, indent=2) + "\n").encode())
        fsync_directory(folder)
    except OSError:
        # No partial export left behind to be taken for a complete one. On a drive that is gone
        # the removal fails too; the caller reports the export as failed either way.
        shutil.rmtree(folder, ignore_errors=True)
        raise
    fsync_directory(destination)
    return folder


def history_row(study: StudyRecord) -> dict:
    r, model = study.result, study.model
    return {
        "id": study.id, "created_at": study.created_at, "exam": study.exam, "source": study.source,
        "reference": study.reference, "operator": study.operator, "filename": study.filename,
        "triage": study.triage, "label": study.label, "probability": "" if study.probability is None else f"{study.probability:.4f}",
        "threshold": f"{study.threshold:.4f}", "model_id": model.id, "model_version": model.version,
        "model_sha256": model.sha256, "backend": model.backend, "precision": model.precision,
        "quality_ok": r["quality"]["ok"], "quality_issues": "; ".join(i["message"] for i in r["quality"]["issues"]),
        "not_judged_because": "; ".join(i["message"] for i in shown_reasons(r)),
        "reviewed_at": study.reviewed_at or "", "reviewed_by": study.reviewed_by or "",
        "review_note": study.review_note or "", "image_sha256": study.image_sha256,
    }


def export_history(destination: Path, studies: Iterable[StudyRecord]) -> tuple[Path, int]:
    """`bedside-history-<time>.csv` under destination, one row per study; returns (its path, rows)."""
    destination.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=HISTORY_COLUMNS)
    writer.writeheader()
    count = 0
    for study in studies:
        writer.writerow({column: csv_cell(value) for column, value in history_row(study).items()})
        count += 1
    path = destination / f"bedside-history-{_stamp()}.csv"
    n = 1
    while path.exists():
        path = destination / f"bedside-history-{_stamp()}-{n}.csv"
        n += 1
    _write(path, text.getvalue().encode("utf-8"))
    fsync_directory(destination)
    return path, count
