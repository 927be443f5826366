"""The kiosk under issue 10's attacks, measured against its targets on a real `bedside serve`.

    .venv/bin/python benchmarks/hostile_load.py [--connections 500] [--health 200]

Starts `bedside serve --port 0` with the shipped bundle on a fresh data dir and reports: for each
memory bomb (the 10000x10000 16-bit PNG, a deflated DICOM inflating to 1 GiB) the status, the time
to the answer and the server's peak RSS growth (VmHWM after clear_refs); the same for a legitimate
30-megapixel radiograph; then, with N idle or half-sent connections held open, health p50/p99 and
one upload's latency. Targets: bombs 413/422 in < 2 s with < 300 MB growth; health p99 < 1 s.
The inputs are generated as in the tests (tests/hostile_inputs.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from hostile_inputs import deflated_dicom_bomb, png_pixel_bomb, radiograph_png  # noqa: E402
from kiosk_support import SHIPPED, Client, png_bytes, running_server  # noqa: E402
from test_kiosk_under_attack import _hold_connections, _reset_peak, _status_kb  # noqa: E402


def _upload(server, name: str, data: bytes) -> tuple[int, float, float]:
    """(status, seconds to the answer, peak RSS growth in MiB) of one upload."""
    client = server.client()
    try:
        rss = _reset_peak(server.proc.pid)
        t0 = time.perf_counter()
        status, _ = client.upload(name, data)
        elapsed = time.perf_counter() - t0
        growth = (_status_kb(server.proc.pid, "VmHWM") * 1024 - rss) / 2**20
    finally:
        client.close()
    return status, elapsed, growth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--health", type=int, default=200, help="health requests while the connections are held")
    args = parser.parse_args()
    inputs = [("png-bomb.png", png_pixel_bomb()), ("deflate-bomb.dcm", deflated_dicom_bomb()),
              ("radiograph-30mp.png", radiograph_png())]
    with tempfile.TemporaryDirectory() as data, running_server(Path(data), [SHIPPED]) as server:
        for name, blob in inputs:
            status, elapsed, growth = _upload(server, name, blob)
            print(f"{name:22} {len(blob) / 2**20:6.1f} MiB  -> {status}  {elapsed:5.2f} s  peak RSS +{growth:.0f} MiB")
        held = _hold_connections(server.url, args.connections)
        client = Client(server.url, timeout=10)
        try:
            times = []
            for _ in range(args.health):
                t0 = time.perf_counter()
                status, _ = client.get_json("/api/v1/health")
                times.append(time.perf_counter() - t0)
                if status != 200:
                    raise SystemExit(f"health answered {status}")
            t0 = time.perf_counter()
            status, _ = client.upload("x.png", png_bytes(3))
            upload_s = time.perf_counter() - t0
        finally:
            client.close()
            for sock in held:
                sock.close()
        p50, p99 = np.percentile(np.array(times) * 1e3, [50, 99])
        print(f"{args.connections} held connections: health p50 {p50:.1f} ms, p99 {p99:.1f} ms "
              f"({args.health} requests); upload {status} in {upload_s * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
