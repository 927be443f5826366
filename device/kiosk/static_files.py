"""The kiosk's own CSS, JS and icon, cached by the browser for good under URLs that change with
their content: every page otherwise revalidates each file before its DOMContentLoaded (deferred
scripts run first), a round trip apiece on the way to the verdict banner."""

from __future__ import annotations

import hashlib
from pathlib import Path

from flask import Flask

ONE_YEAR_S = 365 * 24 * 3600


def content_version(folder: Path) -> str:
    """A short digest of every file under `folder`, names and bytes: a new build gets new URLs."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def cache_static_files(app: Flask) -> None:
    """Add ?v=<content version> to every url_for('static', ...) and let browsers keep the files."""
    version = content_version(Path(app.static_folder))
    app.config["SEND_FILE_MAX_AGE_DEFAULT"] = ONE_YEAR_S

    @app.url_defaults
    def _versioned(endpoint: str, values: dict) -> None:
        if endpoint == "static":
            values.setdefault("v", version)
