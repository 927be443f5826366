"""Run the real pycuda half of the TensorRT backend on a GPU, with a stand-in for TensorRT's execute.

What it proves (each a named check in the JSON summary):
- round_trip: pinned host -> device -> stand-in kernel / device copy -> pinned host, on one stream,
  bit-exact, for batch sizes 1..MAX, requested from a pool of 8 threads;
- worker_affinity: every CUDA call of those requests ran on the CudaWorker thread;
- off_thread_refused: pycuda itself refuses CUDA work from a pool thread without the context
  (the trap the worker design avoids);
- no_leaks: device memory free after 20 create/run/close cycles equals free memory before, and
  no worker threads are left behind.
Needs only pycuda, numpy and this repository's device/runtime/base.py and device/tensorrt/{cuda_worker,cuda_io}.py.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from device.tensorrt.cuda_io import StreamBuffers
from device.tensorrt.cuda_worker import CudaWorker
from device.tensorrt.library import detect_platform

MAX_BATCH = 16
CHW = (3, 256, 256)
KERNEL = """
__global__ void affine(float *y, const float *x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = 2.0f * x[i] + 1.0f;
}
"""


class StandInSession:
    """Built on the worker thread: buffers like the TensorRT session's, a kernel instead of an engine."""

    def __init__(self, cuda):
        from pycuda.compiler import SourceModule

        shape = (MAX_BATCH, *CHW)
        self.cuda = cuda
        self.buffers = StreamBuffers(cuda, {"x": (shape, np.float32)},
                                     {"copy": (shape, np.float32), "affine": (shape, np.float32)})
        self.module = SourceModule(KERNEL)
        self.affine = self.module.get_function("affine")
        self.threads: set[int] = set()

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        shapes = {"copy": x.shape, "affine": x.shape}
        return self.buffers.run({"x": x}, shapes, lambda handle: self._execute(x.size, handle))

    def _execute(self, n: int, handle: int) -> None:
        self.threads.add(threading.get_ident())
        b, stream = self.buffers, self.buffers.stream
        if stream.handle != handle:
            raise RuntimeError("execute got another stream's handle")
        self.cuda.memcpy_dtod_async(b.outputs["copy"].device, b.inputs["x"].device, n * 4, stream)
        self.affine(b.outputs["affine"].device, b.inputs["x"].device, np.int32(n),
                    block=(256, 1, 1), grid=((n + 255) // 256, 1), stream=stream)

    def release(self) -> None:
        self.buffers.free()
        self.module = self.affine = None


def round_trips(worker: CudaWorker, session: StandInSession, requests: int) -> dict:
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((int(rng.integers(1, MAX_BATCH + 1)), *CHW)).astype(np.float32)
              for _ in range(requests)]
    callers: set[int] = set()

    def one(x: np.ndarray) -> tuple[bool, float]:
        callers.add(threading.get_ident())
        t0 = time.perf_counter()
        out = worker.call(session.infer, x)
        ms = (time.perf_counter() - t0) * 1e3
        exact = (out["copy"].tobytes() == x.tobytes()
                 and out["affine"].tobytes() == (np.float32(2) * x + np.float32(1)).tobytes())
        return exact, ms

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, inputs))
    return {
        "requests": requests, "caller_threads": len(callers),
        "all_bit_exact": all(ok for ok, _ in results),
        "execute_threads": [t == worker.thread.ident for t in session.threads],
        "p50_ms": round(float(np.median([ms for _, ms in results])), 3),
    }


def off_thread_checks(cuda) -> dict:
    """Ask pycuda for CUDA work from a thread that does not own the context: it must refuse."""
    outcome = {}

    def alloc() -> None:
        cuda.mem_alloc(16)

    # Freeing the worker's memory from another thread is not tried: pycuda does not raise there, it
    # warns ("could not be cleaned up") and leaves the handle invalid (seen on an H200).
    for name, fn in (("mem_alloc_without_context", alloc),):
        with ThreadPoolExecutor(1) as pool:
            try:
                pool.submit(fn).result()
                outcome[name] = "ALLOWED"
            except cuda.Error as exc:
                outcome[name] = f"refused: {type(exc).__name__}: {exc}"
    return outcome


def leak_cycles(cycles: int) -> dict:
    threads_before = threading.active_count()
    observer = CudaWorker(name="observer")  # holds the primary context so only our buffers count
    cuda = observer.cuda
    free_before, total = observer.call(cuda.mem_get_info)
    for _ in range(cycles):
        worker = CudaWorker()
        session = worker.call(StandInSession, cuda)
        worker.call(session.infer, np.ones((MAX_BATCH, *CHW), np.float32))
        worker.call(session.release)
        worker.close()
    free_after, _ = observer.call(cuda.mem_get_info)
    observer.close()
    return {"cycles": cycles, "bytes_per_cycle": 3 * MAX_BATCH * int(np.prod(CHW)) * 4,
            "free_before": free_before, "free_after": free_after, "total": total,
            "leaked_bytes": free_before - free_after,
            "threads_before": threads_before, "threads_after": threading.active_count()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import pycuda
    import pycuda.driver as cuda

    cuda.init()
    platform = detect_platform("n/a (no TensorRT here)")
    summary: dict = {"pycuda": pycuda.VERSION_TEXT, "cuda_driver": cuda.get_driver_version(),
                     "cuda_build": cuda.get_version(), "platform": vars(platform)}
    print(json.dumps(summary))

    worker = CudaWorker()
    session = worker.call(StandInSession, cuda)
    summary["round_trip"] = round_trips(worker, session, requests=400)
    summary["off_thread"] = off_thread_checks(cuda)
    worker.call(session.release)
    worker.close()
    worker.close()  # idempotent
    summary["leaks"] = leak_cycles(cycles=20)

    rt, leaks = summary["round_trip"], summary["leaks"]
    checks = {
        "round_trip": rt["all_bit_exact"],
        "worker_affinity": bool(rt["execute_threads"]) and all(rt["execute_threads"]) and rt["caller_threads"] > 1,
        "off_thread_refused": all(v.startswith("refused") for v in summary["off_thread"].values()),
        # Allocation granularity may keep a little; a leak would be ~bytes_per_cycle per cycle.
        "no_leaks": abs(leaks["leaked_bytes"]) < 4 << 20 and leaks["threads_after"] <= leaks["threads_before"],
    }
    summary["checks"] = checks
    text = json.dumps(summary, indent=2)
    print(text)
    (args.out / "prove_pycuda.json").write_text(text + "\n")
    print("PASS" if all(checks.values()) else f"FAIL: {[k for k, v in checks.items() if not v]}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
