"""The diagnostics archive for support: status, settings, the technician audit log, the start
record (safe mode's reason) and the kiosk's logs, and no patient data.

What could carry patient data is left out or scrubbed: no images, no study rows, no DICOM headers;
the settings with capture URIs redacted (they may hold passwords); and in the logs every patient
reference, file name, operator, patient name, patient ID and accession number the store holds, and
every DICOM UID, is replaced by a placeholder before a line goes into the archive.
"""

from __future__ import annotations

import io
import json
import re
import sqlite3
import zipfile
from pathlib import Path

from device.capture.sources import redact
from device.core.store import DB_NAME as STORE_DB
from device.machine.clock import utc_iso

UID = re.compile(r"\b[0-2](?:\.\d+){3,}\b")
REDACTED = "<redacted>"
START_RECORD = "startup.json"  # device/technician/safe_mode.py writes it
MIN_SCRUBBED = 3  # shorter values (a two-letter reference) would scrub ordinary words
LOG_TAIL_BYTES = 4 * 2**20
# Columns of the study store (device/core/store/) that may name a patient or a person.
PERSONAL_COLUMNS = {
    "studies": ("reference", "operator", "filename", "reviewed_by", "review_note"),
    "dicom_instances": ("patient_name", "patient_id", "accession_number", "calling_ae"),
}


def personal_values(data_dir: Path) -> set[str]:
    """Every value in the store that may identify a patient (or a person), for scrubbing."""
    path = data_dir / STORE_DB
    if not path.is_file():
        return set()
    found: set[str] = set()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, columns in PERSONAL_COLUMNS.items():
            if table not in tables:
                continue
            for row in db.execute(f"SELECT DISTINCT {', '.join(columns)} FROM {table}"):
                found.update(str(v).strip() for v in row if v)
    finally:
        db.close()
    return found


class Scrubber:
    def __init__(self, values: set[str]):
        # Longest first: a value inside another. Shorter ones than MIN_SCRUBBED are left alone.
        ordered = sorted((v for v in values if len(v) >= MIN_SCRUBBED), key=len, reverse=True)
        self._values = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        if self._values is not None:
            text = self._values.sub(REDACTED, text)
        return UID.sub("<uid>", text)


def redacted_config(config) -> dict:
    data = config.model_dump(mode="json")
    for source in data.get("capture", {}).get("sources", []):
        if isinstance(source, dict) and "uri" in source:
            source["uri"] = redact(source["uri"])
    return data


def _log_text(path: Path, scrub: Scrubber) -> str:
    with open(path, "rb") as fh:
        size = fh.seek(0, io.SEEK_END)
        fh.seek(max(0, size - LOG_TAIL_BYTES))
        text = fh.read().decode("utf-8", "replace")
    return "\n".join(scrub(line) for line in text.splitlines()) + "\n"


def build_archive(status: dict, config, audit: list, log_files: list[Path], data_dir: Path) -> bytes:
    """The archive as a zip, in memory (a few MiB at most: each log's last 4 MiB)."""
    scrub = Scrubber(personal_values(data_dir))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        def put(name: str, text: str) -> None:
            archive.writestr(name, scrub(text))

        put("README.txt", f"Bedside diagnostics archive, made {utc_iso()}.\nNo patient data: images, studies "
            "and DICOM headers are left out; patient references, names, IDs and DICOM UIDs in the logs are "
            "replaced by placeholders.\n")
        put("status.json", json.dumps(status, indent=2, default=str))
        put("settings.json", json.dumps(redacted_config(config), indent=2, default=str))
        put("technician-audit.json", json.dumps([vars(e) for e in audit], indent=2, default=str))
        record = data_dir / START_RECORD  # how the last starts went (safe mode's reason)
        if record.is_file():
            put(START_RECORD, record.read_text(errors="replace"))
        for path in log_files:
            archive.writestr(f"logs/{path.name}", _log_text(path, scrub))
    return buf.getvalue()
