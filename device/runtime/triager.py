"""From an image to a triage result: check quality, preprocess, run the bundle's model on a
backend, check whether the model refuses the image, apply its policy (device/decision, in that order).

Everything model-specific (labels, input contract, threshold, quality limits) comes from the
bundle manifest; this module only knows the shape of the contract.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device import intake
from device.decision import quality, refusal
from device.decision.operating_point import OperatingPoint
from device.decision.triage import ModelOutput, ModelRef, TriageResult, decide, urgent_map
from device.machine.facts import usable_cores
from device.runtime import registry
from device.runtime.base import Backend, RuntimeFailure, VariantFile, model_io
from models import drift
from models.bundle import Bundle, Manifest
from models.metrics import softmax
from models.preprocess import to_model_input


@dataclass(frozen=True)
class Prepared:
    """An image checked and turned into the model's input: what waits for the model."""

    img: intake.DecodedImage
    source: str
    report: quality.QualityReport
    tensor: np.ndarray
    timings_ms: dict[str, float]
    operating_point: OperatingPoint
    image_statistics: dict[str, float]


@dataclass(frozen=True)
class ModelRun:
    """What one model run gave for a batch: every output the manifest names, as the device uses them."""

    probabilities: np.ndarray  # (N, labels) softmax
    cam: np.ndarray | None  # (N, h, w), the urgent group's map; None where the model gives none
    refusal_scores: np.ndarray | None  # (N, checks), the bundle's refusal checks; None where it has none


class Triager:
    """One loaded model of one bundle on one backend; create it once per process and reuse it."""

    def __init__(
        self,
        bundle: Bundle,
        backend: str = "onnxruntime",
        precision: str = "fp32",
        threads: int | None = None,
        backend_settings: object | None = None,
        loaded: Backend | None = None,
    ):
        """``backend_settings``: the backend's own settings (e.g. TensorRT's), None for its defaults.
        ``loaded``: that backend already loaded on that variant (by device.runtime.backend_choice); the
        Triager owns it from here."""
        self.bundle = bundle
        m = bundle.manifest
        backend_cls = registry.require(backend)
        variant = m.variant(precision, backend_cls.target)
        if loaded is None:
            loaded = backend_cls(VariantFile.of(bundle, variant), model_io(m), threads or usable_cores(),
                                 backend_settings)
        self._backend: Backend = loaded
        self._backend.warm_up()
        served_precision, sha256 = loaded.served() or (precision, bundle.sha256_of(variant.file))
        self.model = ModelRef(m.id, m.version, sha256, served_precision, backend)
        # Where nothing else is given, studies are decided at this point (a site's accepted one is
        # handed to prepare() by whoever serves the exam, or set here by the commands).
        self.operating_point = OperatingPoint.of_bundle(m, bundle.sha256)
        self._template = drift.template_of(m.monitoring)

    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    @property
    def reduced_decode(self) -> intake.ReducedDecode:
        """How small an image may be decoded for this model and its quality checks."""
        return intake.ReducedDecode.for_manifest(self.manifest)

    def preprocess(self, img: intake.DecodedImage) -> np.ndarray:
        return to_model_input(img.pixels, self.manifest.input)

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities (N, labels) and, if the model has one, the urgent group's activation map (N, h, w)."""
        run = self.run_model(batch)
        return run.probabilities, run.cam

    def run_model(self, batch: np.ndarray) -> ModelRun:
        """One run of the model on a batch, every output it declares read (RuntimeFailure when one is broken)."""
        m = self.manifest
        out = self._backend.run(batch)
        probs = softmax(out[m.outputs.logits].astype(np.float64))
        if not np.isfinite(probs).all():
            # NaN >= threshold is False: without this a broken input or runtime would read ROUTINE.
            raise RuntimeFailure(f"{self.model.backend} returned non-finite scores for {self.model.id}")
        cam = urgent_map(out[m.outputs.cam], m) if m.outputs.cam else None
        scores = None
        if m.refusal is not None:
            try:
                scores = refusal.scores(out, m.refusal, len(batch))
            except refusal.RefusalOutputError as exc:
                raise RuntimeFailure(f"{self.model.backend} on {self.model.id}: {exc}") from None
        return ModelRun(probs, cam, scores)

    @property
    def max_batch(self) -> int:
        return self._backend.max_batch

    def prepare(self, img: intake.DecodedImage, source: str, decode_ms: float = 0.0,
                operating_point: OperatingPoint | None = None) -> Prepared:
        """Quality checks, preprocessing and the input's image statistics (for the drift monitor):
        the per-image work before the model (any thread). ``operating_point``: the one to decide at
        (default: ``self.operating_point``)."""
        m = self.manifest
        t0 = time.perf_counter()
        report = quality.assess(img, m.quality, m.input.dicom)
        tensor = self.preprocess(img)
        t1 = time.perf_counter()
        statistics = drift.statistics_of(tensor, m.input, self._template)
        timings = {"decode": decode_ms, "preprocess": (t1 - t0) * 1e3,
                   "image_statistics": (time.perf_counter() - t1) * 1e3}
        return Prepared(img, source, report, tensor, timings, operating_point or self.operating_point, statistics)

    def triage_prepared(self, prepared: list[Prepared]) -> list[TriageResult]:
        """One model run over several prepared images (at most ``max_batch``), one result each; each
        result's inference time is the whole run's, what each of them waited for."""
        m = self.manifest
        t1 = time.perf_counter()
        run = self.run_model(np.stack([p.tensor for p in prepared]))
        inference_ms = (time.perf_counter() - t1) * 1e3
        probs, cam = run.probabilities, run.cam
        results = []
        for i, p in enumerate(prepared):
            checked = None if run.refusal_scores is None else refusal.assess(run.refusal_scores[i], m.refusal)
            label, category = decide(probs[i], m, p.report.ok and not (checked is not None and checked.refused),
                                     p.operating_point.threshold)
            output = ModelOutput(label=label, probabilities={name: float(v) for name, v in zip(m.labels, probs[i])},
                                 urgent_probability=float(m.urgent_probability(probs[i])))
            results.append(TriageResult.of(
                output, category, None if cam is None else cam[i],
                refusal=checked,
                source=p.source,
                threshold=p.operating_point.threshold,
                operating_point=p.operating_point,
                image_statistics=p.image_statistics,
                quality=p.report,
                model=self.model,
                timings_ms={**p.timings_ms, "inference": inference_ms},
                image_notes=p.img.notes,
                batch_size=len(prepared),
            ))
        return results

    def triage_image(self, img: intake.DecodedImage, source: str, decode_ms: float = 0.0) -> TriageResult:
        return self.triage_prepared([self.prepare(img, source, decode_ms)])[0]

    def triage_file(self, path: str | os.PathLike[str]) -> tuple[TriageResult, intake.DecodedImage]:
        """The result and the decoded image it was made from.

        Raises intake.IntakeError (naming the file and the reason) for input it cannot read.
        """
        t0 = time.perf_counter()
        img = intake.decode_file(path, reduce=self.reduced_decode)
        decode_ms = (time.perf_counter() - t0) * 1e3
        return self.triage_image(img, str(Path(path)), decode_ms), img

    def close(self) -> None:
        self._backend.close()
