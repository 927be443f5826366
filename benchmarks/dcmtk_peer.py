"""Real DICOM peers for the tests and benchmarks: dcmtk's echoscu and storescu, run as a modality
would run them, and the shared DICOM samples they send."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom

from models.datasets import datasets_dir

SAMPLES = datasets_dir() / "dicom"


def echoscu(port: int, calling: str, called: str = "BEDSIDE", tls: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``tls``: dcmtk's TLS options (+tls KEY CERT, +tla, +cf CA...)."""
    return subprocess.run(["echoscu", "-v", *tls, "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)


def storescu(port: int, calling: str, files: list[Path], config: Path, called: str = "BEDSIDE",
             tls: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """All ``files`` in one association, each in its own transfer syntax (``config`` from
    storescu_config); --no-halt: a failed store does not end the association. ``tls`` as for echoscu."""
    return subprocess.run(
        ["storescu", "-v", *tls, "--no-halt", "--config-file", str(config), "Files", "-aet", calling, "-aec", called,
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
