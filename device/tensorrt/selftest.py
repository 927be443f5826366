"""``bedside doctor --selftest``: every variant of every bundle on TensorRT, checked against ORT FP32.

For each variant the engine is built (or loaded from the engine cache), run on deterministic
self-test inputs, and its triage probabilities compared with ONNX Runtime running the FP32
variant: within a per-precision tolerance, and with the same triage category on (nearly) every
input. Where TensorRT is unavailable the check is skipped with the reason.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np

from device.runtime import registry
from device.triage import Triager, decide
from models.bundle import Bundle

N_INPUTS = 8
# precision -> (max |probability difference| vs FP32, minimum agreement of triage categories)
TOLERANCES = {"fp32": (1e-3, 1.0), "fp16": (1e-2, 1.0), "int8": (5e-2, 0.875)}


def selftest_inputs(bundle: Bundle, n: int = N_INPUTS) -> np.ndarray:
    """Deterministic, image-like inputs (smooth gradients plus noise), normalised as the contract says.

    Seeded from the bundle's id and version, so every device tests the same inputs.
    """
    m = bundle.manifest.input
    seed = int.from_bytes(hashlib.sha256(f"{bundle.manifest.id}@{bundle.manifest.version}".encode()).digest()[:8])
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:m.height, 0:m.width] / max(m.height, m.width)
    images = []
    for _ in range(n):
        a, b, c = rng.uniform(-1, 1, 3)
        base = 0.5 + 0.4 * np.sin(3 * a * xx + 3 * b * yy + c)
        noisy = np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1)
        images.append([(noisy - mu) / sd for mu, sd in zip(m.mean, m.std)])
    return np.asarray(images, np.float32)


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
    x = selftest_inputs(bundle)
    try:
        want = _predict_once(Triager(bundle, "onnxruntime", "fp32"), x)
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
    max_diff, min_agreement = TOLERANCES[precision]
    diff = float(np.abs(got - want).max())
    agreement = float(np.mean([decide(g, m, True)[1] == decide(w, m, True)[1] for g, w in zip(got, want)]))
    ok = bool(np.isfinite(got).all() and diff <= max_diff and agreement >= min_agreement)
    return {**result, "ok": ok, "max_prob_diff": diff, "tolerance": max_diff, "agreement": agreement,
            "min_agreement": min_agreement, "load_s": round(load_s, 3),
            "b1_p50_ms": round(float(np.median(times)), 3)}
