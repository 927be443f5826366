"""Which backend and variant an exam serves on: with ``backend = "auto"`` (and/or ``precision =
"auto"``) the kiosk loads every CPU backend on every variant the bundle's gate passed, self-tests
each on the bundle's golden inputs (device/runtime/variant_check.py), times those that pass side by side
(interleaved rounds, bounded by a time budget; each timed run after a study's decode, as served:
device/runtime/study_gap.py) and serves on the fastest. A variant that fails the
self-test on a backend is never served there, however fast.

The timing is cached in the data dir per bundle, keyed by the CPU model, the usable cores, the
thread count, the library versions and the variant files' hashes: a reboot of the same box does not
time again, a new library or CPU does. Even from the cache, the chosen pair is self-tested at every
start. An explicit backend and precision in the config are loaded as they are, untimed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from device.machine.clock import utc_iso
from device.machine.facts import cpu_features, package_versions_of, usable_cores
from device.runtime import registry
from device.runtime.base import Backend, RuntimeFailure, RuntimeUnavailable, VariantFile, model_io
from device.runtime.study_gap import between_studies
from device.runtime.variant_check import compare, golden_set, probabilities
from models.bundle import Bundle, Variant

log = logging.getLogger(__name__)

AUTO = "auto"
GPU_PREFERENCE = ("fp16", "int8", "fp32")
CACHE_FOLDER = "backend-choice"
# Per bundle, after loading: what start-up may spend on choosing. With a study's decode before each
# run a round of the chest bundle's 7 candidates takes about 0.2 s here, so 2-4 rounds: 16-32 runs
# each, plenty to tell its two INT8 engines apart (15% as served).
TIMING_BUDGET_S = 0.6
MIN_ROUNDS, MAX_ROUNDS, CALLS_PER_ROUND = 2, 4, 8
# How candidates are timed; part of the cache key, so a box timed the old way is timed again.
TIMING_METHOD = "batch 1, each run after a study's decode and preprocessing (device/runtime/study_gap.py)"
# Libraries whose version changes what is fastest (the cache is dropped when one changes).
SPEED_LIBRARIES = ("numpy", "onnxruntime", "openvino", "bedside")


@dataclass
class Measured:
    """One (backend, variant) candidate: its self-test and, if it passed, its batch-1 latency."""

    backend: str
    precision: str
    file: str
    selftest_ok: bool = False
    max_prob_diff: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    error: str | None = None


@dataclass
class Choice:
    """What an exam serves on and why: the candidates measured (empty when the config named both)."""

    requested_backend: str
    requested_precision: str
    backend: str
    precision: str
    file: str
    cached: bool
    measured: list[Measured] = field(default_factory=list)
    timed_at: str | None = None

    def as_json(self) -> dict:
        return {**asdict(self), "served": {"backend": self.backend, "precision": self.precision, "file": self.file}}


@dataclass
class _Loaded:
    measured: Measured
    backend: Backend | None
    variant: Variant


def candidates(bundle: Bundle, backend: str, precision: str) -> list[tuple[str, Variant]]:
    """(backend, variant) pairs the config allows: available backends, variants for their target
    whose optimization gate passed (FP32 is the reference and has none)."""
    names = registry.available("cpu") if backend == AUTO else [registry.require(backend).name]
    pairs = []
    for name in names:
        target = registry.backend_class(name).target
        variants = [v for v in bundle.manifest.variants if target in v.targets and _gate_passed(v)]
        pairs += [(name, v) for v in variants if v.precision in _allowed(precision, target, variants)]
    return pairs


def _allowed(precision: str, target: str, variants: list[Variant]) -> list[str]:
    """The precisions to consider; a GPU backend named in the config is not timed on every variant
    (an engine build each): it takes the first of fp16, int8, fp32 the bundle has."""
    have = {v.precision for v in variants}
    if precision == AUTO:
        return sorted(have) if target == "cpu" else [next(p for p in GPU_PREFERENCE if p in have)]
    return [precision] if precision in have else ["fp32"]


def _gate_passed(variant: Variant) -> bool:
    return variant.gate is None if variant.precision == "fp32" else bool(variant.gate and variant.gate.get("passed"))


def choose(bundle: Bundle, backend: str, precision: str, threads: int, settings: dict[str, object],
           cache_dir: Path | None) -> tuple[Choice, Backend]:
    """The choice and its loaded backend (the caller owns it). Raises RuntimeFailure when no
    candidate passes its self-test, RuntimeUnavailable for an explicit backend that cannot run."""
    pairs = candidates(bundle, backend, precision)
    if not pairs:
        raise RuntimeFailure(f"{bundle.manifest.id}: no variant passed its gate for backend {backend}")
    if len(pairs) == 1:
        name, variant = pairs[0]
        loaded = _load(bundle, name, variant, threads, settings.get(name))
        return Choice(backend, precision, name, variant.precision, variant.file, False), loaded
    key = cache_key(bundle, pairs, threads)
    cached = _read_cache(cache_dir, bundle, key)
    if cached is not None:
        hit = _load_cached(bundle, cached, pairs, threads, settings)
        if hit is not None:
            return hit
    return _time_all(bundle, backend, precision, pairs, threads, settings, cache_dir, key)


def _load(bundle: Bundle, name: str, variant: Variant, threads: int, options: object | None) -> Backend:
    return registry.require(name)(VariantFile.of(bundle, variant), model_io(bundle.manifest), threads, options)


def _load_cached(bundle: Bundle, cached: Choice, pairs: list[tuple[str, Variant]], threads: int,
                 settings: dict[str, object]) -> tuple[Choice, Backend] | None:
    """The cached choice, loaded and self-tested again; None (time again) when it fails now."""
    variant = next((v for n, v in pairs if n == cached.backend and v.file == cached.file), None)
    if variant is None:
        return None
    loaded = _try_load(bundle, cached.backend, variant, threads, settings)
    if loaded.backend is None or not loaded.measured.selftest_ok:
        log.warning("%s: the cached choice %s %s fails now (%s); timing again", bundle.manifest.id, cached.backend,
                    cached.precision, loaded.measured.error or "self-test")
        if loaded.backend is not None:
            loaded.backend.close()
        return None
    cached.cached = True
    return cached, loaded.backend


def _try_load(bundle: Bundle, name: str, variant: Variant, threads: int, settings: dict[str, object]) -> _Loaded:
    measured = Measured(name, variant.precision, variant.file)
    try:
        backend = _load(bundle, name, variant, threads, settings.get(name))
        backend.warm_up()
    except (RuntimeFailure, RuntimeUnavailable) as exc:
        measured.error = str(exc)
        return _Loaded(measured, None, variant)
    x, want = golden_set(bundle)
    got = probabilities(backend.run, bundle.manifest, x)
    if want is None:  # a bundle without golden outputs: judged against its FP32 variant on the same backend
        fp32 = bundle.manifest.variant("fp32")
        want = got if variant.file == fp32.file else _reference(bundle, name, fp32, threads, settings, x)
    check = compare(got, want, bundle.manifest, variant.precision)
    measured.selftest_ok, measured.max_prob_diff = check["ok"], round(check["max_prob_diff"], 6)
    if not check["ok"]:
        measured.error = (f"self-test failed: max |dp| {check['max_prob_diff']:.1e} (<= {check['tolerance']:.0e}), "
                          f"agreement {check['agreement']:.0%}")
    return _Loaded(measured, backend, variant)


def _reference(bundle: Bundle, name: str, fp32: Variant, threads: int, settings: dict[str, object],
               x: np.ndarray) -> np.ndarray:
    backend = _load(bundle, name, fp32, threads, settings.get(name))
    try:
        return probabilities(backend.run, bundle.manifest, x)
    finally:
        backend.close()


def _time_all(bundle: Bundle, backend: str, precision: str, pairs: list[tuple[str, Variant]], threads: int,
              settings: dict[str, object], cache_dir: Path | None, key: str) -> tuple[Choice, Backend]:
    loaded = [_try_load(bundle, name, variant, threads, settings) for name, variant in pairs]
    passing = [entry for entry in loaded if entry.backend is not None and entry.measured.selftest_ok]
    best = None
    try:
        if not passing:
            why = "; ".join(f"{e.measured.backend} {e.measured.precision}: {e.measured.error}" for e in loaded)
            raise RuntimeFailure(f"{bundle.manifest.id}: no backend and variant pass the self-test ({why})")
        x = golden_set(bundle)[0][:1]
        _time(passing, x, between_studies(bundle.manifest))
        best = min(passing, key=lambda e: e.measured.p50_ms)
    finally:
        for entry in loaded:
            if entry.backend is not None and entry is not best:
                entry.backend.close()
    choice = Choice(backend, precision, best.measured.backend, best.variant.precision, best.variant.file, False,
                    [e.measured for e in loaded], utc_iso(time.time()))
    _write_cache(cache_dir, bundle, key, choice)
    log.info("%s: serving on %s %s (p50 %.3f ms), the fastest of %d that passed", bundle.manifest.id, choice.backend,
             choice.precision, best.measured.p50_ms, len(passing))
    return choice, best.backend


def _time(entries: list[_Loaded], x: np.ndarray, gap: Callable[[], None]) -> None:
    """Batch-1 latency of each as the served path runs it (``gap``, a study's decode and
    preprocessing, before every timed run), in interleaved rounds (so load on the box hits all
    alike), stopping after the budget once MIN_ROUNDS are done."""
    samples: list[list[float]] = [[] for _ in entries]
    deadline = time.perf_counter() + TIMING_BUDGET_S
    for r in range(MAX_ROUNDS):
        if r >= MIN_ROUNDS and time.perf_counter() > deadline:
            break
        for entry, times in zip(entries, samples):
            run = entry.backend.run
            for _ in range(CALLS_PER_ROUND):
                gap()
                t0 = time.perf_counter()
                run(x)
                times.append((time.perf_counter() - t0) * 1e3)
    for entry, times in zip(entries, samples):
        entry.measured.p50_ms = round(float(np.percentile(times, 50)), 4)
        entry.measured.p99_ms = round(float(np.percentile(times, 99)), 4)


def cache_key(bundle: Bundle, pairs: list[tuple[str, Variant]], threads: int) -> str:
    cpu = cpu_features()
    facts = {
        "cpu": cpu["model"], "features": cpu["features"], "cores": usable_cores(), "threads": threads,
        "timing": TIMING_METHOD,
        "libraries": package_versions_of(SPEED_LIBRARIES),
        "candidates": [[name, v.file, bundle.sha256_of(v.file)] for name, v in pairs],
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def _cache_path(cache_dir: Path, bundle: Bundle) -> Path:
    return cache_dir / CACHE_FOLDER / f"{bundle.manifest.id}.json"


def _read_cache(cache_dir: Path | None, bundle: Bundle, key: str) -> Choice | None:
    if cache_dir is None:
        return None
    try:
        data = json.loads(_cache_path(cache_dir, bundle).read_text())
        if data.get("key") != key:
            return None
        choice = data["choice"]
        measured = [Measured(**m) for m in choice.pop("measured")]
        choice.pop("served", None)
        return Choice(**choice, measured=measured)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:  # a damaged cache only costs a new timing
        log.warning("%s: the backend choice cache is unreadable (%s); timing again", bundle.manifest.id, exc)
        return None


def _write_cache(cache_dir: Path | None, bundle: Bundle, key: str, choice: Choice) -> None:
    """Written to a temporary file, synced, then renamed: a power cut leaves the old file or the new."""
    if cache_dir is None:
        return
    path = _cache_path(cache_dir, bundle)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump({"key": key, "choice": choice.as_json()}, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a full or read-only disk: serve anyway, time again next start
        log.warning("%s: the backend choice could not be cached (%s)", bundle.manifest.id, exc)
