"""The kiosk under issue 10's attacks, measured against its targets on a real `bedside serve`.

    .venv/bin/python benchmarks/hostile_load.py [--connections 500] [--health 200]

Starts `bedside serve --port 0` with the shipped bundle on a fresh data dir and reports: for each
memory bomb (the 10000x10000 16-bit PNG, a deflated DICOM inflating to 1 GiB) the status, the time
to the answer and the server's peak RSS growth (VmHWM after clear_refs); the same for a legitimate
30-megapixel radiograph; then, with N idle or half-sent connections held open, health p50/p99 and
one upload's latency. Targets: bombs 413/422 in < 2 s with < 300 MB growth; health p99 < 1 s.
The inputs are generated as the tests generate them (hostile_inputs.py).
"""

from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from hostile_inputs import deflated_dicom_bomb, hold_connections, png_pixel_bomb, radiograph_png, reset_peak, status_kb
from kiosk_memory import upload
from kiosk_process import served_kiosk
from models.bundle import default_bundles_dir

SHIPPED = default_bundles_dir() / "chest-xray-pneumonia"


def _upload(proc, host: str, port: int, name: str, data: bytes) -> tuple[int, float, float]:
    """(status, seconds to the answer, peak RSS growth in MiB) of one upload."""
    rss = reset_peak(proc.pid)
    t0 = time.perf_counter()
    status = upload(host, port, "", name, data)
    elapsed = time.perf_counter() - t0
    growth = (status_kb(proc.pid, "VmHWM") * 1024 - rss) / 2**20
    return status, elapsed, growth


def _health(conn: http.client.HTTPConnection) -> int:
    conn.request("GET", "/api/v1/health")
    response = conn.getresponse()
    json.loads(response.read())
    return response.status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--health", type=int, default=200, help="health requests while the connections are held")
    args = parser.parse_args()
    inputs = [("png-bomb.png", png_pixel_bomb()), ("deflate-bomb.dcm", deflated_dicom_bomb()),
              ("radiograph-30mp.png", radiograph_png())]
    with tempfile.TemporaryDirectory() as data, served_kiosk(Path(data), [SHIPPED]) as (proc, host, port):
        for name, blob in inputs:
            status, elapsed, growth = _upload(proc, host, port, name, blob)
            print(f"{name:22} {len(blob) / 2**20:6.1f} MiB  -> {status}  {elapsed:5.2f} s  peak RSS +{growth:.0f} MiB")
        held = hold_connections(f"http://{host}:{port}/", args.connections)
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            times = []
            for _ in range(args.health):
                t0 = time.perf_counter()
                status = _health(conn)
                times.append(time.perf_counter() - t0)
                if status != 200:
                    raise SystemExit(f"health answered {status}")
            ramp = np.tile(np.arange(96, dtype=np.uint8) * 2, (96, 1))
            t0 = time.perf_counter()
            status = upload(host, port, "", "x.png", cv2.imencode(".png", ramp)[1].tobytes())
            upload_s = time.perf_counter() - t0
        finally:
            conn.close()
            for sock in held:
                sock.close()
        p50, p99 = np.percentile(np.array(times) * 1e3, [50, 99])
        print(f"{args.connections} held connections: health p50 {p50:.1f} ms, p99 {p99:.1f} ms "
              f"({args.health} requests); upload {status} in {upload_s * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
