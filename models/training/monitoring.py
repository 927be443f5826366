"""The monitoring reference a bundle ships (``Manifest.monitoring``): its validation images read as
the device receives them, made model inputs by the shared preprocessing, run through the bundle's
own ONNX graph, and binned by models.drift, the module the device computes each study's signals with.

``add_monitoring_reference`` is the one call: `bedside export` makes it last (the bundle writer),
and whatever changes a written bundle's graph outputs or its refusal checks afterwards must make it
again, since every refusal check's score is a signal too. Torch-free (onnxruntime, OpenCV): the
tests and benchmarks give a shipped bundle's copy its reference through the same function.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models import drift
from models.bundle import Bundle, MonitoringReference, load_bundle, write_manifest
from models.metrics import softmax
from models.preprocess import to_model_input
from models.training.images import Sample, decode_rgb


def bundle_reference(bundle: Bundle, samples: list[Sample], data: str) -> MonitoringReference | None:
    """The reference of ``samples`` (validation images with their label index) under the bundle's fp32
    graph: P(urgent) as its policy sums it, each refusal check's score (where the manifest declares
    checks), and the image statistics."""
    import onnxruntime as ort

    m = bundle.manifest
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(bundle.path_of(m.variant("fp32").file)), options,
                                   providers=["CPUExecutionProvider"])
    checks = {} if m.refusal is None else {c.name: c.output for c in m.refusal.checks}
    outputs = [m.outputs.logits, *checks.values()]

    def scores(x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        values = session.run(outputs, {m.input.tensor_name: x.astype(np.float32)})
        p = m.urgent_probability(softmax(values[0].astype(np.float64)))
        return p, {name: v.reshape(len(x)) for name, v in zip(checks, values[1:])}

    inputs = (to_model_input(decode_rgb(s.path), m.input) for s in samples)
    is_urgent = np.array([s.label in m.urgent_indices for s in samples])
    return drift.reference_from_inputs(inputs, is_urgent, scores, m.input, data)


def add_monitoring_reference(root: Path, samples: list[Sample], data: str) -> MonitoringReference:
    """Compute the reference of the bundle at ``root`` on ``samples`` and write it into its manifest
    (``data`` names the images, e.g. 'validation (patient-level, n=862)'); the bundle must load after.
    Raises ValueError where the samples cannot make one (no signal spreads, or one group is missing)."""
    bundle = load_bundle(root)
    reference = bundle_reference(bundle, samples, data)
    if reference is None:
        raise ValueError(f"no monitoring reference from {len(samples)} images ({data}): it needs images of the urgent "
                         "group and of the others, whose signals vary")
    write_manifest(root, bundle.manifest.model_copy(update={"monitoring": reference}))
    load_bundle(root)
    return reference
