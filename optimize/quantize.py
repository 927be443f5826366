"""Make INT8 (Q/DQ) and FP16 ONNX graphs from a bundle's FP32 graph.

Precision is baked into the ONNX rather than asked of TensorRT's builder: TensorRT 11 drops the
FP16/INT8 builder flags and implicit INT8 calibration (deprecated since 10.1), and builds strongly
typed networks only. So one graph builds the same engine on JetPack 6 (TRT 10.3) and on 11.x.
TensorRT accepts only symmetric quantization (zero point 0, signed int8 activations); ONNX
Runtime's x86 kernels are fastest with unsigned activations, hence two INT8 recipes.

The CPU recipe's weights use 7 bits (|w| <= 64). x86 CPUs without VNNI (AVX2, AVX-512 before
VNNI) multiply uint8 activations by int8 weights with VPMADDUBSW, which adds each pair of products
in a signed 16-bit lane and clips what overflows: 2 x 255 x 127 does not fit, 2 x 255 x 64 does.
With 8-bit weights the chest model's CPU graph flipped 7% of validation triages on such a CPU
(AMD EPYC, AVX2) against 0.2% on a VNNI one; with 7 bits ONNX Runtime's kernels there stay within
0.013 logits of the graph as written. TensorRT adds in 32 bits, so the GPU recipe keeps all 8.

The CPU recipe also leaves the input side in float, up to and including the first convolution (of
each network, in an ensemble averaged inside the graph): its filters have the fewest weights (9 on
a gray image, 27 on a colour one), where 7 bits cost the most (chest: triage agreement with FP32 99.54% -> 99.77%, the golden images' largest probability
change 0.046 -> 0.013), and ONNX Runtime's INT8 kernel for a one-channel input is its slowest per
multiply. Everything before that convolution stays float too: a float convolution between Q/DQ
pairs is quantized again by ONNX Runtime itself, with 8-bit weights.
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
    seven_bit_weights: bool = False
    float_input_side: bool = False


TENSORRT_INT8 = Int8Recipe(
    "int8-qdq-symmetric",
    True,
    ("gpu",),
    "Q/DQ, int8 activations with zero point 0 and per-channel symmetric int8 weights (TensorRT-compatible)",
)
CPU_INT8 = Int8Recipe(
    "int8-qdq-u8s7",
    False,
    ("cpu",),
    "Q/DQ, asymmetric uint8 activations and per-channel symmetric 7-bit weights (ONNX Runtime CPU kernels; "
    "7 bits so that x86 CPUs without VNNI compute it without 16-bit overflow); the first convolution and "
    "what comes before it in float",
    seven_bit_weights=True,
    float_input_side=True,
)
# |w| <= 64: a pair of uint8 x int8 products then stays within a signed 16-bit sum (2 x 255 x 64 = 32,640).
SEVEN_BIT_LIMIT = 64


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
    fp32: Path, out: Path, input_name: str, calibration: np.ndarray, recipe: Int8Recipe, method: str,
    float_outputs: tuple[str, ...] = (),
) -> None:
    """`float_outputs`: graph outputs (a refusal check's scores) whose own subgraph stays in float."""
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
            reduce_range=recipe.seven_bit_weights,  # ONNX Runtime's name for 7-bit weights
            activation_type=QuantType.QInt8 if recipe.symmetric_activations else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=calibrate,
            calibration_providers=["CPUExecutionProvider"],
            nodes_to_exclude=((input_side(prepared) if recipe.float_input_side else [])
                              + only_feeding(prepared, float_outputs)),
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
    if recipe.seven_bit_weights:
        check_seven_bit_weights(out)


def input_side(path: Path) -> list[str]:
    """The names of the first convolutions (one per network an ensemble averages: each reads the
    input with no convolution before it) and of every node they depend on."""
    graph = onnx.load(str(path)).graph
    producer = {out: node for node in graph.node for out in node.output}
    after_conv: set[str] = set()  # tensors with a convolution upstream (the nodes are in topological order)
    first = []
    for node in graph.node:
        behind = any(name in after_conv for name in node.input)
        if node.op_type == "Conv" and not behind:
            first.append(node)
        if behind or node.op_type == "Conv":
            after_conv.update(node.output)
    if not first:
        raise OptimizeError(f"{path.name} has no convolution: the CPU INT8 recipe is for convolutional networks")
    names, pending = [], list(first)
    while pending:
        node = pending.pop()
        if not node.name:
            raise OptimizeError(f"{path.name}: a node before the first convolution has no name to leave it in float by")
        if node.name not in names:
            names.append(node.name)
            pending += [producer[name] for name in node.input if name in producer]
    return names


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


def check_seven_bit_weights(path: Path) -> None:
    """Every int8 weight within +-64: verify what the CPU recipe promises before a device runs it."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        weights = onnx.numpy_helper.to_array(inits[node.input[0]])
        if weights.dtype == np.int8 and np.abs(weights.astype(np.int16)).max(initial=0) > SEVEN_BIT_LIMIT:
            raise OptimizeError(f"{path.name}: weights {node.input[0]} use more than 7 bits; x86 CPUs without VNNI "
                                "would overflow on them")


def only_feeding(path: Path, outputs: tuple[str, ...]) -> list[str]:
    """The names of the nodes that compute only `outputs` (none of the graph's other outputs): a
    refusal check's statistics, distances and head. Left in float, the check keeps its arithmetic (its
    squared distances, sums of squares expanded as z.z - 2 z.c + c.c, cancel badly in FP16), and
    only the shared network below it is quantized."""
    if not outputs:
        return []
    graph = onnx.load(str(path)).graph
    producer = {out: node for node in graph.node for out in node.output}

    def upstream(names) -> dict[str, onnx.NodeProto]:
        found, pending = {}, [producer[n] for n in names if n in producer]
        while pending:
            node = pending.pop()
            key = node.name or node.output[0]
            if key not in found:
                found[key] = node
                pending += [producer[name] for name in node.input if name in producer]
        return found

    shared = upstream([o.name for o in graph.output if o.name not in outputs])
    only = [name for name in upstream(outputs) if name not in shared]
    unnamed = [n for n, node in upstream(outputs).items() if n not in shared and not node.name]
    if unnamed:
        raise OptimizeError(f"{path.name}: a node of the {', '.join(outputs)} outputs has no name to keep it in float by")
    return only


def convert_fp16(fp32: Path, out: Path, float_outputs: tuple[str, ...] = ()) -> None:
    """FP16 weights and activations inside, FP32 inputs and outputs at the edges; the nodes that
    compute only `float_outputs` stay FP32 (see `only_feeding`)."""
    model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True,
                                     node_block_list=only_feeding(fp32, float_outputs) or None)
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
