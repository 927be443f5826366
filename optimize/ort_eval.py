"""Run an ONNX file over an in-memory batch with ONNX Runtime (the optimizer cannot use device/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def logits(path: Path, input_name: str, output_name: str, x: np.ndarray, threads: int, batch: int = 64):
    sess = session(path, threads)
    parts = [sess.run([output_name], {input_name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(parts).astype(np.float64)
