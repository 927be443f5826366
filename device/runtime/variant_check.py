"""Does a bundle variant compute what the bundle's FP32 model computed? The self-tests of
``bedside doctor`` (every variant on ONNX Runtime) and ``doctor --selftest`` (every GPU variant on
TensorRT) run them on the bundle's golden inputs (real images, with the FP32 outputs stored when
the bundle was made) and judge them by one tolerance table: probabilities within a per-precision
bound, and (nearly) the same triage category. A bundle without golden inputs is checked on
deterministic, image-like inputs against its FP32 variant run here."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

from device.decision.triage import decide
from device.runtime import registry
from device.runtime.base import VariantFile, model_io
from device.runtime.triager import Triager
from models.bundle import Bundle, Manifest, Variant
from models.metrics import softmax

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


def golden_set(bundle: Bundle) -> tuple[np.ndarray, np.ndarray | None]:
    """The self-test inputs and, when the bundle ships them, the FP32 probabilities stored with them."""
    name = bundle.manifest.golden
    if name is None:
        return selftest_inputs(bundle), None
    with np.load(bundle.path_of(name), allow_pickle=False) as golden:
        return golden["inputs"].astype(np.float32), golden["probabilities"].astype(np.float64)


def compare(got: np.ndarray, want: np.ndarray, manifest: Manifest, precision: str) -> dict:
    """A variant's probabilities ``got`` against FP32's ``want`` on the same inputs."""
    max_diff, min_agreement = TOLERANCES[precision]
    diff = float(np.abs(got - want).max())
    agreement = float(np.mean([decide(g, manifest, True)[1] == decide(w, manifest, True)[1]
                               for g, w in zip(got, want)]))
    ok = bool(np.isfinite(got).all() and diff <= max_diff and agreement >= min_agreement)
    return {"ok": ok, "max_prob_diff": diff, "tolerance": max_diff, "agreement": agreement,
            "min_agreement": min_agreement}


def selftest_variants(bundle: Bundle) -> list[dict]:
    """Every CPU variant run on ONNX Runtime on the golden inputs, each judged by ``compare``."""
    m = bundle.manifest
    x, want = reference_outputs(bundle)
    return [{"file": v.file, "precision": v.precision, "targets": list(v.targets),
             **compare(_probabilities(bundle, v, x), want, m, v.precision)}
            for v in m.variants if "cpu" in v.targets]


def reference_outputs(bundle: Bundle) -> tuple[np.ndarray, np.ndarray]:
    """The self-test inputs and what FP32 gives on them: stored in the bundle, or computed here."""
    x, stored = golden_set(bundle)
    return x, stored if stored is not None else _probabilities(bundle, bundle.manifest.variant("fp32"), x)


def probabilities(run: Callable[[np.ndarray], dict[str, np.ndarray]], manifest: Manifest,
                  x: np.ndarray) -> np.ndarray:
    """What a runner (a backend's ``run``, or any callable returning its outputs by name) gives on ``x``,
    as the probabilities ``compare`` takes."""
    return softmax(np.asarray(run(x)[manifest.outputs.logits], dtype=np.float64))


def live_check(triager: Triager) -> dict:
    """The golden inputs through a loaded model, against the stored outputs."""
    bundle = triager.bundle
    x, stored = reference_outputs(bundle)
    probs, _ = triager.predict(x)
    m = triager.model
    variant = bundle.manifest.variant(m.precision, registry.require(m.backend).target)
    return {"file": variant.file, "precision": m.precision, "backend": m.backend,
            **compare(probs, stored, bundle.manifest, m.precision)}


def _probabilities(bundle: Bundle, variant: Variant, x: np.ndarray) -> np.ndarray:
    m = bundle.manifest
    backend = registry.require("onnxruntime")(VariantFile.of(bundle, variant), model_io(m), 1)
    try:
        return probabilities(backend.run, m, x)
    finally:
        backend.close()
