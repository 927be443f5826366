"""DICOM ingest rate and C-STORE-to-result latency of the kiosk, side by side with Orthanc.

    nice -n 19 .venv/bin/python benchmarks/dicom_ingest.py [--bundle DIR] [--count 200] [--json]

Makes `count` CR instances from one real radiograph of the shared samples (a new SOP Instance UID
each, pixel data as it was: JPEG extended; BodyPartExamined CHEST, so that the routes triage it), then pushes them with dcmtk's storescu in one
association, first to a real `bedside serve --dicom-port` (each success status means decoded,
triaged, fsynced and committed: so the receive rate is the triage rate), then to an Orthanc on the
same machine (which only stores). Per instance, the time from storescu's "Sending Store Request" to
its response is the C-STORE-to-result latency. Goal (issue 11): within 1.5x of Orthanc's rate.

Uses the peers the tests use too (dcmtk_peer.py, orthanc_peer.py): the same storescu and Orthanc
set-up, not a second copy of it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from dcmtk_peer import SAMPLES, storescu_config
from kiosk_process import served_kiosk
from loopback import free_port
from models.bundle import default_bundles_dir
from orthanc_peer import AE_TITLE, Orthanc

SOURCE = SAMPLES / "cr_dx" / "RG2_JPLY_fixed.dcm"
SHIPPED = default_bundles_dir() / "chest-xray-pneumonia"


def make_instances(folder: Path, count: int) -> list[Path]:
    ds = pydicom.dcmread(SOURCE)
    # The film is of a hip: labelled CHEST, the kiosk's default routes give it to the chest exam, so
    # every instance is triaged (one no exam reads would only be stored, and measure less).
    ds.BodyPartExamined = "CHEST"
    paths = []
    for i in range(count):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


def push(port: int, called: str, files: list[Path], folder: Path) -> dict:
    """storescu with -v, timed per response as its lines arrive."""
    cmd = ["storescu", "-v", "--no-halt", "--config-file", str(storescu_config(files[:1], folder)), "Files",
           "-aet", "BENCH", "-aec", called, "127.0.0.1", str(port), *map(str, files)]
    latencies, failures, sent_at = [], 0, None
    t0 = time.perf_counter()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            now = time.perf_counter()
            if line.startswith("I: Sending Store Request"):
                sent_at = now
            elif "Received Store Response" in line and sent_at is not None:
                latencies.append((now - sent_at) * 1e3)
                failures += "(Success)" not in line
    wall = time.perf_counter() - t0
    return {
        "instances": len(latencies), "failures": failures, "wall_s": round(wall, 2),
        "per_s": round(len(latencies) / wall, 2),
        "latency_ms_p50": round(float(np.percentile(latencies, 50)), 1),
        "latency_ms_p95": round(float(np.percentile(latencies, 95)), 1),
    }


def bedside(bundle: Path, files: list[Path], folder: Path) -> dict:
    config = folder / "bedside.toml"
    config.write_text('[dicom]\nallowed_callers = [{ ae_title = "BENCH", host = "127.0.0.1" }]\n')
    port = free_port()
    with served_kiosk(folder / "data", [bundle], "--config", str(config), "--dicom-port", str(port)):
        return push(port, "BEDSIDE", files, folder)


def orthanc(files: list[Path], folder: Path) -> dict:
    peer = Orthanc(folder / "orthanc")
    peer.start()
    try:
        return push(peer.dicom_port, AE_TITLE, files, folder)
    finally:
        peer.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=SHIPPED)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "send").mkdir()
        files = make_instances(folder / "send", args.count)
        result = {"bedside": bedside(args.bundle, files, folder), "orthanc": orthanc(files, folder)}
    result["orthanc_over_bedside_rate"] = round(result["orthanc"]["per_s"] / result["bedside"]["per_s"], 2)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name in ("bedside", "orthanc"):
            r = result[name]
            print(f"{name:8s} {r['instances']} instances ({r['failures']} failed) in {r['wall_s']} s: "
                  f"{r['per_s']}/s, C-STORE to response p50 {r['latency_ms_p50']} ms, p95 {r['latency_ms_p95']} ms")
        print(f"Orthanc receives {result['orthanc_over_bedside_rate']}x as fast (goal: at most 1.5x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
