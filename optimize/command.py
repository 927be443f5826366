"""``bedside optimize``: add a gated INT8 or FP16 variant to a bundle (see optimize/variants.py).

Exit 0 when a variant was added, 1 when every candidate failed the accuracy gate or the bundle's
shortcut audits (nothing is written then) or the inputs were refused.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from pathlib import Path

from optimize.errors import OptimizeError
from optimize.quantize import METHODS
from optimize.variants import add_variant


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--bundle", type=Path, required=True, help="bundle directory to add the variant to")
    parser.add_argument("--precision", choices=["int8", "fp16"], required=True)
    parser.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="the model's training folder (class subfolders); calibration images come from its training "
        "side and the gate's from its validation side (default: the development dataset)",
    )
    parser.add_argument("--calibration-images", type=int, default=300, help="training images drawn to calibrate INT8")
    parser.add_argument("--method", choices=METHODS, default="percentile", help="INT8 activation range method")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration draw")
    parser.add_argument("--threads", type=int, default=None, help="inference threads (default: all usable cores)")


def run(args: argparse.Namespace) -> int:
    threads = args.threads or len(os.sched_getaffinity(0))
    # ONNX Runtime's calibrators print() their own progress ("Collecting tensor data and making
    # histogram ..."); this command's own progress goes to stderr through `log`, so their stdout is dropped.
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            outcome = add_variant(
                args.bundle, args.precision, args.calibration, args.calibration_images, args.method, args.seed, threads,
                log=lambda line: print(line, file=sys.stderr, flush=True),
            )
    except OptimizeError as exc:
        print(f"bedside optimize: {exc}", file=sys.stderr)
        return 1
    for c in outcome.accepted:
        print(f"added {c.precision} variant {c.file} for {', '.join(c.targets)} "
              f"(CPU b1 p50 {c.latency['p50_ms']:.3f} ms)")
    for c in outcome.rejected:
        print(f"rejected {c.name}: {'; '.join(c.refused)}")
    if outcome.report:
        print(f"report: {outcome.report}")
    return 0 if outcome.accepted else 1
