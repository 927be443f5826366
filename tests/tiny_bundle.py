"""A tiny but complete bundle built from scratch, for tests that must not depend on the shipped model.

The graph is a real GAP+linear CAM network: conv -> relu -> 1x1 conv to per-class maps (the
``cam`` output) -> global average pool -> logits. With ``refusal`` it also computes a refusal score
in the same run, as a bundle with a refusal policy does (models/bundle.py, RefusalPolicy): the
distance of the image's mean brightness from mid-gray, in the input's standard deviations (|mean of
the normalised input|). A test statistic, not a method: on the shared images a chest film scores
0.02-0.6, a red-free (gray) fundus photograph mostly 1-1.7, a blank white page 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from device.runtime.base import ModelIO, VariantFile
from models.bundle import Manifest, Variant, file_entry, read_manifest, write_manifest

SIZE = 32
IO = ModelIO("image", ("logits", "cam"), (1, SIZE, SIZE))  # what a backend is told of the tiny model
REFUSAL_OUTPUT = "ood"
REFUSAL_THRESHOLD = 0.8
REFUSAL = {
    "checks": [{"name": "brightness_distance", "output": REFUSAL_OUTPUT, "threshold": REFUSAL_THRESHOLD,
                "statistic": "distance of the mean brightness from mid-gray (a test statistic)"}],
    "subject": "a chest X-ray",
    "advice": "The model only judges chest radiographs (PA/AP). Check the image or choose another exam.",
    "calibrated_refusal_rate": 0.01,
    "calibrated_on": "nothing: a test bundle",
}


def tiny_onnx(path: Path, seed: int = 0, refusal: bool = False, refusal_keepdims: bool = False,
              extra_output: str | None = None) -> None:
    """``refusal``: add the refusal output, shape (N,) or, with ``refusal_keepdims``, (N, 1).
    ``extra_output``: one more output, a score per image (shape [N]), as a bundle may add beside
    logits and cam (an in-graph refusal score)."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["cam"]),
        helper.make_node("GlobalAveragePool", ["cam"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["logits"]),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2]),
        helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["N", 2, SIZE, SIZE]),
    ]
    if refusal:
        nodes += [
            helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Abs", ["mean"], ["ood_flat"]),
            helper.make_node("Unsqueeze", ["ood_flat", "last"], [REFUSAL_OUTPUT]) if refusal_keepdims
            else helper.make_node("Identity", ["ood_flat"], [REFUSAL_OUTPUT]),
        ]
        shape = ["N", 1] if refusal_keepdims else ["N"]
        outputs.append(helper.make_tensor_value_info(REFUSAL_OUTPUT, TensorProto.FLOAT, shape))
    if extra_output:
        nodes.append(helper.make_node("ReduceMax", ["logits"], [extra_output], keepdims=0, axes=[1]))
        outputs.append(helper.make_tensor_value_info(extra_output, TensorProto.FLOAT, ["N"]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])],
        outputs,
        [w1, w2, numpy_helper.from_array(np.array([1], dtype=np.int64), "last")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def manifest_dict(files: dict) -> dict:
    return {
        "schema_version": 1,
        "id": "tiny-test",
        "version": "0.0.1",
        "title": "Tiny test model",
        "intended_use": "Unit tests only.",
        "research_only": True,
        "disclaimer": "Not for clinical use.",
        "task": "binary-classification",
        "labels": ["NORMAL", "PNEUMONIA"],
        "input": {
            "tensor_name": "image",
            "height": SIZE,
            "width": SIZE,
            "channels": 1,
            "color": "grayscale",
            "resize": "stretch",
            "mean": [0.5],
            "std": [0.25],
            "dicom": {"modalities": ["CR", "DX"]},
        },
        "outputs": {"logits": "logits", "cam": "cam"},
        "policy": {
            "urgent_labels": ["PNEUMONIA"],
            "operating_point": {
                "threshold": 0.5,
                "sensitivity": 0.9,
                "specificity": 0.9,
                "chosen_on": "nothing",
                "method": "fixed for tests",
            },
        },
        "quality": {
            "min_side_px": 16,
            "min_dynamic_range": 0.05,
            "max_clipped_fraction": 0.6,
            "max_colorfulness": 0.1,
            "min_aspect": 0.4,
        },
        "calibration": {"method": "none"},
        "metrics": [],
        "provenance": {
            "dataset": "none",
            "dataset_licence": "n/a",
            "citation": "n/a",
            "training_command": "tests/tiny_bundle.py",
            "seed": 0,
            "code_revision": "test",
            "trained_at": "2026-01-01T00:00:00Z",
            "training_seconds": 0.0,
            "framework": "onnx.helper",
        },
        "variants": [{"precision": "fp32", "file": "model.onnx"}],
        "files": files,
    }


def make_tiny_bundle(root: Path, refusal: bool = False, extra_output: str | None = None) -> Path:
    """``refusal``: the bundle says when it cannot judge an image (REFUSAL), with its own id;
    ``extra_output``: one more graph output (see tiny_onnx)."""
    root.mkdir(parents=True, exist_ok=True)
    tiny_onnx(root / "model.onnx", refusal=refusal, extra_output=extra_output)
    files = {"model.onnx": file_entry(root / "model.onnx").model_dump()}
    data = manifest_dict(files)
    if refusal:
        data.update(id="tiny-refusing", title="Tiny test model that refuses", refusal=REFUSAL)
    write_manifest(root, Manifest.model_validate(data))
    return root


def declare_refusal(root: Path, output: str, threshold: float = 10.0) -> Path:
    """The bundle's manifest with a refusal policy whose one check reads ``output`` (re-validated)."""
    m = read_manifest(root)
    policy = {"checks": [{"name": "score", "output": output, "statistic": "largest logit (a test stand-in)",
                          "threshold": threshold}],
              "subject": "a tiny test image", "advice": "Use the tiny test images.",
              "calibrated_refusal_rate": 0.01, "calibrated_on": "nothing (tests)"}
    write_manifest(root, Manifest.model_validate({**m.model_dump(mode="json"), "refusal": policy}))
    return root


def edit_manifest(root: Path, **changes) -> None:
    """Rewrite manifest.json with top-level keys changed, bypassing validation (to test rejection)."""
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def variant_file(path: Path, precision: str = "fp32") -> VariantFile:
    """An ONNX file as a backend is handed it: the file and its variant's manifest entry."""
    return VariantFile(Path(path), Variant(precision=precision, file=Path(path).name))


