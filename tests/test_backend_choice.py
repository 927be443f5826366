"""backend = "auto": every available CPU backend on every gated variant is self-tested, those that
pass are timed side by side, the fastest is served; the timing is cached per machine and library
versions, and a candidate that computes something else is never served, however fast."""

from __future__ import annotations

import json

import numpy as np
import pytest

from device.runtime import backend_choice
from device.runtime import registry
from device.runtime.backend_choice import CACHE_FOLDER, choose
from device.runtime.onnxruntime_backend import OnnxRuntimeBackend
from kiosk_support import SHIPPED

from models.bundle import load_bundle

SETTINGS = {name: None for name in registry.BACKENDS}


@pytest.fixture(scope="module")
def chest():
    return load_bundle(SHIPPED)


def _gated_cpu_pairs(bundle) -> set[tuple[str, str]]:
    return {(name, v.file) for name in registry.available("cpu") for v in bundle.manifest.variants
            if "cpu" in v.targets and (v.gate is None or v.gate["passed"])}


def test_auto_times_every_gated_cpu_candidate_and_serves_the_fastest(chest, tmp_path):
    choice, backend = choose(chest, "auto", "auto", 1, SETTINGS, tmp_path)
    try:
        measured = {(m.backend, m.file): m for m in choice.measured}
        assert set(measured) == _gated_cpu_pairs(chest) and len(measured) >= 2
        passing = [m for m in choice.measured if m.selftest_ok]
        assert passing and all(m.p50_ms > 0 and m.p99_ms >= m.p50_ms for m in passing)
        fastest = min(passing, key=lambda m: m.p50_ms)
        assert (choice.backend, choice.file) == (fastest.backend, fastest.file) and not choice.cached
        assert type(backend).name == choice.backend
        assert choice.as_json()["served"] == {"backend": choice.backend, "precision": choice.precision,
                                              "file": choice.file}
    finally:
        backend.close()


def test_the_timing_is_cached_and_redone_when_the_machine_or_libraries_change(chest, tmp_path, monkeypatch):
    first, backend = choose(chest, "auto", "auto", 1, SETTINGS, tmp_path)
    backend.close()
    cache = tmp_path / CACHE_FOLDER / f"{chest.manifest.id}.json"
    assert json.loads(cache.read_text())["choice"]["backend"] == first.backend

    def no_timing(*args):
        raise AssertionError("timed again although the cache holds this machine's figures")

    monkeypatch.setattr(backend_choice, "_time", no_timing)
    again, backend = choose(chest, "auto", "auto", 1, SETTINGS, tmp_path)
    backend.close()
    assert again.cached and (again.backend, again.file) == (first.backend, first.file)
    assert [m.p50_ms for m in again.measured] == [m.p50_ms for m in first.measured]

    monkeypatch.undo()
    versions = backend_choice.package_versions_of
    monkeypatch.setattr(backend_choice, "package_versions_of",
                        lambda names: {**versions(names), "onnxruntime": "99.0"})
    upgraded, backend = choose(chest, "auto", "auto", 1, SETTINGS, tmp_path)
    backend.close()
    assert not upgraded.cached


class Liar(OnnxRuntimeBackend):
    """Fast and wrong: returns the model's logits reversed (every urgent study would read routine)."""

    name = "liar"

    def run(self, batch):
        out = super().run(batch)
        return {**out, "logits": out["logits"][:, ::-1].copy()}


def test_a_candidate_failing_its_self_test_is_never_served(chest, tmp_path, monkeypatch):
    monkeypatch.setitem(registry.BACKENDS, "liar", f"{__name__}:Liar")
    def liar_fastest(entries, x, gap):
        for e in entries:
            e.measured.p50_ms = e.measured.p99_ms = 0.01 if e.measured.backend == "liar" else 1.0

    monkeypatch.setattr(backend_choice, "_time", liar_fastest)
    choice, backend = choose(chest, "auto", "auto", 1, {**SETTINGS, "liar": None}, tmp_path)
    backend.close()
    liars = [m for m in choice.measured if m.backend == "liar"]
    assert liars and not any(m.selftest_ok for m in liars)
    assert all(m.error.startswith("self-test failed") and m.p50_ms is None for m in liars)
    assert choice.backend != "liar"


def test_an_explicit_backend_and_precision_are_served_untimed(chest, tmp_path):
    choice, backend = choose(chest, "onnxruntime", "fp32", 1, SETTINGS, tmp_path)
    try:
        assert (choice.backend, choice.precision, choice.measured) == ("onnxruntime", "fp32", [])
        assert not (tmp_path / CACHE_FOLDER).exists()
        x = np.zeros((1, 1, 128, 128), np.float32)
        assert backend.run(x)["logits"].shape == (1, 2)
    finally:
        backend.close()


def test_an_explicit_backend_with_auto_precision_times_only_that_backends_variants(chest, tmp_path):
    choice, backend = choose(chest, "onnxruntime", "auto", 1, SETTINGS, tmp_path)
    backend.close()
    assert {m.backend for m in choice.measured} == {"onnxruntime"} and len(choice.measured) >= 2


def test_every_timed_run_follows_a_study_decode_and_the_method_keys_the_cache(chest, tmp_path, monkeypatch):
    """Candidates are timed as the served path runs them: a study's decode and preprocessing before
    each timed run (the gap's JPEG is a radiograph-sized one, decoded at the served scale); a cache
    written by another timing method is not trusted."""
    from device.runtime import study_gap

    gaps, runs = [], []
    real_gap = study_gap.between_studies(chest.manifest)

    def counted(manifest):
        def gap():
            gaps.append(len(runs))
            real_gap()
        return gap

    real_run = OnnxRuntimeBackend.run
    monkeypatch.setattr(OnnxRuntimeBackend, "run", lambda self, x: runs.append(1) or real_run(self, x))
    monkeypatch.setattr(backend_choice, "between_studies", counted)
    choose(chest, "onnxruntime", "auto", 1, SETTINGS, tmp_path)[1].close()
    timed = len(gaps)
    assert timed >= backend_choice.MIN_ROUNDS * backend_choice.CALLS_PER_ROUND * 2
    assert all(b - a == 1 for a, b in zip(gaps, gaps[1:]))  # exactly one run after each gap

    pairs = backend_choice.candidates(chest, "onnxruntime", "auto")
    key = backend_choice.cache_key(chest, pairs, 1)
    monkeypatch.setattr(backend_choice, "TIMING_METHOD", "batch 1, back to back")
    assert backend_choice.cache_key(chest, pairs, 1) != key
    img = study_gap.study_jpeg(False)
    assert 100_000 < len(img) < 400_000
