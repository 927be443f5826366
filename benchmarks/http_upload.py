"""Upload-to-result latency of the kiosk over HTTP on loopback, next to in-process decode + inference.

    .venv/bin/python benchmarks/http_upload.py [--bundle DIR] [--rounds N] [--json]

Starts a real `bedside serve --port 0` on a fresh data dir, uploads the full-resolution sample chest
X-rays (datasets/chest-xray/fullres-samples) with 1 and with 8 concurrent clients (keep-alive
connections, multipart like a browser), and reports p50/p95 upload-to-201 latency. The same images
are decoded and triaged in this process first (same bundle, same threads): HTTP + app overhead =
HTTP latency - in-process time, per image. Also reports the server's peak RSS (VmHWM) and what one
fsync costs on the data dir's disk, since every study waits for a durable commit.

Targets (issue 4): overhead < 3 ms per study at p50, 8 clients with no errors, RSS < 300 MB.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from device import intake
from kiosk_process import served_kiosk

from device.machine.facts import usable_cores
from device.runtime.backend_choice import choose
from device.runtime.triager import Triager
from models.bundle import default_bundles_dir, load_bundle
from models.datasets import datasets_dir



def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def in_process_ms(bundle: Path, images: list[tuple[str, bytes]], rounds: int) -> dict[str, float]:
    """Median decode + triage time per image, in this process, on the path the kiosk serves (its
    backend choice, the model-scale decode), in the same order as the uploads
    (round after round through all images, so no image is decoded twice in a row with warm caches)."""
    loaded = load_bundle(bundle)
    threads = usable_cores()
    choice, backend = choose(loaded, "auto", "auto", threads, {}, None)  # what the kiosk serves on
    triager = Triager(loaded, choice.backend, choice.precision, threads, None, backend)
    try:
        times: dict[str, list[float]] = {name: [] for name, _ in images}
        for _ in range(rounds + 1):
            for name, data in images:
                t0 = time.perf_counter()
                img = intake.decode_bytes(data, name, reduce=triager.reduced_decode)
                triager.triage_image(img, name)
                times[name].append((time.perf_counter() - t0) * 1e3)
        return {name: float(np.median(t[1:])) for name, t in times.items()}
    finally:
        triager.close()


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def upload_all(host: str, port: int, images: list[tuple[str, bytes]], rounds: int, clients: int):
    """[(image name, latency ms)] and the error count, from `clients` threads sharing the work."""
    bodies = [(name, *multipart(name, data)) for name, data in images]
    work = [b for _ in range(rounds) for b in bodies]
    lock = threading.Lock()
    results: list[tuple[str, float, float]] = []
    errors: list[str] = []

    def client(share: list) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=120)
        try:
            for name, body, ctype in share:
                t0 = time.perf_counter()
                try:
                    conn.request("POST", "/api/v1/studies", body=body, headers={"Content-Type": ctype})
                    response = conn.getresponse()
                    payload = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    conn = http.client.HTTPConnection(host, port, timeout=120)
                    with lock:
                        errors.append(f"{name}: {exc}")
                    continue
                ms = (time.perf_counter() - t0) * 1e3
                with lock:
                    if response.status == 201:
                        t = json.loads(payload)["result"]["timings_ms"]
                        results.append((name, ms, t["decode"] + t["preprocess"] + t["inference"]))
                    else:
                        errors.append(f"{name}: {response.status} {payload[:200]!r}")
        finally:
            conn.close()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, [work[i::clients] for i in range(clients)]))
    return results, errors, time.perf_counter() - t0


def fsync_ms(directory: Path, n: int = 20) -> float:
    path = directory / ".fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        times = []
        for _ in range(n):
            os.write(fd, b"x" * 512)
            t0 = time.perf_counter()
            os.fsync(fd)
            times.append((time.perf_counter() - t0) * 1e3)
    finally:
        os.close(fd)
        path.unlink()
    return float(np.median(times))


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=default_bundles_dir() / "chest-xray-pneumonia")
    parser.add_argument("--rounds", type=int, default=5, help="uploads of each image per client setting")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    paths = sorted((datasets_dir() / "chest-xray" / "fullres-samples").glob("*/*.jpeg"))
    if not paths:
        print(f"no sample X-rays under {datasets_dir()}/chest-xray/fullres-samples", file=sys.stderr)
        return 1
    images = [(p.name, p.read_bytes()) for p in paths]
    baseline = in_process_ms(args.bundle, images, args.rounds)

    with tempfile.TemporaryDirectory(prefix="bedside-bench-") as tmp:
        with served_kiosk(Path(tmp), [args.bundle]) as (proc, host, port):
            report = {"images": len(images), "rounds": args.rounds, "bundle": str(args.bundle),
                      "in_process_ms": {"p50": percentile(list(baseline.values()), 50),
                                        "p95": percentile(list(baseline.values()), 95)},
                      "fsync_ms": fsync_ms(Path(tmp)), "runs": []}
            upload_all(host, port, images[:2], 1, 1)  # first-request warm-up
            for clients in (1, 8):
                results, errors, wall = upload_all(host, port, images, args.rounds, clients)
                latencies = [ms for _, ms, _ in results]
                overheads = [ms - baseline[name] for name, ms, _ in results]
                outside = [ms - triage_ms for _, ms, triage_ms in results]
                report["runs"].append({
                    "clients": clients,
                    "studies": len(results),
                    "errors": len(errors),
                    "error_examples": errors[:3],
                    "latency_ms": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95)},
                    "overhead_ms": {"p50": percentile(overheads, 50), "p95": percentile(overheads, 95)},
                    # The same overhead from the server's own timings of that very request.
                    "outside_triage_ms": {"p50": percentile(outside, 50), "p95": percentile(outside, 95)},
                    "studies_per_s": len(results) / wall,
                })
            report["server_peak_rss_mb"] = peak_rss_mb(proc.pid)

    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    base = report["in_process_ms"]
    print(f"{report['images']} full-resolution X-rays x {report['rounds']} rounds, bundle {report['bundle']}")
    print(f"in-process decode + triage: p50 {base['p50']:.1f} ms, p95 {base['p95']:.1f} ms")
    print(f"one fsync on the data dir's disk: {report['fsync_ms']:.1f} ms (each study waits for >= 1)")
    print("overhead = HTTP latency - in-process time of the same image; outside triage = HTTP latency -")
    print("the decode + triage time the server measured for that request")
    print(f"{'clients':>7} {'studies':>7} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'overhead p50':>12} {'overhead p95':>12} {'outside p50':>11} {'studies/s':>9}")
    for r in report["runs"]:
        print(f"{r['clients']:>7} {r['studies']:>7} {r['errors']:>6} {r['latency_ms']['p50']:>8.1f} "
              f"{r['latency_ms']['p95']:>8.1f} {r['overhead_ms']['p50']:>12.1f} {r['overhead_ms']['p95']:>12.1f} "
              f"{r['outside_triage_ms']['p50']:>11.1f} {r['studies_per_s']:>9.1f}")
        for e in r["error_examples"]:
            print(f"    error: {e}")
    print(f"server peak RSS (VmHWM): {report['server_peak_rss_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
