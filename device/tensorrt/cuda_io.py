"""Pinned host and device buffers for named tensors, and one copy-in -> execute -> copy-out pass.

Every method must run on the CudaWorker thread that owns the context (see cuda_worker.py).
Buffers are sized once for the largest shape (the engine profile's max batch); a run uses the
leading part of each. Host buffers are page-locked: copies from pageable memory are not
asynchronous (CUDA stages them synchronously), which would serialise copy and compute.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from device.runtime.base import RuntimeFailure


@dataclass
class TensorBuffer:
    name: str
    host: np.ndarray  # page-locked, the largest shape
    device: object  # pycuda DeviceAllocation of host.nbytes

    @property
    def address(self) -> int:
        return int(self.device)


class StreamBuffers:
    def __init__(self, cuda, inputs: dict[str, tuple[tuple[int, ...], np.dtype]],
                 outputs: dict[str, tuple[tuple[int, ...], np.dtype]]):
        self._cuda = cuda
        self._events: list | None = None
        self.inputs: dict[str, TensorBuffer] = {}
        self.outputs: dict[str, TensorBuffer] = {}
        try:
            for table, specs in ((self.inputs, inputs), (self.outputs, outputs)):
                for name, (shape, dtype) in specs.items():
                    host = cuda.pagelocked_empty(shape, dtype)
                    table[name] = TensorBuffer(name, host, cuda.mem_alloc(max(host.nbytes, 1)))
            self.stream = cuda.Stream()
            self._events = None  # made on the first timed run
        except BaseException:
            self.free()
            raise

    def addresses(self) -> dict[str, int]:
        return {b.name: b.address for b in (*self.inputs.values(), *self.outputs.values())}

    def run(self, feeds: dict[str, np.ndarray], output_shapes: dict[str, tuple[int, ...]],
            execute: Callable[[int], None]) -> dict[str, np.ndarray]:
        """Copy ``feeds`` in, ``execute(stream_handle)``, copy ``output_shapes`` out, wait."""
        return self._run(feeds, output_shapes, execute, None)[0]

    def run_timed(self, feeds: dict[str, np.ndarray], output_shapes: dict[str, tuple[int, ...]],
                  execute: Callable[[int], None]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """``run``, with trtexec's split of it in ms: H2D, GPU compute and D2H from CUDA events
        around each part, enqueue the host time the execute call took to return."""
        if self._events is None:
            self._events = [self._cuda.Event() for _ in range(4)]
        return self._run(feeds, output_shapes, execute, self._events)

    def _run(self, feeds, output_shapes, execute, events) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        cuda, stream = self._cuda, self.stream
        mark = (lambda i: events[i].record(stream)) if events else (lambda i: None)
        mark(0)
        for name, value in feeds.items():
            buf = self.inputs[name]
            staged = _leading(buf.host, value.shape)
            np.copyto(staged, value, casting="no")
            cuda.memcpy_htod_async(buf.device, staged, stream)
        mark(1)
        t0 = time.perf_counter()
        execute(stream.handle)
        enqueue_ms = (time.perf_counter() - t0) * 1e3
        mark(2)
        results = {}
        for name, shape in output_shapes.items():
            buf = self.outputs[name]
            results[name] = _leading(buf.host, shape)
            cuda.memcpy_dtoh_async(results[name], buf.device, stream)
        mark(3)
        stream.synchronize()
        timings = {}
        if events:
            timings = {"h2d": events[1].time_since(events[0]), "compute": events[2].time_since(events[1]),
                       "d2h": events[3].time_since(events[2]), "enqueue": enqueue_ms}
        # The pinned buffers are reused by the next run: hand out plain copies.
        return {name: np.array(value) for name, value in results.items()}, timings

    def free(self) -> None:
        """Release device and pinned memory now, not at some later garbage collection. Idempotent."""
        for table in (self.inputs, self.outputs):
            for buf in table.values():
                buf.device.free()
                buf.host.base.free()
            table.clear()
        # Streams and events are destroyed with their last reference: drop them here, on the worker.
        self.stream = self._events = None


def _leading(host: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The first shape[0] rows of a max-batch buffer, which is contiguous memory at its start."""
    if tuple(shape[1:]) != host.shape[1:] or shape[0] > host.shape[0]:
        raise RuntimeFailure(f"shape {tuple(shape)} does not fit the buffer {host.shape}")
    return host[: shape[0]]
