"""A burst of studies (a DICOM burst, a USB import): 16 queued, triaged one by one against batched.

    nice -n 19 .venv/bin/python benchmarks/burst.py [--bundle DIR] [--queued 16] [--rounds 10] [--json]

The exam is loaded as the kiosk loads it (backend = auto). Two figures, each measured side by side
in interleaved rounds on the full-resolution sample chest X-rays (datasets/chest-xray/fullres-samples):

- model stage: ``queued`` studies already decoded and prepared, run through the model one at a time
  against as one batch (what the exam's single owner does when they wait for it);
- whole studies: ``queued`` uploads decoded and triaged one after another against ``queued``
  concurrent callers (as many associations or request threads), decoding in at most 2 at once as
  the kiosk does (decode.concurrent) and meeting in the exam's batches.

Target (issue 15): with 16 queued, throughput >= 2x one-by-one.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from device import intake
from device.core.exams import ExamRegistry
from device.core.settings import ModelSettings
from models.bundle import default_bundles_dir
from models.datasets import datasets_dir

DECODE_SLOTS = 2  # the kiosk's decode.concurrent default


def load_images(queued: int) -> list[tuple[str, bytes]]:
    files = sorted((datasets_dir() / "chest-xray" / "fullres-samples").glob("*/*.jpeg"))
    if not files:
        raise SystemExit("no full-resolution samples under datasets/chest-xray/fullres-samples")
    return [(files[i % len(files)].name, files[i % len(files)].read_bytes()) for i in range(queued)]


def model_stage(exam, prepared: list, rounds: int) -> dict:
    triager = exam.triager
    one, batched = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for p in prepared:
            triager.triage_prepared([p])
        one.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for start in range(0, len(prepared), triager.max_batch):
            triager.triage_prepared(prepared[start:start + triager.max_batch])
        batched.append(time.perf_counter() - t0)
    return _ratio(len(prepared), one, batched)


def whole_studies(exam, images: list[tuple[str, bytes]], rounds: int) -> dict:
    reduce = exam.reduced_decode
    slots = threading.BoundedSemaphore(DECODE_SLOTS)

    def study(name: str, data: bytes):
        with slots:
            img = intake.decode_bytes(data, name, reduce=reduce)
        return exam.triage(img, name)

    one, burst, sizes = [], [], []
    with ThreadPoolExecutor(max_workers=len(images)) as pool:
        for _ in range(rounds):
            t0 = time.perf_counter()
            for name, data in images:
                study(name, data)
            one.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            results = list(pool.map(lambda item: study(*item), images))
            burst.append(time.perf_counter() - t0)
            sizes += [r.batch_size for r in results]
    return {**_ratio(len(images), one, burst), "mean_batch_size": round(float(np.mean(sizes)), 2)}


def _ratio(n: int, one: list[float], batched: list[float]) -> dict:
    one_ips, batched_ips = n / float(np.median(one)), n / float(np.median(batched))
    return {"one_by_one_ips": round(one_ips, 1), "batched_ips": round(batched_ips, 1),
            "ratio": round(batched_ips / one_ips, 2)}


def run(bundle: Path, queued: int, rounds: int) -> dict:
    images = load_images(queued)
    with tempfile.TemporaryDirectory() as cache:
        exams = ExamRegistry.load(ModelSettings(bundles=[bundle]), cache_dir=Path(cache))
    try:
        exam = next(iter(exams))
        reduce = exam.reduced_decode
        prepared = [exam.triager.prepare(intake.decode_bytes(d, n, reduce=reduce), n) for n, d in images]
        exam.triager.triage_prepared(prepared[:exam.triager.max_batch])  # the first large batch picks kernels
        model = exam.triager.model
        return {
            "queued": queued, "rounds": rounds,
            "served": {"backend": model.backend, "precision": model.precision},
            "model_stage": model_stage(exam, prepared, rounds),
            "whole_studies": whole_studies(exam, images, rounds),
            "target": "batched >= 2x one-by-one",
        }
    finally:
        exams.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=default_bundles_dir() / "chest-xray-pneumonia")
    parser.add_argument("--queued", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = run(args.bundle, args.queued, args.rounds)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.queued} queued studies on {report['served']['backend']} {report['served']['precision']}, "
          f"medians of {args.rounds} interleaved rounds")
    for name in ("model_stage", "whole_studies"):
        r = report[name]
        print(f"  {name.replace('_', ' '):<14} one by one {r['one_by_one_ips']:>8.1f}/s  batched {r['batched_ips']:>8.1f}/s"
              f"  = {r['ratio']:.2f}x" + (f" (mean batch {r['mean_batch_size']})" if "mean_batch_size" in r else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
