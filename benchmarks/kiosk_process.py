"""A kiosk started for a benchmark: ``bedside serve --port 0`` in its own process, the bundles given,
stdout read until its ready line; terminated afterwards."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"Bedside kiosk ready at http://([^:/]+):(\d+)/")


@contextmanager
def served_kiosk(data_dir: Path, bundles: list[Path], *extra: str) -> Iterator[tuple[subprocess.Popen, str, int]]:
    """(process, host, port) of a kiosk that has printed it is ready; RuntimeError if it never does.
    ``extra``: more ``bedside serve`` arguments (--config, --dicom-port)."""
    args = [sys.executable, "-m", "device.cli", "serve", "--port", "0", "--data-dir", str(data_dir), *extra]
    for b in bundles:
        args += ["--bundle", str(b)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        found = next((m for m in map(READY.search, proc.stdout) if m), None)
        if found is None:
            raise RuntimeError("the kiosk did not start")
        yield proc, found.group(1), int(found.group(2))
    finally:
        proc.terminate()
        proc.wait(30)
        proc.stdout.close()
