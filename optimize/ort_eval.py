"""Run an ONNX file over an in-memory batch with ONNX Runtime (the optimizer cannot use device/).

Two ways to run a graph. *As written* (no graph optimizations): every node as the ONNX standard
defines it, so a Q/DQ graph's arithmetic is quantize, dequantize, then a float convolution. That is
what TensorRT and the int32 (VNNI) kernels compute, the same on every CPU up to float rounding, so
the gate judges INT8 accuracy that way. *Fused* (as a device serves it): ONNX Runtime's integer
kernels for this CPU, which on x86 without VNNI add pairs of products in 16 bits; the optimizer
checks that they still compute the graph as written, and times them. Float graphs have no integer
kernels and are judged fused (2-3x quicker than as written, and the same logits).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


def judged_fused(precision: str) -> bool:
    """Whether the gate and the audits run a graph of this precision fused: all but INT8."""
    return precision != "int8"


def session(path: Path, threads: int, fused: bool = True) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if not fused:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def logits(path: Path, input_name: str, output_name: str, x: np.ndarray, threads: int, batch: int = 64,
           fused: bool = True) -> np.ndarray:
    """The graph's logits on ``x``, fused unless told to run it as written."""
    sess = session(path, threads, fused)
    parts = [sess.run([output_name], {input_name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(parts).astype(np.float64)


def refused(path: Path, input_name: str, outputs: dict[str, float], x: np.ndarray, threads: int, batch: int = 64,
            fused: bool = True) -> np.ndarray:
    """Whether the graph's refusal check refuses each image of ``x``: any output (name -> threshold)
    above its threshold, the device's rule."""
    sess = session(path, threads, fused)
    names, limits = list(outputs), np.array(list(outputs.values()))
    parts = []
    for i in range(0, len(x), batch):
        scores = np.stack([np.asarray(v).reshape(-1) for v in sess.run(names, {input_name: x[i : i + batch]})], 1)
        parts.append((scores > limits[None, :]).any(1))
    return np.concatenate(parts)
