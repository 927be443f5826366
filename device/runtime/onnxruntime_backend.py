"""ONNX Runtime on the CPU: the backend every Bedside device has.

Each run is single-threaded and a batch runs as ``threads`` parts side by side (device.runtime.base.
SideBySide), all on the one session (``InferenceSession.run`` is thread-safe and releases the GIL).
On this model INT8 gains almost nothing from a second intra-op thread (0.57 against 0.56 ms at
batch 1), and two clients no longer preempt each other's pool threads.
"""

from __future__ import annotations

import numpy as np

from device.runtime.base import (
    Availability, Backend, ModelIO, RuntimeFailure, RuntimeUnavailable, VariantFile, SideBySide, import_runtime,
)

PROVIDER = "CPUExecutionProvider"


def _import_ort():
    return import_runtime("onnxruntime")


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    target = "cpu"

    @classmethod
    def availability(cls) -> Availability:
        try:
            ort = _import_ort()
        except RuntimeUnavailable as exc:
            return Availability(False, str(exc))
        if PROVIDER not in ort.get_available_providers():
            return Availability(False, f"{PROVIDER} missing from this onnxruntime build", ort.__version__)
        return Availability(True, "CPU execution provider", ort.__version__)

    def __init__(self, model: VariantFile, io: ModelIO, threads: int, settings: object | None = None):
        ort = _import_ort()
        self.io = io
        opts = ort.SessionOptions()
        # Threads are set explicitly: ORT's default spins one thread per core, which
        # starves the web server and capture threads sharing this small CPU.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        # Pool threads that spin between runs are preempted on a shared 2-core box and come back
        # late: that made ORT's INT8 p90 4.5 ms against a 0.7 ms p50. Waiting threads sleep instead.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(model.path), sess_options=opts, providers=[PROVIDER])
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise RuntimeFailure(f"onnxruntime cannot load {model.path.name}: {exc}") from None
        self._check_io()
        self._side_by_side = SideBySide(threads)

    def _check_io(self) -> None:
        inputs = {i.name for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        if self.io.input_name not in inputs:
            raise RuntimeFailure(f"model has no input {self.io.input_name!r} (it has {sorted(inputs)})")
        missing = [n for n in self.io.output_names if n not in outputs]
        if missing:
            raise RuntimeFailure(f"model lacks outputs {missing} (it has {sorted(outputs)})")

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._session is None:
            raise RuntimeFailure("backend was closed")
        return dict(zip(self.io.output_names, self._side_by_side.run(batch, self._run_part)))

    def _run_part(self, _: int, part: np.ndarray) -> list[np.ndarray]:
        return self._session.run(list(self.io.output_names), {self.io.input_name: part})

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        super().warm_up(self._side_by_side.warm_up_sizes(batch_sizes))

    def close(self) -> None:
        self._side_by_side.close()
        self._session = None
