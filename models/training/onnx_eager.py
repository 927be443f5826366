"""Run a bundle's ONNX graph op by op in PyTorch eager mode, on the very same weights.

`bedside bench` compares the exported model under ONNX Runtime with PyTorch eager FP32. Rebuilding
the training-time nn.Module from a bundle is not possible in general (BatchNorm is folded, the
temperature is baked in), so this executes the graph's nodes with torch functional ops instead: the
arithmetic, layouts and kernels are those of eager PyTorch. Only the operators our exported CNNs use
are supported; anything else is a clear error, never a silent approximation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper


class UnsupportedGraph(Exception):
    pass


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _conv(x, w, b=None, *, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1, kernel_shape=None,
          auto_pad="NOTSET"):
    if auto_pad not in ("NOTSET", b"NOTSET"):
        raise UnsupportedGraph(f"Conv auto_pad={auto_pad!r} is not supported by the eager runner")
    if pads[0] != pads[2] or pads[1] != pads[3]:
        x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
        pads = (0, 0, 0, 0)
    return F.conv2d(x, w, b, stride=tuple(strides), padding=(pads[0], pads[1]), dilation=tuple(dilations), groups=group)


def _gemm(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):
    a = a.t() if transA else a
    b = b.t() if transB else b
    out = alpha * (a @ b)
    return out if c is None else out + beta * c


def _reshape(x, shape, *, allowzero=0):
    dims = [int(d) for d in shape.tolist()]
    if not allowzero:
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _reduce_mean(x, axes=None, *, keepdims=1, noop_with_empty_axes=0):
    """``axes`` is an attribute up to opset 17 and an input from opset 18 on: accept both."""
    if axes is None:
        raise UnsupportedGraph("ReduceMean without axes is not supported by the eager runner")
    dims = axes.tolist() if isinstance(axes, torch.Tensor) else axes
    return x.mean(dim=tuple(dims), keepdim=bool(keepdims))


def _reduce(op: Callable) -> Callable:
    """ReduceSum / ReduceMin / ReduceL2 as opset 18 has them: axes an optional input, keepdims an attribute."""
    def reduce(x, axes=None, *, keepdims=1, noop_with_empty_axes=0):
        if axes is None:
            raise UnsupportedGraph("a reduction without axes is not supported by the eager runner")
        for axis in sorted((int(a) for a in axes.tolist()), reverse=True):
            x = op(x, axis, bool(keepdims))
        return x
    return reduce


def _clip(x, low=None, high=None):
    return torch.clamp(x, min=None if low is None else low.item(), max=None if high is None else high.item())


def _slice(x, starts, ends, axes=None, steps=None):
    axes = list(range(len(starts))) if axes is None else axes.tolist()
    steps = [1] * len(axes) if steps is None else steps.tolist()
    index = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts.tolist(), ends.tolist(), axes, steps):
        index[axis] = slice(start, min(end, x.shape[axis]), step)
    return x[tuple(index)]


def _squeeze(x, axes=None):
    return x.squeeze() if axes is None else x.squeeze(tuple(int(a) for a in axes.tolist()))


def _unsqueeze(x, axes):
    for axis in sorted(int(a) for a in axes.tolist()):
        x = x.unsqueeze(axis)
    return x


def _batchnorm(x, scale, bias, mean, var, *, epsilon=1e-5, momentum=0.9, training_mode=0):
    if training_mode:
        raise UnsupportedGraph("BatchNormalization in training mode is not supported by the eager runner")
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=epsilon)


def _average_pool(x, *, kernel_shape, strides=None, pads=(0, 0, 0, 0), ceil_mode=0, count_include_pad=0,
                  auto_pad="NOTSET", dilations=None):
    if auto_pad not in ("NOTSET", b"NOTSET") or pads[0] != pads[2] or pads[1] != pads[3] or (
            dilations is not None and any(d != 1 for d in dilations)):
        raise UnsupportedGraph("AveragePool with auto_pad, dilations or uneven pads is not supported by the eager runner")
    return F.avg_pool2d(x, tuple(kernel_shape), tuple(strides or kernel_shape), (pads[0], pads[1]), bool(ceil_mode),
                        bool(count_include_pad))


def _resize(x, roi=None, scales=None, sizes=None, *, mode=b"nearest", coordinate_transformation_mode=b"half_pixel",
            nearest_mode=b"round_prefer_floor", **_):
    """Nearest upsampling by whole factors (what an ensemble does to its coarser members' CAMs) only."""
    modes = tuple(m.decode() if isinstance(m, bytes) else m for m in (mode, coordinate_transformation_mode, nearest_mode))
    if modes != ("nearest", "asymmetric", "floor") or scales is None or scales.numel() == 0:
        raise UnsupportedGraph(f"Resize {modes} is not supported by the eager runner (only whole-factor nearest)")
    return F.interpolate(x, scale_factor=tuple(float(s) for s in scales.tolist()[2:]), mode="nearest")


OPS: dict[str, Callable] = {
    "Conv": _conv,
    "Relu": lambda x: F.relu(x),
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mul": lambda a, b: a * b,
    "Div": lambda a, b: a / b,
    "MatMul": lambda a, b: a @ b,
    "Gemm": _gemm,
    "GlobalAveragePool": lambda x: x.mean(dim=(2, 3), keepdim=True),
    "ReduceMean": _reduce_mean,
    "Flatten": lambda x, axis=1: x.flatten(start_dim=axis),
    "Reshape": _reshape,
    "Transpose": lambda x, perm: x.permute(*perm),
    "Identity": lambda x: x,
    "Shape": lambda x: torch.tensor(x.shape, dtype=torch.int64),
    "Gather": lambda x, i, axis=0: torch.index_select(x, axis, i.reshape(-1)).reshape(
        x.shape[:axis] + i.shape + x.shape[axis + 1 :]
    ),
    "Unsqueeze": _unsqueeze,
    "Concat": lambda *xs, axis: torch.cat(xs, dim=axis),
    "BatchNormalization": _batchnorm,
    "Einsum": lambda *xs, equation: torch.einsum(equation, *xs),
    "AveragePool": _average_pool,
    "Resize": _resize,
    # the refusal check's statistics, distances and head (models/training/refusal.py); nested L2 norms
    # over one axis at a time are the norm over both
    "ReduceL2": _reduce(lambda x, axis, keep: torch.linalg.vector_norm(x, dim=axis, keepdim=keep)),
    "Log": torch.log,
    "Clip": _clip,
    "ReduceSum": _reduce(lambda x, axis, keep: x.sum(dim=axis, keepdim=keep)),
    "ReduceMin": _reduce(lambda x, axis, keep: x.amin(dim=axis, keepdim=keep)),
    "Slice": _slice,
    "Squeeze": _squeeze,
}


class EagerGraph:
    """A callable: numpy (N, C, H, W) float32 -> dict of output name -> numpy array."""

    def __init__(self, path: Path):
        model = onnx.load(str(path))
        graph = model.graph
        self.weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
        self.nodes = []
        for node in graph.node:
            attrs = _attrs(node)
            if node.op_type == "Constant":
                self.weights[node.output[0]] = torch.from_numpy(numpy_helper.to_array(attrs["value"]).copy())
                continue
            if node.op_type not in OPS:
                raise UnsupportedGraph(f"{path.name}: operator {node.op_type} is not supported by the eager runner")
            self.nodes.append((OPS[node.op_type], list(node.input), list(node.output), attrs))
        self.input_name = next(i.name for i in graph.input if i.name not in self.weights)
        self.output_names = [o.name for o in graph.output]

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        values = dict(self.weights)
        values[self.input_name] = torch.from_numpy(batch)
        for fn, inputs, outputs, attrs in self.nodes:
            args = [values[name] if name else None for name in inputs]
            values[outputs[0]] = fn(*args, **attrs)
        return {name: values[name].numpy() for name in self.output_names}


def eager_graph(path: Path, threads: int) -> EagerGraph:
    """The graph ready to time: PyTorch's intra-op threads set as the other runners' are."""
    torch.set_num_threads(threads)
    return EagerGraph(path)
