"""The exams the kiosk offers: one per installed model bundle, each served by its single loaded
model (device/core/serving.py). Loading picks each bundle's backend and variant
(device/runtime/backend_choice.py); a bundle installed later replaces its exam in place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from device.core.errors import UnknownExam
from device.core.serving import Exam
from device.core.settings import ModelSettings
from device.machine.facts import usable_cores
from device.runtime import registry
from device.runtime.backend_choice import AUTO, choose
from device.runtime.fallback import RemoteWithFallback
from device.runtime.triager import Triager
from models.bundle import BundleError, Manifest, find_bundles, load_bundle, read_manifest

log = logging.getLogger("bedside.kiosk")


class ExamRegistry:
    def __init__(self, exams: list[Exam], cache_dir: Path | None = None,
                 shelved: Callable[[], list[Path]] | None = None):
        """``shelved``: where the bundles of exams that are not served lie (safe mode serves none);
        their manifests are read when a page first needs one, never at start (reading a bundle
        may be what failed)."""
        self._exams = {e.id: e for e in exams}
        self._cache_dir = cache_dir  # where backend choices are cached, for exams loaded later
        self._shelved = shelved
        self._shelved_manifests: dict[str, Manifest] | None = None

    @classmethod
    def load(cls, settings: ModelSettings, paths: list[Path] | None = None,
             cache_dir: Path | None = None) -> "ExamRegistry":
        """Load and warm up every bundle in ``paths`` (default: the configured ones), each on the
        backend device.runtime.backend_choice picks (its timings cached under ``cache_dir``). Raises
        BundleError when there is none to serve."""
        paths = paths if paths is not None else list(settings.bundles) or find_bundles(settings.bundles_dir)
        if not paths:
            raise BundleError(f"no model bundles in {settings.bundles_dir}: nothing to triage with")
        exams: list[Exam] = []
        try:
            for path in paths:
                exams.append(_open_exam(Path(path), settings, cache_dir))
            ids = [e.id for e in exams]
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise BundleError(f"bundle id {dupes[0]} is installed twice; keep one")
            for exam in exams:
                exam.warm_up()
        except BaseException:
            for exam in exams:
                exam.close()
            raise
        for exam in exams:
            _start_gpu(exam, settings)
        return cls(exams, cache_dir)

    def replace(self, path: Path, settings: ModelSettings) -> Exam:
        """Load the bundle at ``path`` and serve it in place of the exam of the same id (or as a new exam);
        the one it replaces is closed once its current inference ends. Raises what loading raises, and
        then nothing changed."""
        exam = _open_exam(path, settings, self._cache_dir)
        try:
            exam.warm_up()
        except BaseException:
            exam.close()
            raise
        _start_gpu(exam, settings)
        old = self._exams.get(exam.id)
        self._exams = {**self._exams, exam.id: exam}  # one assignment: readers see the old dict or the new
        if old is not None:
            old.retire()
        return exam

    def remove(self, exam_id: str) -> bool:
        """Stop serving an exam whose bundle is gone (a first install that was rolled back)."""
        old = self._exams.get(exam_id)
        if old is None:
            return False
        self._exams = {k: v for k, v in self._exams.items() if k != exam_id}
        old.retire()
        return True

    def __iter__(self):
        return iter(self._exams.values())

    def __len__(self) -> int:
        return len(self._exams)

    def ids(self) -> list[str]:
        return list(self._exams)

    def name_of(self, exam_id: str) -> str:
        """An exam's name in words (Exam.name); the id of one no longer installed."""
        exam = self._exams.get(exam_id)
        return exam.name if exam is not None else exam_id

    def choices(self) -> dict[str, dict]:
        """exam id -> its backend choice (device/runtime/backend_choice.py), for health and the metrics."""
        return {e.id: e.choice.as_json() for e in self._exams.values() if e.choice is not None}

    def resolve(self, exam_id: str | None) -> Exam:
        """The named exam; with no name, the only one installed."""
        if not exam_id:
            if len(self._exams) == 1:
                return next(iter(self._exams.values()))
            raise UnknownExam(f"choose an exam: {', '.join(self._exams)}", available=self.ids())
        try:
            return self._exams[exam_id]
        except KeyError:
            raise UnknownExam(
                f"unknown exam {exam_id!r}; available: {', '.join(self._exams)}", available=self.ids()
            ) from None

    def manifest(self, exam_id: str) -> Manifest | None:
        """What the exam's bundle says of itself (its words, labels and input): the served one's, else
        a shelved one's; None for an exam this appliance does not know."""
        exam = self._exams.get(exam_id)
        if exam is not None:
            return exam.bundle.manifest
        if self._shelved_manifests is None:
            self._shelved_manifests = _manifests(self._shelved() if self._shelved else [])
        return self._shelved_manifests.get(exam_id)

    def close(self) -> None:
        for exam in self._exams.values():
            exam.close()


def _manifests(paths: list[Path]) -> dict[str, Manifest]:
    found = {}
    for path in paths:
        try:
            manifest = read_manifest(path)
        except BundleError as exc:
            log.warning("%s: its manifest cannot be read (%s); its studies are shown without its words", path, exc)
            continue
        found.setdefault(manifest.id, manifest)
    return found


def _start_gpu(exam: Exam, settings: ModelSettings) -> None:
    """Where a GPU backend runs and the exam serves on the CPU, prepare its GPU variant meanwhile."""
    gpu = registry.available("gpu")
    serving_cpu = settings.backend == AUTO or registry.backend_class(settings.backend).target != "gpu"
    if settings.gpu == "auto" and gpu and serving_cpu:
        exam.start_gpu_build(gpu[0], settings)


def _open_exam(path: Path, settings: ModelSettings, cache_dir: Path | None) -> Exam:
    bundle = load_bundle(path)
    threads = settings.inference_threads or usable_cores()
    options = {name: settings.backend_settings(name) for name in registry.BACKENDS}
    remote = settings.backend != AUTO and registry.backend_class(settings.backend).remote
    # On a remote node, the kiosk's own choice is loaded too: it answers whenever the node does not.
    local_backend = AUTO if remote else settings.backend
    choice, loaded = choose(bundle, local_backend, settings.precision, threads, options, cache_dir)
    if settings.precision not in (AUTO, choice.precision):
        log.warning("%s has no %s variant for %s: serving %s", bundle.manifest.id, settings.precision,
                    choice.backend, choice.precision)
    try:
        triager = Triager(bundle, choice.backend, choice.precision, threads, options[choice.backend], loaded)
    except BaseException:
        loaded.close()
        raise
    if not remote:
        return Exam(triager, choice)
    node = options[settings.backend]
    served = RemoteWithFallback(lambda: Triager(bundle, settings.backend, "fp32", threads, node), triager, node.url,
                                settings.remote_retry_s)
    return Exam(triager, choice, remote=served)
