"""Serving one exam's model: a single owner per loaded model, and studies batched as they arrive.

Inference is single-owner: one Triager per bundle per process, used by one thread at a time (a
lock per exam). Decoding and storing happen outside the lock, so requests overlap everywhere
except in the model itself. Live capture sources call the same ``Exam.triage``. Where a GPU runs,
the exam prepares its GPU variant in the background and switches to it when ready.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from device import intake
from device.core.settings import ModelSettings
from device.decision.operating_point import OperatingPoint
from device.decision.triage import ModelRef, TriageResult
from device.runtime import registry
from device.runtime.backend_choice import Choice
from device.runtime.base import Preparation, RuntimeFailure, RuntimeUnavailable, VariantFile, model_io
from device.runtime.fallback import RemoteWithFallback
from device.runtime.triager import Prepared, Triager
from device.runtime.variant_check import live_check
from models.bundle import Bundle

if TYPE_CHECKING:
    from device.core.site_points import SitePoints

log = logging.getLogger("bedside.kiosk")


class _Job:
    """One prepared study waiting for the model, and what became of it."""

    def __init__(self, prepared: Prepared):
        self.prepared = prepared
        self.done = False
        self._result: TriageResult | None = None
        self._error: BaseException | None = None

    def finish(self, result: TriageResult) -> None:
        self._result, self.done = result, True

    def fail(self, error: BaseException) -> None:
        self._error, self.done = error, True

    def outcome(self) -> TriageResult:
        if self._error is not None:
            raise self._error
        return self._result


@dataclass
class Exam:
    triager: Triager  # the kiosk's own model (with a central node: the one behind it)
    choice: Choice | None = None
    remote: RemoteWithFallback | None = None  # backend = "remote": the node, falling back to ``triager``
    gpu_build: Preparation | None = None
    gpu_error: str | None = None
    # Where the site's accepted operating point is looked up (device/core/site_points.py); None: the bundle's.
    site_points: "SitePoints | None" = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # the model's single owner
    _busy_since: float | None = field(default=None, repr=False)
    _waiting: list[_Job] = field(default_factory=list, repr=False)  # prepared studies, oldest first
    _waiting_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def id(self) -> str:
        return self.bundle.manifest.id

    @property
    def bundle(self) -> Bundle:
        return self.triager.bundle

    @property
    def name(self) -> str:
        """The exam in a few words, for lists and buttons: its title without the note in brackets
        ('Pediatric chest X-ray pneumonia triage (research)' -> 'Pediatric chest X-ray pneumonia triage')."""
        return self.bundle.manifest.title.split(" (")[0].strip() or self.id

    @property
    def reduced_decode(self) -> intake.ReducedDecode:
        """How small an upload may be decoded for this exam's model and quality checks."""
        return self.triager.reduced_decode

    def triage(self, img: intake.DecodedImage, source: str, decode_ms: float = 0.0) -> TriageResult:
        """Quality checks and preprocessing on the calling thread, then the model: whoever holds the
        model runs every study waiting for it as one batch (a DICOM burst, a USB import), so a study
        that arrives while the model is busy costs a batch slot, not a whole turn. One study alone is
        run at once, with no waiting for company."""
        job = _Job(self.triager.prepare(img, source, decode_ms, self.operating_point()))
        with self._waiting_lock:
            self._waiting.append(job)
        with self._lock:
            while not job.done:
                self._busy_since = time.monotonic()
                try:
                    self._run_waiting()
                finally:
                    self._busy_since = None
        return job.outcome()

    def operating_point(self) -> OperatingPoint:
        """The point this exam's studies are decided at now: the site's accepted one for its bundle, else the bundle's."""
        if self.site_points is None:
            return self.triager.operating_point
        return self.site_points.operating_point(self.id, self.bundle)

    def busy_s(self) -> float:
        """How long the model has been busy with its current batch (0 when idle): a model stuck in
        one call (a hung runtime, a wedged GPU) shows here, and health then answers 503."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    def _run_waiting(self) -> None:
        """With the model held: run the oldest waiting studies, at most a batch of them (on the
        central node while it answers, where there is one)."""
        triager = self.remote or self.triager
        with self._waiting_lock:
            batch, self._waiting[:] = self._waiting[:triager.max_batch], self._waiting[triager.max_batch:]
        try:
            results = triager.triage_prepared([j.prepared for j in batch])
        except BaseException as exc:  # every study of the batch gets the failure; their threads re-raise it
            for j in batch:
                j.fail(exc)
            return
        for j, r in zip(batch, results):
            j.finish(r)

    def start_gpu_build(self, backend: str, settings: ModelSettings) -> None:
        """Prepare the GPU variant in the background (a TensorRT engine build takes minutes on a
        Jetson) while this exam keeps serving on its CPU backend; switch to the GPU when it is ready.
        Progress shows in health."""
        m = self.bundle.manifest
        gpu = [v.precision for v in m.variants if "gpu" in v.targets]
        precision = next((p for p in (settings.precision, "fp16", "int8", "fp32") if p in gpu), None)
        if precision is None:
            self.gpu_error = "the bundle has no GPU variant"
            return
        model = VariantFile.of(self.bundle, m.variant(precision, "gpu"))
        options = settings.backend_settings(backend)
        try:
            self.gpu_build = registry.backend_class(backend).start_preparation(
                model, model_io(m), lambda job: self._prepared(job, backend, precision, settings), options
            )
        except (RuntimeFailure, RuntimeUnavailable) as exc:
            self.gpu_error = str(exc)
            log.warning("%s: no GPU preparation: %s", self.id, exc)
            return
        if self.gpu_build is None:  # the backend has nothing to prepare: load it now
            self._switch_to_gpu(backend, precision, settings)

    def _prepared(self, job: Preparation, backend: str, precision: str, settings: ModelSettings) -> None:
        if job.state != "ready":
            self.gpu_error = job.error or job.state
            log.warning("%s: GPU preparation %s; staying on %s", self.id, job.state, self.triager.model.backend)
            return
        self._switch_to_gpu(backend, precision, settings)

    def _switch_to_gpu(self, backend: str, precision: str, settings: ModelSettings) -> None:
        try:
            gpu = Triager(self.bundle, backend, precision, settings.inference_threads, settings.backend_settings(backend))
        except (RuntimeFailure, RuntimeUnavailable) as exc:
            self.gpu_error = str(exc)
            log.warning("%s: GPU variant prepared but cannot be loaded: %s", self.id, exc)
            return
        with self._lock:
            cpu, self.triager = self.triager, gpu
        cpu.close()
        log.info("%s: now triaging on %s %s", self.id, backend, precision)

    def gpu_status(self) -> dict | None:
        if self.gpu_build is None and self.gpu_error is None:
            return None
        status = self.gpu_build.status() if self.gpu_build else {"state": "unavailable"}
        return {**status, "error": self.gpu_error or status.get("error")}

    def remote_status(self) -> dict | None:
        """Who answers this exam's studies when a central node is set: the node, or this kiosk and why."""
        return None if self.remote is None else self.remote.status()

    @property
    def model(self) -> ModelRef:
        """The model that answers studies now (with a central node: the node's, or the kiosk's own)."""
        return (self.remote.answering if self.remote else self.triager).model

    def close(self) -> None:
        if self.gpu_build is not None:
            self.gpu_build.cancel()
            self.gpu_build.wait()
        if self.remote is not None:
            self.remote.close()
        self.triager.close()

    def selftest(self) -> dict:
        """The golden inputs through the model that serves studies (device.runtime.variant_check.live_check)."""
        with self._lock:
            return live_check(self.triager)

    def retire(self) -> None:
        """Close an exam that was replaced while requests may still hold it: after the inference running
        now (the lock), never under a GPU switch (which takes the lock itself)."""
        if self.gpu_build is not None:
            self.gpu_build.cancel()
            self.gpu_build.wait()
        with self._lock:
            if self.remote is not None:
                self.remote.close()
            self.triager.close()

    def warm_up(self) -> None:
        """One full pass (quality, preprocessing, model) on a synthetic image, so the first study is not slow."""
        m = self.bundle.manifest
        side = max(m.input.height, m.input.width, m.quality.min_side_px) * 2
        ramp = np.linspace(0, 255, side * side, dtype=np.float32).reshape(side, side).astype(np.uint8)
        img = intake.DecodedImage(pixels=ramp, source_format="png", original_size=(side, side), bits_stored=8)
        self.triage(img, "warm-up")

    def as_json(self) -> dict:
        m = self.bundle.manifest
        return {
            "id": m.id,
            "title": m.title,
            "name": self.name,
            "version": m.version,
            "intended_use": m.intended_use,
            "research_only": m.research_only,
            "disclaimer": m.disclaimer,
            "labels": list(m.labels),
            "urgent_labels": list(m.policy.urgent_labels),
            "finding": m.finding,
            "threshold": self.operating_point().threshold,
            "operating_point": self.operating_point().as_json(),
            "model": self.model.as_dict(),
            "backend_choice": None if self.choice is None else self.choice.as_json(),
            "remote": self.remote_status(),
            "gpu_engine": self.gpu_status(),
        }
