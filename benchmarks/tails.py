"""Tail latency of the served model with 2 concurrent clients, at each explicit thread count.

    nice -n 19 .venv/bin/python benchmarks/tails.py [--bundle DIR] [--calls 400] [--json]

The exam is loaded as the kiosk loads it (backend = auto, its own timing), once per inference
thread count (1, then every usable core). Two client threads each send a prepared full-resolution
chest X-ray (decoded at the model's scale, quality-checked, preprocessed) to ``Exam.triage`` back to
back, as two request threads would; the time each call waits for its result (the model owner's
lock included) is recorded. The thread counts are measured in interleaved rounds.

Target (issue 15): with 2 concurrent clients, p99 <= 2x p50 for the served configuration.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from device import intake
from device.core.exams import ExamRegistry
from device.core.settings import ModelSettings
from device.machine.facts import usable_cores
from models.bundle import default_bundles_dir
from models.datasets import datasets_dir

CLIENTS = 2
ROUNDS = 5


def _clients(exam, img: intake.DecodedImage, calls: int) -> list[float]:
    """Per-call latency in ms of CLIENTS threads calling exam.triage back to back."""
    times: list[list[float]] = [[] for _ in range(CLIENTS)]
    start = threading.Barrier(CLIENTS)

    def client(i: int) -> None:
        start.wait()
        for _ in range(calls):
            t0 = time.perf_counter()
            exam.triage(img, "tails")
            times[i].append((time.perf_counter() - t0) * 1e3)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [x for t in times for x in t]


def run(bundle: Path, calls: int) -> dict:
    sample = sorted((datasets_dir() / "chest-xray" / "fullres-samples").glob("*/*.jpeg"))[0]
    counts = sorted({1, usable_cores()})
    loaded = {}
    try:
        for threads in counts:
            with tempfile.TemporaryDirectory() as cache:
                loaded[threads] = ExamRegistry.load(ModelSettings(bundles=[bundle], inference_threads=threads),
                                                    cache_dir=Path(cache))
        samples: dict[int, list[float]] = {t: [] for t in counts}
        for _ in range(ROUNDS):
            for threads, exams in loaded.items():
                exam = next(iter(exams))
                img = intake.decode_file(sample, reduce=exam.reduced_decode)
                samples[threads] += _clients(exam, img, max(1, calls // ROUNDS))
        rows = []
        for threads, exams in loaded.items():
            model = next(iter(exams)).triager.model
            p50, p90, p99 = np.percentile(samples[threads], [50, 90, 99])
            rows.append({"inference_threads": threads, "backend": model.backend, "precision": model.precision,
                         "calls": len(samples[threads]), "p50_ms": round(float(p50), 3),
                         "p90_ms": round(float(p90), 3), "p99_ms": round(float(p99), 3),
                         "p99_over_p50": round(float(p99 / p50), 2)})
    finally:
        for exams in loaded.values():
            exams.close()
    return {"clients": CLIENTS, "file": sample.name, "rows": rows, "target": "p99 <= 2x p50"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=default_bundles_dir() / "chest-xray-pneumonia")
    parser.add_argument("--calls", type=int, default=400, help="calls per client per thread count")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = run(args.bundle, args.calls)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{CLIENTS} concurrent clients, {report['file']} (quality checks, preprocessing, model):")
    for r in report["rows"]:
        print(f"  {r['inference_threads']} inference thread(s), {r['backend']} {r['precision']}: p50 {r['p50_ms']:.3f} ms, "
              f"p90 {r['p90_ms']:.3f}, p99 {r['p99_ms']:.3f} = {r['p99_over_p50']:.2f}x p50")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
