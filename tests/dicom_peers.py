"""What the DICOM tests need besides the peers themselves (benchmarks/dcmtk_peer.py,
benchmarks/orthanc_peer.py): a skip where a peer or the samples are absent, and polling for a
value with a deadline."""

from __future__ import annotations

import shutil
import time

import pytest

from dcmtk_peer import SAMPLES


def need_dcmtk() -> None:
    if shutil.which("storescu") is None or shutil.which("echoscu") is None:
        pytest.skip("dcmtk is not installed (Debian package dcmtk; .ci/run installs it)")


def need_samples() -> None:
    if not (SAMPLES / "catalog.csv").is_file():
        pytest.skip(f"the DICOM samples are not here ({SAMPLES}); see ../shared/datasets/README.md")


def need_orthanc() -> None:
    if shutil.which("Orthanc") is None:
        pytest.skip("Orthanc is not installed (Debian package orthanc; .ci/run installs it)")


def wait_until(check, timeout: float, what: str, every: float = 0.1):
    """Poll ``check()`` until it returns something truthy (returned) or ``timeout`` s pass (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(every)
