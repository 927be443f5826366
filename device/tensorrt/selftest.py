"""``bedside doctor --selftest``: every variant of every bundle on TensorRT, checked against ORT FP32.

For each variant the engine is built (or loaded from the engine cache), run on the deterministic
self-test inputs, and its triage probabilities compared with ONNX Runtime running the FP32
variant (device/runtime/variant_check.py). Where TensorRT is unavailable the check is skipped with the reason.
"""

from __future__ import annotations

import time

import numpy as np

from device.runtime import registry
from device.runtime.triager import Triager
from device.runtime.variant_check import compare, golden_set
from models.bundle import Bundle


def run_selftest(bundles: list[Bundle], repeats: int = 20) -> dict:
    status = registry.availability("tensorrt")
    if not status.ok:
        return {"skipped": True, "reason": status.reason, "variants": []}
    results = [check_variant(b, v.precision, repeats)
               for b in bundles for v in b.manifest.variants if "gpu" in v.targets]
    return {"skipped": False, "ok": all(r["ok"] for r in results), "variants": results}


def _predict_once(triager: Triager, x: np.ndarray) -> np.ndarray:
    try:
        return triager.predict(x)[0]
    finally:
        triager.close()


def check_variant(bundle: Bundle, precision: str, repeats: int) -> dict:
    m = bundle.manifest
    result = {"bundle": m.id, "version": m.version, "precision": precision}
    x, stored = golden_set(bundle)
    try:
        want = stored if stored is not None else _predict_once(Triager(bundle, "onnxruntime", "fp32"), x)
        started = time.perf_counter()
        engine = Triager(bundle, "tensorrt", precision)
        try:
            load_s = time.perf_counter() - started
            got, _ = engine.predict(x)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                engine.predict(x[:1])
                times.append((time.perf_counter() - t0) * 1e3)
        finally:
            engine.close()  # frees its CUDA worker and buffers even when a check fails
    except Exception as exc:  # the self-test reports each variant's failure and goes on
        return {**result, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {**result, **compare(got, want, m, precision), "load_s": round(load_s, 3),
            "b1_p50_ms": round(float(np.median(times)), 3)}
