"""Bursts: studies that wait for an exam's model while it is busy are run through it as one batch,
each with its own result (the same as alone), and a failure of the batch reaches every one of them."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from device import intake
from device.core.exams import ExamRegistry
from device.core.settings import ModelSettings
from device.runtime.base import RuntimeFailure
from tiny_bundle import make_tiny_bundle


@pytest.fixture
def exam(tmp_path):
    exams = ExamRegistry.load(ModelSettings(bundles=[make_tiny_bundle(tmp_path / "b")], inference_threads=1,
                                            backend="onnxruntime", precision="fp32"))
    yield next(iter(exams))
    exams.close()


def _image(seed: int) -> intake.DecodedImage:
    rng = np.random.default_rng(seed)
    ramp = np.tile(np.linspace(0, 255, 96), (96, 1)) * rng.uniform(0.5, 1.0) + rng.normal(0, 8, (96, 96))
    return intake.DecodedImage(pixels=np.clip(ramp, 0, 255).astype(np.uint8), source_format="png",
                               original_size=(96, 96), bits_stored=8)


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.005)


def _burst(exam, n: int) -> list:
    """n studies arriving while the model is busy (the test holds it), then released at once."""
    outcomes: list = [None] * n

    def one(i):
        try:
            outcomes[i] = exam.triage(_image(i), f"study-{i}")
        except Exception as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    with exam._lock:
        for t in threads:
            t.start()
        _wait_for(lambda: len(exam._waiting) == n)
    for t in threads:
        t.join(60)
    return outcomes


def test_studies_waiting_for_the_model_run_as_one_batch_with_their_own_results(exam):
    alone = [exam.triage(_image(i), f"study-{i}") for i in range(5)]
    assert {r.batch_size for r in alone} == {1}
    burst = _burst(exam, 5)
    assert [r.batch_size for r in burst] == [5] * 5
    for a, b in zip(alone, burst):
        assert b.source == a.source and b.triage == a.triage
        said_alone, said_in_burst = a.model_output.probabilities, b.model_output.probabilities
        assert said_in_burst["PNEUMONIA"] == pytest.approx(said_alone["PNEUMONIA"], abs=1e-5)
        np.testing.assert_allclose(b.cam, a.cam, atol=1e-5)


def test_a_burst_beyond_the_backends_largest_batch_is_split(exam, monkeypatch):
    monkeypatch.setattr(type(exam.triager._backend), "max_batch", property(lambda self: 3))
    sizes = sorted(r.batch_size for r in _burst(exam, 7))
    assert sizes == [1, 3, 3, 3, 3, 3, 3]


def test_a_failing_model_run_fails_every_study_of_its_batch(exam, monkeypatch):
    def broken(prepared):
        raise RuntimeFailure("the backend returned non-finite scores")

    monkeypatch.setattr(exam.triager, "triage_prepared", broken)
    outcomes = _burst(exam, 4)
    assert all(isinstance(o, RuntimeFailure) for o in outcomes)
    assert not exam._waiting
