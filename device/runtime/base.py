"""The runtime seam: what every inference backend provides.

One file per backend (frigate's detectors/plugins pattern); the registry in
``device.runtime.registry`` is the only place that knows their names. A backend whose
library is missing reports itself unavailable with the reason instead of crashing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np


class RuntimeUnavailable(Exception):
    """The requested backend cannot run on this machine; the message says why."""


class RuntimeFailure(Exception):
    """A backend loaded but failed to run a model."""


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


class Backend(ABC):
    name: ClassVar[str]
    target: ClassVar[Literal["cpu", "gpu"]]  # which bundle variants it runs
    io: ModelIO

    @classmethod
    @abstractmethod
    def availability(cls) -> Availability:
        """Whether this backend can run here, and if not, why (never raises)."""

    @abstractmethod
    def __init__(self, model_path: Path, io: ModelIO, threads: int): ...

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
