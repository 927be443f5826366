"""The runtime seam: what every inference backend provides.

One file per backend (frigate's detectors/plugins pattern); the registry in
``device.runtime.registry`` is the only place that knows their names. A backend whose
library is missing reports itself unavailable with the reason instead of crashing.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Literal, Protocol

import numpy as np

from models.bundle import Bundle, Manifest, Variant


class RuntimeUnavailable(Exception):
    """The requested backend cannot run on this machine; the message says why."""


class RuntimeFailure(Exception):
    """A backend loaded but failed to run a model."""


def import_runtime(module: str, how: str = ""):
    """A backend's library, or RuntimeUnavailable saying it is not installed (and ``how`` to get it)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RuntimeUnavailable(f"{module.split('.')[0]} is not installed ({exc}){how}") from None


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str
    version: str | None = None


@dataclass(frozen=True)
class ModelIO:
    """Name-based I/O: the input tensor and the outputs a bundle declares."""

    input_name: str
    output_names: tuple[str, ...]
    input_shape: tuple[int, int, int]  # (C, H, W); the batch axis is dynamic


def model_io(manifest: Manifest) -> ModelIO:
    """The I/O a bundle declares: its input tensor and every output it names (the logits, the CAM if
    it has one, each refusal check's score): a backend fetches them all in the one run."""
    m = manifest
    return ModelIO(m.input.tensor_name, m.output_names, (m.input.channels, m.input.height, m.input.width))


@dataclass(frozen=True)
class VariantFile:
    """The bundle variant a backend runs: its file, and what the manifest says of it (precision,
    targets), so that no backend has to read the manifest again to know what it was given; and the
    bundle itself, for a backend that checks a model it does not hold (``remote``)."""

    path: Path
    variant: Variant
    bundle: Bundle | None = None

    @classmethod
    def of(cls, bundle: Bundle, variant: Variant) -> "VariantFile":
        return cls(bundle.path_of(variant.file), variant, bundle)

    @property
    def precision(self) -> str:
        return self.variant.precision


def split_batch(batch: np.ndarray, parts: int) -> list[np.ndarray]:
    """A batch cut into at most ``parts`` contiguous pieces of near-equal size, in order."""
    size = -(-len(batch) // max(1, parts))
    return [np.ascontiguousarray(batch[i:i + size]) for i in range(0, len(batch), size)]


class SideBySide:
    """How the CPU backends run a batch: one single-threaded run per part, side by side, the first on
    the calling thread and each other on a worker of its own (``run_part(i, part)`` for part ``i``;
    the runtimes release the GIL while they run). One study runs on the calling thread alone, with
    no hand-over, and leaves the other cores to the request and capture threads; a burst still uses
    every core. A batch is cut only where each part gets MIN_PART studies: two clients' studies met
    in one batch run faster on one thread (0.85 ms for two here) than handed to a worker, whose
    result then waits for the GIL behind the other request thread (a batch of two took 4-8 ms at
    the 99th percentile that way)."""

    MIN_PART = 4

    def __init__(self, parts: int):
        self.parts = max(1, parts)
        self._pool = ThreadPoolExecutor(self.parts - 1, thread_name_prefix="model-part") if self.parts > 1 else None

    def run(self, batch: np.ndarray, run_part: Callable[[int, np.ndarray], list[np.ndarray]]) -> list[np.ndarray]:
        """The outputs of ``run_part`` (a list of arrays, batch axis first) over the whole batch, in order."""
        parts = split_batch(batch, min(self.parts, max(1, len(batch) // self.MIN_PART)))
        if len(parts) == 1:
            return run_part(0, parts[0])
        others = [self._pool.submit(run_part, i, part) for i, part in enumerate(parts[1:], start=1)]
        results = [run_part(0, parts[0])] + [f.result() for f in others]
        return [np.concatenate([r[k] for r in results]) for k in range(len(results[0]))]

    def warm_up_sizes(self, batch_sizes: tuple[int, ...]) -> tuple[int, ...]:
        """``batch_sizes`` and the smallest batch that is cut: every worker's first run (twice as
        slow as its next, its own allocations) is then paid at load, not by a study in a burst."""
        smallest_cut = self.parts * self.MIN_PART if self.parts > 1 else 1
        return tuple(sorted({*batch_sizes, smallest_cut}))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class Preparation(Protocol):
    """Slow one-time work a backend needs before it can load a variant (a TensorRT engine build),
    running in the background."""

    state: str  # "pending" | "building" | "ready" | "failed" | "cancelled"
    error: str | None

    def status(self) -> dict: ...
    def cancel(self) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...


class Backend(ABC):
    name: ClassVar[str]
    target: ClassVar[Literal["cpu", "gpu"]]  # which bundle variants it runs
    # Whether it runs the model on another machine (a central node): then `backend = "auto"` never
    # picks it (it is used only where it is named, with its URL), and a kiosk serving on it keeps its
    # own choice loaded to fall back on (device/runtime/fallback.py).
    remote: ClassVar[bool] = False
    io: ModelIO

    @classmethod
    @abstractmethod
    def availability(cls) -> Availability:
        """Whether this backend can run here, and if not, why (never raises)."""

    @abstractmethod
    def __init__(self, model: VariantFile, io: ModelIO, threads: int, settings: object | None = None):
        """Load the variant; ``settings`` are this backend's own (e.g. the TensorRT engine settings)."""

    @classmethod
    def start_preparation(cls, model: VariantFile, io: ModelIO, on_done: Callable[[Preparation], None],
                          settings: object | None = None) -> Preparation | None:
        """Start, in the background, what loading ``model`` would otherwise do slowly, so a device can
        keep serving on another backend meanwhile; ``on_done`` is called at the end. None: nothing to do."""
        return None

    @property
    def max_batch(self) -> int:
        """The largest batch this backend takes at once (a burst of studies is run in batches of it)."""
        return 16

    def served(self) -> tuple[str, str] | None:
        """(precision, sha256) of the variant file actually run, where that is not the file this
        backend was handed (a remote node runs the one it declares); None: the file it was handed."""
        return None

    @abstractmethod
    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run a float32 (N, C, H, W) batch; returns every declared output by name."""

    def close(self) -> None:
        """Release native resources; the backend is unusable afterwards."""

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """First runs allocate arenas and pick kernels: pay that at load, not on a patient's image."""
        c, h, w = self.io.input_shape
        for n in batch_sizes:
            self.run(np.zeros((n, c, h, w), dtype=np.float32))
