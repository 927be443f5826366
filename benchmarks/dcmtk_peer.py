"""Real DICOM peers for the tests: dcmtk's echoscu and storescu, run as a modality would run them."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from models.datasets import datasets_dir

SAMPLES = datasets_dir() / "dicom"


def free_port() -> int:
    """A port nobody listens on now (the OS picks it; the caller binds it right after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need_dcmtk() -> None:
    if shutil.which("storescu") is None or shutil.which("echoscu") is None:
        pytest.skip("dcmtk is not installed (Debian package dcmtk; .ci/run installs it)")


def need_samples() -> None:
    if not (SAMPLES / "catalog.csv").is_file():
        pytest.skip(f"the DICOM samples are not here ({SAMPLES}); see ../shared/datasets/README.md")


def echoscu(port: int, calling: str, called: str = "BEDSIDE") -> subprocess.CompletedProcess:
    return subprocess.run(["echoscu", "-v", "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)


def storescu(port: int, calling: str, files: list[Path], config: Path, called: str = "BEDSIDE"
             ) -> subprocess.CompletedProcess:
    """All ``files`` in one association, each in its own transfer syntax (``config`` from
    storescu_config); --no-halt: a failed store does not end the association."""
    return subprocess.run(
        ["storescu", "-v", "--no-halt", "--config-file", str(config), "Files", "-aet", calling, "-aec", called,
         "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True, timeout=300,
    )


def storescu_config(files: list[Path], folder: Path) -> Path:
    """A storescu configuration (dcmtk's own format) proposing each file's SOP class in each file's
    transfer syntax, one presentation context apiece: no file is transcoded on the way, as a
    modality that sends compressed images would."""
    pairs = set()
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        pairs.add((str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)))
    syntaxes = sorted({ts for _, ts in pairs})
    lines = ["[[TransferSyntaxes]]"]
    for i, ts in enumerate(syntaxes):
        lines += [f"[TS{i}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[Files]"]
    for n, (sop, ts) in enumerate(sorted(pairs), start=1):
        lines.append(f"PresentationContext{n} = {sop}\\TS{syntaxes.index(ts)}")
    lines += ["[[Profiles]]", "[Files]", "PresentationContexts = Files"]
    path = folder / "storescu.cfg"
    path.write_text("\n".join(lines) + "\n")
    return path


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
