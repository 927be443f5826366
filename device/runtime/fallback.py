"""An exam served by a central node with the kiosk's own model behind it (``backend = "remote"``).

Studies go to the node while it answers. When a call fails or passes its deadline (the remote
backend's ``timeout_s``), the same batch is run at once by the kiosk's own model, so a study is
triaged once, within that deadline plus a local run, and never lost; later studies stay local while
a background probe asks the node again every ``retry_s`` seconds. The probe builds a fresh remote
backend, which checks the node as at start (version, declared variant, golden outputs), so a node
that comes back with another model is not used. A node that is down when the kiosk starts means
starting local, with the probe running. Every result names the backend that answered it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from device.decision.triage import TriageResult
from device.machine.clock import utc_iso
from device.runtime.base import RuntimeFailure, RuntimeUnavailable
from device.runtime.triager import Prepared, Triager

log = logging.getLogger("bedside.remote")

REMOTE, LOCAL = "remote", "local"


class RemoteWithFallback:
    """One exam's two models as one: ``triage_prepared`` and ``max_batch`` as a Triager's."""

    def __init__(self, connect: Callable[[], Triager], local: Triager, url: str, retry_s: float):
        """``connect()``: a Triager on the node (raises RuntimeFailure or RuntimeUnavailable when the
        node cannot be used); ``local``: the kiosk's own, already loaded (its owner closes it; this
        object closes what ``connect`` made)."""
        self._connect, self.local, self.url, self.retry_s = connect, local, url, retry_s
        self._lock = threading.Lock()
        self._remote: Triager | None = None
        self._stop = threading.Event()
        self._probe: threading.Thread | None = None
        self.since = utc_iso(time.time())
        self.reason: str | None = None
        self.fallbacks = 0
        try:
            self._remote = connect()
        except (RuntimeFailure, RuntimeUnavailable) as exc:
            self._fall_back(str(exc), at_start=True)

    @property
    def state(self) -> str:
        return REMOTE if self._remote is not None else LOCAL

    @property
    def answering(self) -> Triager:
        """The model that answers now: the node's, or the kiosk's own."""
        return self._remote or self.local

    @property
    def max_batch(self) -> int:
        return self.answering.max_batch

    def triage_prepared(self, prepared: list[Prepared]) -> list[TriageResult]:
        remote = self._remote
        if remote is not None:
            try:
                return remote.triage_prepared(prepared)
            except RuntimeFailure as exc:
                self._fall_back(str(exc), failed=remote)
        return self.local.triage_prepared(prepared)

    def status(self) -> dict:
        """For health, metrics and the screens: who answers now, since when, and why."""
        answering = self.answering.model
        return {"url": self.url, "state": self.state, "since": self.since, "reason": self.reason,
                "fallbacks": self.fallbacks, "backend": answering.backend, "precision": answering.precision}

    def _fall_back(self, reason: str, failed: Triager | None = None, at_start: bool = False) -> None:
        with self._lock:
            if failed is not None and self._remote is not failed:
                return  # another thread already fell back from this one
            self._remote, self.reason, self.since = None, reason, utc_iso(time.time())
            self.fallbacks += 0 if at_start else 1
            local = self.local.model
            log.warning("%s: the central node at %s cannot be used (%s); triaging on this kiosk (%s %s) and "
                        "asking the node again every %g s", local.id, self.url, reason, local.backend, local.precision,
                        self.retry_s)
            if self._probe is None or not self._probe.is_alive():
                self._probe = threading.Thread(target=self._probe_loop, name=f"remote-probe-{local.id}", daemon=True)
                self._probe.start()
        if failed is not None:
            failed.close()

    def _probe_loop(self) -> None:
        while not self._stop.wait(self.retry_s):
            try:
                remote = self._connect()
            except (RuntimeFailure, RuntimeUnavailable) as exc:
                self.reason = str(exc)
                continue
            with self._lock:
                if self._stop.is_set():
                    remote.close()
                    return
                self._remote, self.reason, self.since = remote, None, utc_iso(time.time())
            log.info("%s: the central node at %s answers again and passed its checks; triaging on it",
                     remote.model.id, self.url)
            return

    def close(self) -> None:
        self._stop.set()
        if self._probe is not None:
            self._probe.join()
        with self._lock:
            remote, self._remote = self._remote, None
        if remote is not None:
            remote.close()
