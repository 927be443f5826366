"""ONNX export (BN folded, temperature baked in) and its check against torch.

`bedside export` (models.training.commands) rebuilds a whole bundle from a training checkpoint
through models.training.card, the same code path as the end of `bedside train`.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from models.training.architectures import ResNetCAM, build_model

OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "cam")


def deployable_model(checkpoint: dict) -> ResNetCAM:
    """The checkpoint's (EMA) weights with the calibration temperature baked in and BN folded."""
    model = build_model(tuple(checkpoint["widths"]), int(checkpoint["blocks"]), int(checkpoint.get("classes", 2)),
                        int(checkpoint.get("channels", 1)))
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    model.bake_temperature(float(checkpoint["temperature"]))
    return model.fuse()


def export_onnx(model: torch.nn.Module, size: int, path: Path, channels: int = 1) -> Path:
    """Single-file ONNX (opset 18) with a dynamic batch axis, via the dynamo exporter.

    The dynamo path (torch's default since 2.9) gives a clean graph for this plain model; the
    legacy TorchScript exporter is deprecated. `external_data=False` keeps the weights inside the
    .onnx file (the model is well under the 2 GB protobuf limit).
    """
    model = copy.deepcopy(model).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    # Without torchvision the exporter logs one "Skipping torchvision::..." line per op at WARNING.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        # torch 2.13's own exporter internals trip their pytree deprecation; harmless, not ours.
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        program = torch.onnx.export(
            model,
            (torch.zeros(1, channels, size, size),),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"x": {0: batch}},
            opset_version=OPSET,
            optimize=True,
            verbose=False,
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=False)
    return path


def onnx_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def max_abs_diff(model: torch.nn.Module, path: Path, x: torch.Tensor) -> dict[str, float]:
    """Largest |onnxruntime - torch| over `x`, per output."""
    session = onnx_session(path)
    got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x.float().numpy()})
    want = [t.numpy() for t in model.eval()(x.float())]
    return {name: float(np.abs(g - w).max()) for name, g, w in zip(OUTPUT_NAMES, got, want)}
