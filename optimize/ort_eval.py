"""Run an ONNX file over an in-memory batch with ONNX Runtime (the optimizer cannot use device/).

Two ways to run a graph. *As written* (no graph optimizations): every node as the ONNX standard
defines it, so a Q/DQ graph's arithmetic is quantize, dequantize, then a float convolution. That is
what TensorRT and the int32 (VNNI) kernels compute, the same on every CPU up to float rounding, so
the gate judges accuracy that way. *Fused* (as a device serves it): ONNX Runtime's integer kernels for this CPU,
which on x86 without VNNI add pairs of products in 16 bits; the optimizer checks that they still
compute the graph as written, and times them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


def session(path: Path, threads: int, fused: bool = True) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if not fused:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def logits(path: Path, input_name: str, output_name: str, x: np.ndarray, threads: int, batch: int = 64,
           fused: bool = False) -> np.ndarray:
    """The graph's logits on ``x``, as written unless ``fused``."""
    sess = session(path, threads, fused)
    parts = [sess.run([output_name], {input_name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(parts).astype(np.float64)
