"""A variant's graph as a serving engine sees it: every input and output with its element type and
its size per image (read with ONNX Runtime, which every install has), checked against the bundle's
input contract and declared outputs. The Triton repository and the central node take their tensors
from here, so an output a bundle adds (a refusal score) is served without a change to either."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.bundle import Bundle

# ONNX element types (as ONNX Runtime names them) -> Triton data types
DATA_TYPES = {
    "tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(double)": "TYPE_FP64",
    "tensor(int8)": "TYPE_INT8", "tensor(uint8)": "TYPE_UINT8", "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64", "tensor(bool)": "TYPE_BOOL",
}


class GraphError(Exception):
    """A graph a serving engine cannot take as it is; the message says why."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str  # Triton's TYPE_*
    dims: tuple[int, ...]  # without the batch axis; -1 where the graph leaves a size open


def graph_io(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's inputs and outputs as Triton sees them, each with a batch axis first."""
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types
        raise GraphError(f"{path.name}: ONNX Runtime cannot read the graph: {exc}") from None
    return ([_spec(path, arg) for arg in session.get_inputs()], [_spec(path, arg) for arg in session.get_outputs()])


def _spec(path: Path, arg) -> TensorSpec:
    if arg.type not in DATA_TYPES:
        raise GraphError(f"{path.name}: {arg.name} is {arg.type}, which Triton's configuration cannot name here")
    if not arg.shape or isinstance(arg.shape[0], int):
        raise GraphError(f"{path.name}: {arg.name} has no open batch axis ({arg.shape}); "
                         "Triton's dynamic batching needs one")
    return TensorSpec(arg.name, DATA_TYPES[arg.type], tuple(d if isinstance(d, int) else -1 for d in arg.shape[1:]))


def check_contract(bundle: Bundle, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
    """The graph takes the input the bundle's contract describes and gives the outputs it declares."""
    m = bundle.manifest
    want = TensorSpec(m.input.tensor_name, "TYPE_FP32", (m.input.channels, m.input.height, m.input.width))
    if inputs != [want]:
        raise GraphError(f"{m.id}: the graph's inputs {inputs} are not the contract's {want}")
    missing = [n for n in m.output_names if n not in {o.name for o in outputs}]
    if missing:
        raise GraphError(f"{m.id}: the graph lacks the declared outputs {missing}")
