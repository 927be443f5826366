"""Build progress: TensorRT's IProgressMonitor turned into plain snapshots, with cancellation.

TensorRT reports nested phases (``phase_start(name, parent, num_steps)``, ``step_complete(name,
step)``, ``phase_finish(name)``); returning False from ``step_complete`` cancels the build, after
which ``build_serialized_network`` returns None. Engine builds take minutes on a Jetson: without
this the appliance looks hung (onnxruntime#22244).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class BuildProgress:
    phase: str  # the innermost active phase
    step: int
    num_steps: int
    fraction: float  # 0..1 over the outermost phase, refined by the nested ones


ProgressCallback = Callable[[BuildProgress], None]


class PhaseTracker:
    """The bookkeeping behind the monitor, free of TensorRT so it can be reasoned about alone."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # name -> [parent, step, num_steps]; TensorRT names are unique among active phases.
        self._phases: dict[str, list] = {}
        self._order: list[str] = []
        self._high = 0.0  # a finished child drops back to its parent's coarser count: never go back

    def start(self, name: str, parent: str | None, num_steps: int) -> None:
        with self._lock:
            self._phases[name] = [parent, 0, max(int(num_steps), 1)]
            self._order.append(name)

    def step(self, name: str, step: int) -> None:
        with self._lock:
            if name in self._phases:
                self._phases[name][1] = int(step) + 1

    def finish(self, name: str) -> None:
        with self._lock:
            self._phases.pop(name, None)
            if name in self._order:
                self._order.remove(name)

    def snapshot(self) -> BuildProgress | None:
        with self._lock:
            if not self._order:
                return None
            inner = self._order[-1]
            _, step, num = self._phases[inner]
            self._high = max(self._high, self._fraction_of_root())
            return BuildProgress(inner, step, num, self._high)

    def _fraction_of_root(self) -> float:
        children = {p[0]: name for name, p in self._phases.items() if p[0] is not None}
        root = next(n for n in self._order if self._phases[n][0] not in self._phases)
        fraction, name, scale = 0.0, root, 1.0
        while name is not None:
            _, step, num = self._phases[name]
            # `step` steps are complete; a running child phase is the next one, partly done.
            fraction += scale * min(step, num) / num
            scale /= num
            name = children.get(name)
        return min(fraction, 1.0)


def make_monitor(trt, callback: ProgressCallback | None, cancel: threading.Event | None):
    """An IProgressMonitor instance reporting to ``callback`` and cancelling when ``cancel`` is set."""
    tracker = PhaseTracker()

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.cancelled = False

        def _report(self) -> None:
            snap = tracker.snapshot()
            if callback is not None and snap is not None:
                callback(snap)

        def phase_start(self, phase_name, parent_phase, num_steps) -> None:
            tracker.start(phase_name, parent_phase, num_steps)
            self._report()

        def step_complete(self, phase_name, step) -> bool:
            tracker.step(phase_name, step)
            self._report()
            if cancel is not None and cancel.is_set():
                self.cancelled = True
                return False
            return True

        def phase_finish(self, phase_name) -> None:
            tracker.finish(phase_name)
            self._report()

    return _Monitor()

