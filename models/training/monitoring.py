"""The monitoring reference a bundle ships (``Manifest.monitoring``): its validation images read as
the device receives them, made model inputs by the shared preprocessing, run through the exported
ONNX graph, and binned by models.drift, the module the device computes each study's signals with.

Torch-free (onnxruntime, OpenCV): `bedside export` calls it through the bundle writer, and the tests
build the reference of a shipped bundle's copy through the same function.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models import drift
from models.bundle import InputContract, MonitoringReference
from models.metrics import softmax
from models.training.images import Sample, decode_rgb
from models.preprocess import to_model_input


def monitoring_reference(model_path: Path, contract: InputContract, logits: str, urgent: list[int],
                         samples: list[Sample], data: str, refusal_outputs: dict[str, str] | None = None
                         ) -> MonitoringReference:
    """The reference of ``samples`` (validation images with their label index) under the graph at
    ``model_path``: P(urgent) (the sum of the ``urgent`` labels' softmax), each refusal check's score
    (``refusal_outputs``: check name -> graph output, where the bundle has refusal checks), and the
    image statistics."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    refusal_outputs = refusal_outputs or {}
    outputs = [logits, *refusal_outputs.values()]

    def scores(x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        values = session.run(outputs, {contract.tensor_name: x.astype(np.float32)})
        p = softmax(values[0].astype(np.float64))[:, urgent].sum(axis=1)
        return p, {name: v.reshape(len(x)) for name, v in zip(refusal_outputs, values[1:])}

    inputs = (to_model_input(decode_rgb(s.path), contract) for s in samples)
    is_urgent = np.array([s.label in urgent for s in samples])
    return drift.reference_from_inputs(inputs, is_urgent, scores, contract, data)
