"""``bedside doctor``: what this machine has, which backends can run and why not, and whether
the shipped bundles are intact and run. Exit 1 when a shipped bundle is broken."""

from __future__ import annotations

import argparse
import json
import platform
from importlib import metadata
from pathlib import Path


from device.runtime import registry
from device.variant_check import selftest_variants
from models.bundle import Bundle, BundleError, find_bundles, load_bundle

PACKAGES = (
    "bedside", "numpy", "onnxruntime", "opencv-python-headless", "pydicom", "pylibjpeg",
    "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle", "pydantic", "flask", "waitress",
    "prometheus-client", "python-multipart", "torch", "onnx", "openvino", "tensorrt", "pycuda",
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
    return package_versions_of(PACKAGES)


def package_versions_of(names: tuple[str, ...]) -> dict[str, str | None]:
    versions = {}
    for name in names:
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
