"""Make INT8 (Q/DQ) and FP16 ONNX graphs from a bundle's FP32 graph.

Precision is baked into the ONNX rather than asked of TensorRT's builder: TensorRT 11 drops the
FP16/INT8 builder flags and implicit INT8 calibration (deprecated since 10.1), and builds strongly
typed networks only. So one graph builds the same engine on JetPack 6 (TRT 10.3) and on 11.x.
TensorRT accepts only symmetric quantization (zero point 0, signed int8 activations); ONNX
Runtime's x86 kernels are fastest with unsigned activations, hence two INT8 recipes.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
from onnxruntime.quantization import quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16

from optimize.errors import OptimizeError

METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class Int8Recipe:
    name: str
    symmetric_activations: bool
    targets: tuple[str, ...]
    notes: str


TENSORRT_INT8 = Int8Recipe(
    "int8-qdq-symmetric",
    True,
    ("gpu",),
    "Q/DQ, int8 activations with zero point 0 and per-channel symmetric int8 weights (TensorRT-compatible)",
)
CPU_INT8 = Int8Recipe(
    "int8-qdq-u8s8",
    False,
    ("cpu",),
    "Q/DQ, asymmetric uint8 activations and per-channel symmetric int8 weights (ONNX Runtime CPU kernels)",
)


class _Batches(CalibrationDataReader):
    """Calibration images from an in-memory array, one at a time."""

    def __init__(self, input_name: str, images: np.ndarray):
        self._input_name = input_name
        self._images = images
        self._next = 0

    def get_next(self):
        if self._next >= len(self._images):
            return None
        item = {self._input_name: self._images[self._next : self._next + 1]}
        self._next += 1
        return item

    def rewind(self):
        self._next = 0


def quantize_int8(
    fp32: Path, out: Path, input_name: str, calibration: np.ndarray, recipe: Int8Recipe, method: str
) -> None:
    if len(calibration) == 0:
        raise OptimizeError("refusing to quantize without calibration data")
    if method not in METHODS:
        raise OptimizeError(f"unknown calibration method {method!r} (choose from {', '.join(METHODS)})")
    calibrate = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    reader = _Batches(input_name, calibration)
    # The calibrators print progress with print(): keep stdout clean for --json consumers.
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8 if recipe.symmetric_activations else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=calibrate,
            calibration_providers=["CPUExecutionProvider"],
            extra_options={
                "ActivationSymmetric": recipe.symmetric_activations,
                "WeightSymmetric": True,
                "CalibPercentile": 99.99,
                # TensorRT's explicit quantization keeps biases in float (no int32 DequantizeLinear).
                "QuantizeBias": not recipe.symmetric_activations,
            },
        )
    if recipe.symmetric_activations:
        check_symmetric(out)


def check_symmetric(path: Path) -> None:
    """TensorRT rejects non-zero zero points: verify the graph before calling it TensorRT-compatible."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        # No zero-point input means uint8 by the ONNX spec, which TensorRT refuses too.
        zp_name = node.input[2] if len(node.input) > 2 else ""
        zp = onnx.numpy_helper.to_array(inits[zp_name]) if zp_name in inits else None
        if zp is None or zp.dtype != np.int8 or np.any(zp != 0):
            raise OptimizeError(f"{path.name}: node {node.name} is not symmetric signed int8 (TensorRT needs it)")


def convert_fp16(fp32: Path, out: Path) -> None:
    """FP16 weights and activations inside, FP32 inputs and outputs at the edges."""
    model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    sort_topologically(model.graph)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def sort_topologically(graph: onnx.GraphProto) -> None:
    """The converter appends its I/O casts at the end; ONNX (and TensorRT's parser) want producers first."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise OptimizeError("graph has a cycle or an undefined input")
        for node in ready:
            available.update(node.output)
            ordered.append(node)
        done = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in done]
    del graph.node[:]
    graph.node.extend(ordered)
