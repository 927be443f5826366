"""The kiosk's memory and start-up with two exams: time to ready and resident memory.

    nice -n 19 .venv/bin/python benchmarks/kiosk_memory.py [--bundle DIR] [--json]

Two exams are the shipped chest X-ray bundle and a copy of it under another id (the second real
exam, skin lesions, is still being trained): the same model loaded twice, which is what two exams
of this size cost. A real `bedside serve --port 0` starts on a fresh data dir twice: once with an
empty backend-choice cache (it times every backend at start) and once with the cache the first
start wrote (a reboot of the same box). Ready is from process start to the "ready" line (models
loaded, self-tested, warmed up); RSS is VmRSS once ready, and VmHWM (the peak) after one full-
resolution upload to each exam.

Targets (issue 15): RSS with two exams loaded <= 300 MB, ready <= 5 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from kiosk_process import served_kiosk
from models.bundle import default_bundles_dir
from models.datasets import datasets_dir



def second_exam(bundle: Path, where: Path) -> Path:
    """The bundle copied under another id (its files, hashed in the manifest, unchanged)."""
    copy = where / "chest-copy"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["id"] = manifest["id"] + "-copy"
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return copy


def proc_status(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def upload(host: str, port: int, exam: str, name: str, data: bytes) -> int:
    import http.client

    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"exam\"\r\n\r\n{exam}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request("POST", "/api/v1/studies", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def start(data_dir: Path, bundles: list[Path], image: Path, exams: list[str]) -> dict:
    t0 = time.perf_counter()
    with served_kiosk(data_dir, bundles) as (proc, host, port):
        ready_s = time.perf_counter() - t0
        rss_ready = proc_status(proc.pid, "VmRSS")
        statuses = [upload(host, port, exam, image.name, image.read_bytes()) for exam in exams]
        return {"ready_s": round(ready_s, 2), "rss_ready_mb": round(rss_ready, 1),
                "peak_rss_after_uploads_mb": round(proc_status(proc.pid, "VmHWM"), 1), "upload_statuses": statuses}


def run(bundle: Path) -> dict:
    image = sorted((datasets_dir() / "chest-xray" / "fullres-samples").glob("*/*.jpeg"))[0]
    with tempfile.TemporaryDirectory(prefix="bedside-memory-") as tmp:
        tmp = Path(tmp)
        copy = second_exam(bundle, tmp)
        exams = [json.loads((b / "manifest.json").read_text())["id"] for b in (bundle, copy)]
        cold = start(tmp / "data", [bundle, copy], image, exams)
        warm = start(tmp / "data", [bundle, copy], image, exams)
    return {"exams": exams, "first_start": cold, "cached_start": warm,
            "targets": {"rss_mb": 300, "ready_s": 5}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=default_bundles_dir() / "chest-xray-pneumonia")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = run(args.bundle)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"two exams: {', '.join(report['exams'])}")
    for name in ("first_start", "cached_start"):
        r = report[name]
        print(f"  {name.replace('_', ' '):<13} ready {r['ready_s']:.2f} s, RSS {r['rss_ready_mb']:.0f} MB when ready, "
              f"peak {r['peak_rss_after_uploads_mb']:.0f} MB after an upload to each (statuses {r['upload_statuses']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
