"""``bedside doctor``: what this machine has, which backends can run and why not, and whether
the shipped bundles are intact and run. Exit 1 when a shipped bundle is broken."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np

from device.machine import cpu_features, package_versions_of
from device.runtime import registry
from device.runtime.base import VariantFile
from device.triage import model_io
from device.variant_check import compare, golden_set
from models.bundle import Bundle, BundleError, Variant, find_bundles, load_bundle
from models.metrics import softmax

PACKAGES = (
    "bedside", "numpy", "onnxruntime", "opencv-python-headless", "pydicom", "pylibjpeg",
    "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle", "pydantic", "flask", "waitress",
    "prometheus-client", "python-multipart", "torch", "onnx", "openvino", "tensorrt", "pycuda",
)


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--bundles", type=Path, help="directory of bundles to verify (default: the shipped ones)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--selftest", action="store_true",
                        help="build (or load) a TensorRT engine for every variant and check it against "
                        "ONNX Runtime FP32 (skipped where TensorRT is unavailable)")


def package_versions() -> dict[str, str | None]:
    return package_versions_of(PACKAGES)


def check_bundle(path: Path) -> tuple[dict[str, object], Bundle | None]:
    """Hashes verified, then every CPU variant run on ONNX Runtime on the deterministic self-test
    inputs and checked against the FP32 variant with the tolerances of device/variant_check.py: a
    variant that computes something else makes the bundle broken. GPU variants are checked where
    they run, on TensorRT, by ``--selftest``.

    Returns the report and, when it is ok, the loaded (verified) bundle.
    """
    try:
        bundle = load_bundle(path)
        m = bundle.manifest
        variants = selftest_variants(bundle)
    except Exception as exc:  # doctor reports every failure instead of stopping at the first
        return {"path": str(path), "ok": False, "error": str(exc)}, None
    failed = [v["file"] for v in variants if not v["ok"]]
    return {
        "path": str(path), "ok": not failed, "id": m.id, "version": m.version,
        "variants": [v.precision for v in m.variants], "variant_checks": variants,
        "gpu_variants": [{"file": v.file, "precision": v.precision} for v in m.variants if "gpu" in v.targets],
        "research_only": m.research_only,
        **({"error": f"self-test failed: {', '.join(failed)}"} if failed else {}),
    }, (None if failed else bundle)


def selftest_variants(bundle: Bundle) -> list[dict]:
    m = bundle.manifest
    x, stored = golden_set(bundle)
    want = stored if stored is not None else _probabilities(bundle, m.variant("fp32"), x)
    return [{"file": v.file, "precision": v.precision, "targets": list(v.targets),
             **compare(_probabilities(bundle, v, x), want, m, v.precision)}
            for v in m.variants if "cpu" in v.targets]


def _probabilities(bundle: Bundle, variant: Variant, x: np.ndarray) -> np.ndarray:
    m = bundle.manifest
    backend = registry.require("onnxruntime")(VariantFile.of(bundle, variant), model_io(m), 1)
    try:
        return softmax(backend.run(x)[m.outputs.logits].astype(np.float64))
    finally:
        backend.close()


def bench_peers() -> dict[str, str | None]:
    """Engines `bedside bench` measures beside the serving backends, with their versions (None: not installed)."""
    return {"openvino": package_versions_of(("openvino",))["openvino"]}


def run(args: argparse.Namespace) -> int:
    paths = find_bundles(args.bundles) if args.bundles else find_bundles()
    checked = [check_bundle(p) for p in paths]
    report = {
        "python": platform.python_version(),
        "packages": package_versions(),
        "cpu": cpu_features(),
        "backends": {n: vars(a) for n, a in registry.all_availability().items()},
        "bench_peers": bench_peers(),
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
    for name, version in report["bench_peers"].items():
        print(f"  {name:<12} {'installed' if version else 'not installed'}: measured by `bedside bench`, "
              f"not a serving backend" + (f" ({version})" if version else " (the 'bench' extra)"))
    print("bundles (each CPU variant self-tested on onnxruntime: golden inputs against the stored FP32 outputs, "
          "or synthetic inputs against FP32 where a bundle ships none):")
    for b in report["bundles"]:
        print(f"  {'OK    ' if b['ok'] else 'BROKEN'} {b.get('id', '')} {b.get('version', '')}  {b['path']}"
              + ("" if b["ok"] else f": {b['error']}"))
        _print_variant_checks(b.get("variant_checks", []))
        checked = {c["file"] for c in b.get("variant_checks", [])}
        for v in b.get("gpu_variants", []):
            if v["file"] not in checked:
                print(f"         {v['precision']:<5} for {'gpu':<8} {v['file']}  (checked on TensorRT by --selftest)")
    selftest = report.get("tensorrt_selftest")
    if selftest is not None:
        _print_selftest(selftest)


def _print_variant_checks(checks: list[dict]) -> None:
    width = max((len(c["file"]) for c in checks), default=0)
    for c in checks:
        print(f"         {c['precision']:<5} for {','.join(c['targets']):<8} {c['file']:<{width}}  "
              f"{'ok  ' if c['ok'] else 'FAIL'} max |dp| {c['max_prob_diff']:.1e} (<= {c['tolerance']:.0e}), "
              f"agreement {c['agreement']:.0%}")


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
