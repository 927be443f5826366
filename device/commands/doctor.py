"""``bedside doctor``: what this machine has, which backends can run and why not, and whether
the shipped bundles are intact and run. Exit 1 when a shipped bundle is broken."""

from __future__ import annotations

import argparse
import json
import platform
from importlib import metadata
from pathlib import Path

import numpy as np

from device.runtime import registry
from device.triage import Triager
from models.bundle import Bundle, BundleError, find_bundles, load_bundle

PACKAGES = (
    "bedside", "numpy", "onnxruntime", "opencv-python-headless", "pydicom", "pylibjpeg",
    "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle", "pydantic", "torch", "onnx",
    "tensorrt", "pycuda",
)
# Instruction-set extensions that decide CNN speed on the CPU (x86 names, then Arm's).
CPU_FEATURES = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "amx_int8", "asimd", "asimddp", "fphp", "asimdhp", "sve", "i8mm",
)


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--bundles", type=Path, help="directory of bundles to verify (default: the shipped ones)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--selftest", action="store_true",
                        help="build (or load) a TensorRT engine for every variant and check it against "
                        "ONNX Runtime FP32 (skipped where TensorRT is unavailable)")


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_features() -> dict[str, object]:
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("flags", "features"):
                flags.update(value.split())
            elif key == "model name":
                model = value.strip()
    except OSError:
        pass
    return {"model": model, "machine": platform.machine(), "features": [f for f in CPU_FEATURES if f in flags]}


def check_bundle(path: Path) -> tuple[dict[str, object], Bundle | None]:
    """Hashes verified, model loaded and warmed up, one self-test inference with finite output.

    Returns the report and, when it is ok, the loaded (verified) bundle.
    """
    try:
        bundle = load_bundle(path)
        m = bundle.manifest
        triager = Triager(bundle)
        try:
            probs, _ = triager.predict(np.zeros((1, m.input.channels, m.input.height, m.input.width), np.float32))
        finally:
            triager.close()
    except Exception as exc:  # doctor reports every failure instead of stopping at the first
        return {"path": str(path), "ok": False, "error": str(exc)}, None
    ok = bool(np.isfinite(probs).all() and abs(probs.sum() - 1.0) < 1e-3)
    return {
        "path": str(path), "ok": ok, "id": m.id, "version": m.version,
        "variants": [v.precision for v in m.variants], "research_only": m.research_only,
        **({} if ok else {"error": "self-test produced invalid probabilities"}),
    }, (bundle if ok else None)


def run(args: argparse.Namespace) -> int:
    paths = find_bundles(args.bundles) if args.bundles else find_bundles()
    checked = [check_bundle(p) for p in paths]
    report = {
        "python": platform.python_version(),
        "packages": package_versions(),
        "cpu": cpu_features(),
        "backends": {n: vars(a) for n, a in registry.all_availability().items()},
        "bundles": [entry for entry, _ in checked],
    }
    healthy = bool(report["bundles"]) and all(b["ok"] for b in report["bundles"])
    if args.selftest:
        from device.tensorrt.selftest import run_selftest

        report["tensorrt_selftest"] = run_selftest([bundle for _, bundle in checked if bundle is not None])
        healthy = healthy and report["tensorrt_selftest"].get("ok", True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_text(report)
        if not report["bundles"]:
            print(BundleError(f"no bundles found in {args.bundles or 'the shipped bundles directory'}"))
    return 0 if healthy else 1


def _print_text(report: dict) -> None:
    print(f"python {report['python']}")
    for name, version in report["packages"].items():
        print(f"  {name:<24} {version or '-'}")
    cpu = report["cpu"]
    print(f"cpu {cpu['model']} ({cpu['machine']}): {' '.join(cpu['features']) or 'no SIMD extensions found'}")
    print("backends:")
    for name, a in report["backends"].items():
        print(f"  {name:<12} {'available' if a['ok'] else 'UNAVAILABLE'}: {a['reason']}"
              + (f" ({a['version']})" if a["version"] else ""))
    print("bundles:")
    for b in report["bundles"]:
        if b["ok"]:
            print(f"  OK     {b['id']} {b['version']} variants {','.join(b['variants'])}  {b['path']}")
        else:
            print(f"  BROKEN {b['path']}: {b['error']}")
    selftest = report.get("tensorrt_selftest")
    if selftest is not None:
        _print_selftest(selftest)


def _print_selftest(selftest: dict) -> None:
    if selftest["skipped"]:
        print(f"tensorrt self-test: SKIPPED ({selftest['reason']})")
        return
    print("tensorrt self-test (vs onnxruntime fp32):")
    for v in selftest["variants"]:
        if "error" in v:
            print(f"  FAIL   {v['bundle']} {v['precision']}: {v['error']}")
            continue
        print(f"  {'OK    ' if v['ok'] else 'FAIL  '} {v['bundle']} {v['precision']}: "
              f"max |dp| {v['max_prob_diff']:.2e} (<= {v['tolerance']:.0e}), agreement {v['agreement']:.0%} "
              f"(>= {v['min_agreement']:.0%}), b1 p50 {v['b1_p50_ms']:.2f} ms, load {v['load_s']:.1f} s")
