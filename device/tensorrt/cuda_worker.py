"""One thread that owns a CUDA context, and runs every CUDA call submitted from any thread.

pycuda contexts belong to the thread that created them: pycuda refuses to activate a context
from another thread ("cannot activate out-of-thread context"), and CUDA's current context is
per thread. The kiosk serves requests from a thread pool, so instead of juggling push/pop in
every request thread, all CUDA work (allocations, copies, TensorRT execution, frees) runs here,
and callers block on the result. This module needs pycuda only, not TensorRT, so the GPU proof
(benchmarks/gpu) exercises exactly this code.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable

from device.runtime.base import RuntimeFailure, RuntimeUnavailable


def import_cuda():
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise RuntimeUnavailable(f"pycuda cannot be imported ({exc}); install the 'jetson' extra") from None
    return cuda


class CudaWorker:
    """Owns the device's primary context on a dedicated thread.

    The primary context is the one the CUDA runtime (and so TensorRT) uses: engine, buffers and
    stream then live in one context. ``call`` runs a function there and returns its result or
    raises its exception (pycuda errors become RuntimeFailure). ``close`` runs the registered
    cleanups, pops and releases the context on this thread, and joins it; it is idempotent.
    """

    def __init__(self, device_index: int = 0, name: str = "bedside-cuda"):
        self.cuda = import_cuda()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._started: Future = Future()
        self._thread = threading.Thread(target=self._main, args=(device_index,), name=name, daemon=True)
        self._thread.start()
        self._started.result()  # re-raises a failed context creation here, in the caller

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if threading.current_thread() is self._thread:
            return fn(*args)
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeFailure("the CUDA worker was closed")
            self._queue.put((fn, args, future))
        return future.result()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _main(self, device_index: int) -> None:
        cuda = self.cuda
        try:
            cuda.init()
            context = cuda.Device(device_index).retain_primary_context()
            context.push()
        except BaseException as exc:  # whatever stops the context, the waiting caller must hear of it
            self._started.set_exception(RuntimeUnavailable(f"cannot open CUDA device {device_index}: {exc}"))
            return
        self._started.set_result(None)
        try:
            while (item := self._queue.get()) is not None:
                fn, args, future = item
                try:
                    future.set_result(fn(*args))
                except cuda.Error as exc:
                    future.set_exception(RuntimeFailure(f"CUDA error: {exc}"))
                except BaseException as exc:  # handed to the caller, who re-raises it
                    future.set_exception(exc)
        finally:
            cuda.Context.pop()
            context.detach()
