"""The monitoring reference a bundle ships (``Manifest.monitoring``): its validation images read as
the device reads them (models/reading.py), made model inputs by the shared preprocessing, run through
the bundle's own ONNX graph, and binned by models.drift, the module the device computes each study's
signals with; and each other variant's own model-score signals on the same images (``Variant.monitoring``).

``add_monitoring_reference`` is the one call: `bedside export` makes it last (the bundle writer),
and whatever changes a written bundle's graph outputs or its refusal checks afterwards must make it
again, since every refusal check's score is a signal too. Torch-free (onnxruntime, OpenCV): the
tests and benchmarks give a shipped bundle's copy its reference through the same function.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models import drift
from models.bundle import Bundle, DriftSignal, MonitoringReference, load_bundle, write_manifest
from models.metrics import softmax
from models.preprocess import to_model_input
from models.reading import read_as_served
from models.training.images import Sample


def _scorer(bundle: Bundle, graph: Path) -> drift.ModelScores:
    """A batch of model inputs -> (P(urgent), {refusal check: score}) through one of the bundle's graphs,
    with ONNX Runtime's default (full) graph optimisation, as the device runs it."""
    import onnxruntime as ort

    m = bundle.manifest
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    checks = {} if m.refusal is None else {c.name: c.output for c in m.refusal.checks}
    outputs = [m.outputs.logits, *checks.values()]

    def scores(x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        values = session.run(outputs, {m.input.tensor_name: x.astype(np.float32)})
        p = m.urgent_probability(softmax(values[0].astype(np.float64)))
        return p, {name: v.reshape(len(x)) for name, v in zip(checks, values[1:])}

    return scores


def _inputs(bundle: Bundle, samples: list[Sample]):
    """The samples as the device makes them model inputs: decoded at the device's scale (a JPEG at
    1/2 to 1/8 by libjpeg, models/reading.py), then the shared preprocessing. A full decode resized
    instead moves the refusal scores enough that the monitor would compare unlike with like."""
    m = bundle.manifest
    return (to_model_input(read_as_served(s.path, m), m.input) for s in samples)


def _is_urgent(bundle: Bundle, samples: list[Sample]) -> np.ndarray:
    return np.array([s.label in bundle.manifest.urgent_indices for s in samples])


def bundle_reference(bundle: Bundle, samples: list[Sample], data: str) -> MonitoringReference | None:
    """The reference of ``samples`` (validation images with their label index) under the bundle's fp32
    graph: P(urgent) as its policy sums it, each refusal check's score (where the manifest declares
    checks), and the image statistics."""
    m = bundle.manifest
    return drift.reference_from_inputs(_inputs(bundle, samples), _is_urgent(bundle, samples),
                                       _scorer(bundle, bundle.path_of(m.variant("fp32").file)), m.input, data)


def variant_signals(bundle: Bundle, samples: list[Sample], graph: Path) -> list[DriftSignal]:
    """The model-score signals (P(urgent), refusal scores) of ``samples`` through the ONNX file
    ``graph`` (a variant of the bundle): what ``Variant.monitoring`` holds for a variant other than FP32."""
    return drift.score_signals(_inputs(bundle, samples), _is_urgent(bundle, samples), _scorer(bundle, graph))


def add_monitoring_reference(root: Path, samples: list[Sample], data: str) -> MonitoringReference:
    """Compute the reference of the bundle at ``root`` on ``samples`` and write it into its manifest
    (``data`` names the images, e.g. 'validation (patient-level, n=862)'), with every other variant's
    own model-score signals; the bundle must load after. Raises ValueError where the samples cannot
    make one (no signal spreads, or one group is missing)."""
    bundle = load_bundle(root)
    reference = bundle_reference(bundle, samples, data)
    if reference is None:
        raise ValueError(f"no monitoring reference from {len(samples)} images ({data}): it needs images of the urgent "
                         "group and of the others, whose signals vary")
    variants = [v if v.precision == "fp32" else
                v.model_copy(update={"monitoring": variant_signals(bundle, samples, bundle.path_of(v.file))})
                for v in bundle.manifest.variants]
    write_manifest(root, bundle.manifest.model_copy(update={"monitoring": reference, "variants": variants}))
    load_bundle(root)
    return reference


def main(argv: list[str] | None = None) -> int:
    """Give a written bundle its monitoring reference again, from its recorded validation split."""
    import argparse

    from models.training.registry import recipe_for_split

    parser = argparse.ArgumentParser(prog="python -m models.training.monitoring", description=main.__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data", type=Path, default=None, help="the training folder (default: the exam's)")
    args = parser.parse_args(argv)
    m = load_bundle(args.bundle).manifest
    recipe = recipe_for_split(m.provenance.split.method)
    _, val = recipe.redraw_split(args.data or recipe.default_data_dir(), m.provenance.split)
    reference = add_monitoring_reference(args.bundle, val, m.monitoring.data if m.monitoring else
                                         f"validation (n={len(val)})")
    print(f"{args.bundle}: monitoring reference of {reference.n} images, {len(reference.signals)} signals; "
          f"model scores of {sum(v.precision != 'fp32' for v in m.variants)} other variants")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
