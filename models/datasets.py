"""Where the development datasets live: one setting, ``BEDSIDE_DATASETS``.

Defaults to ``../shared/datasets`` beside the checkout. Nothing is ever downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def datasets_dir() -> Path:
    configured = os.environ.get("BEDSIDE_DATASETS")
    if configured:
        return Path(configured)
    return REPO_ROOT.parent / "shared" / "datasets"
