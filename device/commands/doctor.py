"""``bedside doctor``: what this machine has, which backends can run and why not, and whether
the shipped bundles are intact and run. Exit 1 when a shipped bundle is broken."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from device.core.settings import default_data_dir
from device.machine.facts import cpu_features, package_versions_of, usable_cores
from device.runtime import registry
from device.runtime.backend_choice import choose
from device.runtime.base import RuntimeFailure, RuntimeUnavailable
from device.runtime.variant_check import selftest_variants
from models.bundle import Bundle, BundleError, find_bundles, load_bundle

PACKAGES = (
    "bedside", "numpy", "onnxruntime", "opencv-python-headless", "pydicom", "pylibjpeg",
    "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle", "pydantic", "flask", "waitress", "cheroot",
    "prometheus-client", "python-multipart", "torch", "onnx", "openvino", "tensorrt", "pycuda",
)


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--bundles", type=Path, help="directory of bundles to verify (default: the shipped ones)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help="the kiosk's data dir, whose backend choice cache is read (default: %(default)s)")
    parser.add_argument("--selftest", action="store_true",
                        help="build (or load) a TensorRT engine for every variant and check it against "
                        "ONNX Runtime FP32 (skipped where TensorRT is unavailable)")


def package_versions() -> dict[str, str | None]:
    return package_versions_of(PACKAGES)


def check_bundle(path: Path) -> tuple[dict[str, object], Bundle | None]:
    """Hashes verified, then every CPU variant run on ONNX Runtime on the deterministic self-test
    inputs and checked against the FP32 variant with the tolerances of device/runtime/variant_check.py: a
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


def backend_choices(bundles: list[Bundle], data_dir: Path) -> dict[str, dict]:
    """What the kiosk's ``backend = "auto"`` serves each bundle on here, by its own procedure and
    cache (the data dir's; timed now, and cached for the kiosk, where it holds nothing for this box)."""
    choices = {}
    for bundle in bundles:
        try:
            choice, backend = choose(bundle, "auto", "auto", usable_cores(), {}, data_dir)
        except (RuntimeFailure, RuntimeUnavailable) as exc:
            choices[bundle.manifest.id] = {"error": str(exc)}
            continue
        backend.close()
        choices[bundle.manifest.id] = choice.as_json()
    return choices


def run(args: argparse.Namespace) -> int:
    paths = find_bundles(args.bundles) if args.bundles else find_bundles()
    checked = [check_bundle(p) for p in paths]
    report = {
        "python": platform.python_version(),
        "packages": package_versions(),
        "cpu": cpu_features(),
        "backends": {n: vars(a) for n, a in registry.all_availability().items()},
        "bundles": [entry for entry, _ in checked],
        "backend_choice": backend_choices([b for _, b in checked if b is not None], args.data_dir),
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
    _print_choices(report["backend_choice"])
    selftest = report.get("tensorrt_selftest")
    if selftest is not None:
        _print_selftest(selftest)


def _print_choices(choices: dict[str, dict]) -> None:
    print("backend = auto (what the kiosk serves on; batch-1 latency, self-test on the golden inputs):")
    for bundle_id, c in choices.items():
        if "error" in c:
            print(f"  {bundle_id}: NONE: {c['error']}")
            continue
        print(f"  {bundle_id}: serves on {c['backend']} {c['precision']} ({c['file']})"
              + (f", timed {c['timed_at']}, from the cache" if c["cached"] else f", timed {c['timed_at']}"))
        for m in c["measured"]:
            mark = "*" if (m["backend"], m["file"]) == (c["backend"], c["file"]) else " "
            figures = (f"p50 {m['p50_ms']:.3f} ms, p99 {m['p99_ms']:.3f} ms" if m["p50_ms"] is not None
                       else f"not timed: {m['error']}")
            print(f"   {mark} {m['backend']:<12} {m['precision']:<5} {m['file']:<40} {figures}")


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
