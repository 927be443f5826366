"""A fake ``pycuda.driver`` that enforces what real CUDA/pycuda enforce, and a little more.

What each check mirrors (pycuda 2026.1 src/cpp/cuda.hpp; CUDA Driver API reference):
- ``init()`` first: every cu* call before cuInit fails with CUDA_ERROR_NOT_INITIALIZED.
- A current context on the calling thread for allocations, streams and copies: CUDA's current
  context is per thread; without one cuMemAlloc etc. fail with CUDA_ERROR_INVALID_CONTEXT.
- Objects (allocations, pinned memory, streams) remember their context. Using or freeing one on a
  thread where that context is not current is allowed only on the context's creating thread
  (pycuda pushes it temporarily); elsewhere pycuda raises "cannot activate out-of-thread context"
  (scoped_context_activation). This is the thread-affinity trap of a kiosk's thread pool.
- ``Context.pop()`` on an empty stack: "cannot pop context from empty stack".
- Freed memory cannot be used or freed again (real: use-after-free is undefined, double free
  raises CUDA_ERROR_INVALID_VALUE/INVALID_HANDLE).
- Copies must fit their allocation (real: out-of-bounds copies fail or corrupt memory).
- Events time only what has completed: elapsed time between events not yet reached by the host
  fails with CUDA_ERROR_NOT_READY (a report that forgot to synchronize would read garbage).
- STRICTER than real: async copies require page-locked host memory. Real CUDA silently degrades a
  pageable copy to a synchronous one; our backend promises overlap, so the fake refuses it.
"""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np

DEVICE = {"name": "Fake Orin (nvgpu)", "compute_capability": (8, 7), "sms": 16, "count": 1,
          "total_bytes": 8 << 30}


class Error(Exception):
    pass


class LogicError(Error):
    pass


class _State:
    def __init__(self) -> None:
        self.initialized = False
        self.lock = threading.Lock()
        self.tls = threading.local()
        self.addresses = itertools.count(0x7F0000000000, 0x100000)
        self.handles = itertools.count(1)
        self.allocations: dict[int, "DeviceAllocation"] = {}
        self.streams: dict[int, "Stream"] = {}
        self.pinned_live = 0
        self.contexts_live = 0


STATE = _State()


def _stack() -> list:
    if not hasattr(STATE.tls, "stack"):
        STATE.tls.stack = []
    return STATE.tls.stack


def _require_init() -> None:
    if not STATE.initialized:
        raise LogicError("cuInit has not been called (CUDA_ERROR_NOT_INITIALIZED)")


def _current(what: str) -> "Context":
    _require_init()
    stack = _stack()
    if not stack:
        raise LogicError(f"{what} failed: invalid device context (no current context on this thread)")
    return stack[-1]


def _activate(obj, what: str) -> None:
    """pycuda's scoped_context_activation."""
    ctx = obj.context
    if not ctx.valid:
        raise LogicError(f"{what}: cannot activate dead context")
    stack = _stack()
    if stack and stack[-1] is ctx:
        return
    if threading.current_thread() is not ctx.thread:
        raise LogicError(f"{what}: cannot activate out-of-thread context")


def init(flags: int = 0) -> None:
    STATE.initialized = True


def mem_get_info() -> tuple[int, int]:
    _current("cuMemGetInfo")
    with STATE.lock:
        used = sum(a.nbytes for a in STATE.allocations.values())
    return DEVICE["total_bytes"] - used, DEVICE["total_bytes"]


class device_attribute:  # noqa: N801 (pycuda's name)
    MULTIPROCESSOR_COUNT = "MULTIPROCESSOR_COUNT"


class Device:
    @staticmethod
    def count() -> int:
        _require_init()
        return DEVICE["count"]

    def __init__(self, index: int):
        _require_init()
        if not 0 <= index < DEVICE["count"]:
            raise LogicError(f"cuDeviceGet failed: invalid device ordinal {index}")
        self.index = index

    def name(self) -> str:
        return DEVICE["name"]

    def compute_capability(self) -> tuple[int, int]:
        return DEVICE["compute_capability"]

    def get_attribute(self, attribute) -> int:
        if attribute != device_attribute.MULTIPROCESSOR_COUNT:
            raise LogicError(f"fake does not know attribute {attribute}")
        return DEVICE["sms"]

    def retain_primary_context(self) -> "Context":
        return Context(self)

    def make_context(self, flags: int = 0) -> "Context":
        ctx = Context(self)
        ctx.push()
        return ctx


class Context:
    def __init__(self, device: Device):
        self.device = device
        self.thread = threading.current_thread()  # pycuda records the creating thread
        self.valid = True
        with STATE.lock:
            STATE.contexts_live += 1

    def push(self) -> None:
        if not self.valid:
            raise LogicError("cannot push dead context")
        _stack().append(self)

    @staticmethod
    def pop() -> None:
        stack = _stack()
        if not stack:
            raise LogicError("cannot pop context from empty stack")
        stack.pop()

    @staticmethod
    def get_current() -> "Context | None":
        stack = _stack()
        return stack[-1] if stack else None

    def detach(self) -> None:
        if not self.valid:
            raise LogicError("context already detached")
        if self in _stack():
            raise LogicError("detach: context is still current on this thread (pop it first)")
        if threading.current_thread() is not self.thread:
            raise LogicError("detach: cannot activate out-of-thread context")
        self.valid = False
        with STATE.lock:
            STATE.contexts_live -= 1


class DeviceAllocation:
    def __init__(self, nbytes: int):
        if nbytes <= 0:
            raise LogicError("cuMemAlloc failed: invalid value (size 0)")
        self.context = _current("cuMemAlloc")
        self.nbytes = int(nbytes)
        self.memory = np.zeros(self.nbytes, np.uint8)
        self.freed = False
        self.address = next(STATE.addresses)
        with STATE.lock:
            STATE.allocations[self.address] = self

    def __int__(self) -> int:
        if self.freed:
            raise LogicError("cannot take the address of freed device memory")
        return self.address

    def free(self) -> None:
        _activate(self, "device_allocation::free")
        if self.freed:
            raise LogicError("device_allocation::free: already freed (CUDA_ERROR_INVALID_VALUE)")
        self.freed = True
        with STATE.lock:
            del STATE.allocations[self.address]


def mem_alloc(nbytes: int) -> DeviceAllocation:
    return DeviceAllocation(nbytes)


class HostAllocation:
    """Page-locked host memory (cuMemHostAlloc needs a current context)."""

    def __init__(self, nbytes: int):
        self.context = _current("cuMemHostAlloc")
        self.buffer = np.zeros(max(int(nbytes), 1), np.uint8)
        self.freed = False
        with STATE.lock:
            STATE.pinned_live += 1

    def free(self) -> None:
        _activate(self, "host_allocation::free")
        if self.freed:
            raise LogicError("host_allocation::free: already freed")
        self.freed = True
        with STATE.lock:
            STATE.pinned_live -= 1


class _PinnedArray(np.ndarray):
    """An ndarray on page-locked memory; like pycuda's, its ``base`` is the HostAllocation."""

    def __array_finalize__(self, obj) -> None:
        # Views share the pinned memory; copies (which own their data) are pageable.
        shares = np.ndarray.base.__get__(self) is not None
        self._allocation = getattr(obj, "_allocation", None) if shares else None

    @property
    def base(self):
        return self._allocation


def pagelocked_empty(shape, dtype, order: str = "C", mem_flags: int = 0) -> np.ndarray:
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    alloc = HostAllocation(count * dtype.itemsize)
    array = alloc.buffer[: count * dtype.itemsize].view(dtype).reshape(shape).view(_PinnedArray)
    array._allocation = alloc
    return array


class Stream:
    def __init__(self, flags: int = 0):
        self.context = _current("cuStreamCreate")
        self.handle = next(STATE.handles)
        self.recorded: list["Event"] = []  # events recorded on it, complete at the next synchronize
        with STATE.lock:
            STATE.streams[self.handle] = self

    def synchronize(self) -> None:
        _activate(self, "cuStreamSynchronize")
        for event in self.recorded:
            event.complete = True
        self.recorded.clear()


class event_flags:  # noqa: N801 (pycuda's name)
    DEFAULT = 0
    BLOCKING_SYNC = 1
    DISABLE_TIMING = 2
    INTERPROCESS = 4


class Event:
    """cuEvent*: recorded on a stream, complete once the work before it is done (here: once its
    stream or the event is synchronized, as a host can only know then); cuEventElapsedTime needs
    both events complete (else CUDA_ERROR_NOT_READY), recorded (else CUDA_ERROR_INVALID_HANDLE),
    made with timing enabled, and of one context. The fake's work runs synchronously, so the
    host time at record is when the stream reached the event."""

    def __init__(self, flags: int = 0):
        self.context = _current("cuEventCreate")
        self.flags = flags
        self.at: float | None = None
        self.complete = False

    def record(self, stream: Stream | None = None) -> "Event":
        ctx = _current("cuEventRecord")
        if self.context is not ctx or (stream is not None and stream.context is not ctx):
            raise LogicError("cuEventRecord: event or stream belongs to another context (CUDA_ERROR_INVALID_HANDLE)")
        self.at, self.complete = time.perf_counter(), False
        if stream is not None:
            stream.recorded.append(self)
        return self

    def synchronize(self) -> "Event":
        _activate(self, "cuEventSynchronize")
        if self.at is None:
            raise LogicError("cuEventSynchronize: the event was never recorded (CUDA_ERROR_INVALID_HANDLE)")
        self.complete = True
        return self

    def query(self) -> bool:
        return self.complete

    def time_since(self, earlier: "Event") -> float:
        """Milliseconds from ``earlier`` to this event."""
        ctx = _current("cuEventElapsedTime")
        for event in (self, earlier):
            if event.context is not ctx:
                raise LogicError("cuEventElapsedTime: event belongs to another context (CUDA_ERROR_INVALID_HANDLE)")
            if event.flags & event_flags.DISABLE_TIMING:
                raise LogicError("cuEventElapsedTime: event created with DISABLE_TIMING (CUDA_ERROR_INVALID_HANDLE)")
            if event.at is None:
                raise LogicError("cuEventElapsedTime: event was never recorded (CUDA_ERROR_INVALID_HANDLE)")
            if not event.complete:
                raise LogicError("cuEventElapsedTime: event has not completed (CUDA_ERROR_NOT_READY)")
        return (self.at - earlier.at) * 1e3


def _pinned(array: np.ndarray, what: str) -> None:
    alloc = getattr(array, "_allocation", None)
    if alloc is None:
        raise LogicError(f"{what}: host memory is not page-locked (the copy would be synchronous)")
    if alloc.freed:
        raise LogicError(f"{what}: page-locked host memory was freed")
    if not array.flags.c_contiguous:
        raise LogicError(f"{what}: host buffer is not contiguous")


def _device(target, what: str) -> DeviceAllocation:
    alloc = target if isinstance(target, DeviceAllocation) else STATE.allocations.get(int(target))
    if alloc is None or alloc.freed:
        raise LogicError(f"{what}: device memory is freed or unknown (CUDA_ERROR_INVALID_VALUE)")
    return alloc


def _same_context(ctx: Context, stream: Stream | None, alloc: DeviceAllocation, what: str) -> None:
    if alloc.context is not ctx or (stream is not None and stream.context is not ctx):
        raise LogicError(f"{what}: memory or stream belongs to another context (CUDA_ERROR_INVALID_CONTEXT)")


def memcpy_htod_async(dest, src: np.ndarray, stream: Stream | None = None) -> None:
    ctx = _current("cuMemcpyHtoDAsync")
    alloc = _device(dest, "cuMemcpyHtoDAsync")
    _same_context(ctx, stream, alloc, "cuMemcpyHtoDAsync")
    _pinned(src, "cuMemcpyHtoDAsync")
    if src.nbytes > alloc.nbytes:
        raise LogicError(f"cuMemcpyHtoDAsync: {src.nbytes} bytes into a {alloc.nbytes}-byte allocation")
    alloc.memory[: src.nbytes] = np.frombuffer(src.tobytes(), np.uint8)


def memcpy_dtoh_async(dest: np.ndarray, src, stream: Stream | None = None) -> None:
    ctx = _current("cuMemcpyDtoHAsync")
    alloc = _device(src, "cuMemcpyDtoHAsync")
    _same_context(ctx, stream, alloc, "cuMemcpyDtoHAsync")
    _pinned(dest, "cuMemcpyDtoHAsync")
    if dest.nbytes > alloc.nbytes:
        raise LogicError(f"cuMemcpyDtoHAsync: {dest.nbytes} bytes from a {alloc.nbytes}-byte allocation")
    dest.reshape(-1).view(np.uint8)[:] = alloc.memory[: dest.nbytes]


def device_memory(address: int, nbytes: int, what: str) -> np.ndarray:
    """For the fake TensorRT: the bytes at ``address``, checked like a kernel's access would be."""
    ctx = _current(what)
    alloc = _device(address, what)
    if alloc.context is not ctx:
        raise LogicError(f"{what}: address {address:#x} belongs to another context (illegal address)")
    if nbytes > alloc.nbytes:
        raise LogicError(f"{what}: needs {nbytes} bytes at {address:#x}, the allocation has {alloc.nbytes}")
    return alloc.memory[:nbytes]


def stream_for(handle: int, what: str) -> Stream:
    ctx = _current(what)
    stream = STATE.streams.get(int(handle))
    if stream is None:
        raise LogicError(f"{what}: unknown stream handle {handle}")
    if stream.context is not ctx:
        raise LogicError(f"{what}: stream belongs to another context")
    return stream
