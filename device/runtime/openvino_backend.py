"""OpenVINO on the CPU: the x86 edge boxes many clinic carts are (the `openvino` extra).

Precision is pinned to the variant's. OpenVINO's CPU plugin otherwise picks its own inference
precision: bf16 on CPUs with AVX-512 BF16 or AMX, which would silently run an FP32 variant at
reduced precision, a model nobody gated. An INT8 variant is pinned to f32 too: its quantized
operators run int8 as the graph's Q/DQ nodes say; the f32 pin is for everything between them, as on
ONNX Runtime. After compiling, the precision is read back and a plugin that did not take it is
refused.
"""

from __future__ import annotations

import importlib.util
import threading
from importlib import metadata

import numpy as np

from device.runtime.base import (
    Availability, Backend, ModelIO, RuntimeFailure, RuntimeUnavailable, VariantFile, SideBySide,
)

DEVICE = "CPU"
# variant precision -> OpenVINO inference precision on the CPU
INFERENCE_PRECISION = {"fp32": "f32", "int8": "f32", "fp16": "f16"}


_core = None
_core_lock = threading.Lock()


def shared_core():
    """The process's one OpenVINO Core, made at the first load and kept until the process ends.

    One Core, as OpenVINO advises, and here for a reason of our own: each Core's CPU plugin installs
    an alternate signal stack on the thread that creates it, remembering the one before, and puts
    that one back when it is destroyed. Two Cores destroyed in the order they were made (the
    backend choice loads several variants, then closes them) leave the thread on the first one's
    freed stack, and the next signal that thread handles (SIGTERM from systemd) kills the process
    with SIGSEGV. One Core installs one stack, which stays valid for as long as the process runs."""
    global _core
    with _core_lock:
        if _core is None:
            try:
                import openvino
            except ImportError as exc:
                raise RuntimeUnavailable(f"openvino is not installed ({exc}); install the 'openvino' extra") from None
            _core = openvino.Core()
        return _core


def compile_config(precision: str, threads: int) -> dict[str, object]:
    """Settings for a small shared box: one stream per thread, each stream one thread, no core
    pinning (the web server and capture threads share these cores).

    Why streams rather than one stream on every thread: a single study then runs on one core and
    leaves the others to the request and capture threads, so two clients do not preempt each
    other's model threads (on 2 cores, two clients' p99 was 3.9x their p50 with one 2-thread
    stream, 1.7-2.3x in repeated runs with one thread per model run); a large batch (a burst) is
    split across the streams and still uses every core, faster than one stream does (batch 16:
    about 4,400 against 3,600 images/s here)."""
    return {
        "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[precision],
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": threads,
        "ENABLE_CPU_PINNING": False,
    }


class OpenVinoBackend(Backend):
    name = "openvino"
    target = "cpu"

    @classmethod
    def availability(cls) -> Availability:
        """Whether the package is installed, without importing it: importing OpenVINO and starting
        its Core costs about 70 MB of resident memory, which a kiosk whose cached backend choice is
        another backend never pays. A missing CPU plugin shows when a variant is loaded."""
        if importlib.util.find_spec("openvino") is None:
            return Availability(False, "openvino is not installed (the 'openvino' extra)")
        try:
            version = metadata.version("openvino")
        except metadata.PackageNotFoundError:
            version = None
        return Availability(True, "CPU plugin, precision pinned to the variant's", version)

    def __init__(self, model: VariantFile, io: ModelIO, threads: int, settings: object | None = None):
        core = shared_core()
        self.io = io
        wanted = INFERENCE_PRECISION[model.precision]
        try:
            compiled = core.compile_model(str(model.path), DEVICE, compile_config(model.precision, threads))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise RuntimeFailure(f"openvino cannot load {model.path.name}: {exc}") from None
        got = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # an ov.Type: "f32", "bf16"
        if got != wanted:
            raise RuntimeFailure(
                f"openvino runs {model.path.name} at {got}, not the variant's {wanted}; this CPU cannot run "
                f"the {model.precision} variant on OpenVINO (use onnxruntime)"
            )
        self.inference_precision = got
        self._outputs = {}
        names = {n for port in compiled.outputs for n in port.get_names()}
        missing = [n for n in io.output_names if n not in names]
        if missing:
            raise RuntimeFailure(f"model lacks outputs {missing} (it has {sorted(names)})")
        inputs = {n for port in compiled.inputs for n in port.get_names()}
        if io.input_name not in inputs:
            raise RuntimeFailure(f"model has no input {io.input_name!r} (it has {sorted(inputs)})")
        self._outputs = {name: compiled.output(name) for name in io.output_names}
        streams = int(compiled.get_property("NUM_STREAMS"))
        self._requests = [compiled.create_infer_request() for _ in range(max(1, streams))]
        self._side_by_side = SideBySide(len(self._requests))
        self._compiled = compiled

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """One study on one stream; a large batch as one part per stream, side by side, each part a
        synchronous run on its own thread (device.runtime.base.SideBySide)."""
        if self._requests is None:
            raise RuntimeFailure("backend was closed")
        return dict(zip(self._outputs, self._side_by_side.run(batch, self._run_part)))

    def _run_part(self, i: int, part: np.ndarray) -> list[np.ndarray]:
        # share_outputs=False: the request's buffers are reused by the next run, results must not be.
        results = self._requests[i].infer({self.io.input_name: part}, share_inputs=True, share_outputs=False)
        return [results[port] for port in self._outputs.values()]

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        super().warm_up(self._side_by_side.warm_up_sizes(batch_sizes))

    def close(self) -> None:
        if self._requests is not None:
            self._side_by_side.close()
        self._requests = None
        self._outputs = {}  # its ports hold the compiled model too
        self._compiled = None
