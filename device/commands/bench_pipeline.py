"""``bedside bench --pipeline FILE...``: the served path on real images, stage by stage (decode,
quality checks, preprocessing, model), beside libjpeg's own decode of the same JPEG at the same
scale (OpenCV's imdecode with the same flags, nothing else): how close the whole study comes to
the floor that decoding alone sets. Stages and the floor are timed in interleaved rounds."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from device import intake
from device.commands.common import resolve_bundle
from device.decision import quality
from device.intake import headers
from models.reading import jpeg_flags
from device.machine.facts import usable_cores
from device.runtime.backend_choice import choose
from device.runtime.triager import Triager

STAGES = ("decode", "quality", "preprocess", "model")
ROUNDS = 5


def run_pipeline(args: argparse.Namespace) -> int:
    bundle = resolve_bundle(args.bundle)
    threads = args.threads or usable_cores()
    choice, loaded = choose(bundle, "auto", "auto", threads, {}, None)
    triager = Triager(bundle, choice.backend, choice.precision, threads, None, loaded)
    try:
        rows = [measure_file(triager, path, max(ROUNDS, args.iterations // 10)) for path in args.pipeline]
    finally:
        triager.close()
    report = {"model": {"id": bundle.manifest.id, "version": bundle.manifest.version},
              "served": {"backend": choice.backend, "precision": choice.precision, "file": choice.file},
              "threads": threads, "files": rows}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"served path on {choice.backend} {choice.precision}, {threads} thread(s); medians in ms")
        print(format_rows(rows))
    return 0


def measure_file(triager: Triager, path: Path, calls: int) -> dict:
    data = path.read_bytes()
    reduce = triager.reduced_decode
    m = triager.manifest
    fmt = headers.sniff(data)
    floor = _libjpeg_floor(data, path, reduce) if fmt == "jpeg" else None
    times: dict[str, list[float]] = {name: [] for name in (*STAGES, "libjpeg")}
    img = None
    for _ in range(ROUNDS):
        for _ in range(max(1, calls // ROUNDS)):
            t0 = time.perf_counter()
            img = intake.decode_bytes(data, path.name, reduce=reduce)
            t1 = time.perf_counter()
            quality.assess(img, m.quality, m.input.dicom)
            t2 = time.perf_counter()
            tensor = triager.preprocess(img)
            t3 = time.perf_counter()
            triager.predict(tensor[None])
            t4 = time.perf_counter()
            for name, a, b in zip(STAGES, (t0, t1, t2, t3), (t1, t2, t3, t4)):
                times[name].append((b - a) * 1e3)
        if floor is not None:
            for _ in range(max(1, calls // ROUNDS)):
                t0 = time.perf_counter()
                floor()
                times["libjpeg"].append((time.perf_counter() - t0) * 1e3)
    medians = {name: round(float(np.median(v)), 3) for name, v in times.items() if v}
    study = sum(medians[s] for s in STAGES)
    row = {"file": str(path), "format": fmt, "size": list(img.original_size), "decoded": list(img.pixels.shape[:2]),
           "ms": medians, "study_ms": round(study, 3)}
    if floor is not None:
        row["study_vs_libjpeg"] = round(study / medians["libjpeg"], 3)
    return row


def _libjpeg_floor(data: bytes, path: Path, reduce: intake.ReducedDecode):
    """libjpeg's decode of this file at the scale the served path uses, and nothing else."""
    height, width = headers.check_jpeg(data, path.name)
    _, flags = jpeg_flags(height, width, reduce)
    buffer = np.frombuffer(data, np.uint8)
    return lambda: cv2.imdecode(buffer, flags)


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'file':<28} {'size':>11} {'decoded':>9} " + " ".join(f"{s:>10}" for s in STAGES)
             + f" {'study':>7} {'libjpeg':>8} {'ratio':>6}"]
    for r in rows:
        ms = r["ms"]
        ratio = f"{r['study_vs_libjpeg']:.2f}x" if "study_vs_libjpeg" in r else "-"
        lines.append(f"{Path(r['file']).name[:28]:<28} {'x'.join(map(str, r['size'][::-1])):>11} "
                     f"{'x'.join(map(str, r['decoded'][::-1])):>9} " + " ".join(f"{ms[s]:>10.3f}" for s in STAGES)
                     + f" {r['study_ms']:>7.3f} {ms.get('libjpeg', float('nan')):>8.3f} {ratio:>6}")
    jpeg = [r["study_vs_libjpeg"] for r in rows if "study_vs_libjpeg" in r]
    if jpeg:
        lines.append(f"JPEG study / libjpeg decode at the same scale: median {np.median(jpeg):.2f}x "
                     f"(target <= 1.5x), worst {max(jpeg):.2f}x")
    return "\n".join(lines)
