"""The runtime seam: explicit registry, honest availability, name-based I/O, warm-up at load."""

from __future__ import annotations

import numpy as np
import pytest

from device.runtime import registry
from device.runtime.base import ModelIO, RuntimeFailure, RuntimeUnavailable
from device.runtime.onnxruntime_backend import OnnxRuntimeBackend
from tiny_bundle import IO, SIZE, variant_file


def test_onnxruntime_is_available_here():
    status = registry.availability("onnxruntime")
    assert status.ok, status.reason
    assert status.version


def test_unknown_backend_is_unavailable_with_a_reason():
    status = registry.availability("nonesuch")
    assert not status.ok and "unknown backend" in status.reason
    with pytest.raises(RuntimeUnavailable, match="unknown backend 'nonesuch'"):
        registry.require("nonesuch")


def test_backend_whose_module_is_missing_reports_unavailable(monkeypatch):
    monkeypatch.setitem(registry.BACKENDS, "ghost", "device.runtime.no_such_module:Ghost")
    status = registry.all_availability()["ghost"]
    assert not status.ok and "cannot be imported" in status.reason


def test_outputs_by_name_and_dynamic_batch(model_path):
    backend = OnnxRuntimeBackend(variant_file(model_path), IO, threads=1)
    backend.warm_up((1, 3))
    out = backend.run(np.random.default_rng(0).standard_normal((3, 1, SIZE, SIZE)).astype(np.float32))
    assert set(out) == {"logits", "cam"}
    assert out["logits"].shape == (3, 2) and out["cam"].shape == (3, 2, SIZE, SIZE)
    # GAP of the class maps is the logits: the CAM really is the model's evidence.
    np.testing.assert_allclose(out["cam"].mean(axis=(2, 3)), out["logits"], rtol=1e-5, atol=1e-5)
    backend.close()
    with pytest.raises(RuntimeFailure, match="closed"):
        backend.run(np.zeros((1, 1, SIZE, SIZE), np.float32))


def test_a_batch_runs_as_one_single_threaded_part_per_thread_in_order(model_path):
    """threads=2: one study, and a batch too small to share, run on the calling thread alone; a
    larger batch is cut in two parts, the second run on the backend's own worker thread, and the
    results are those of one run, in order."""
    import threading

    def workers() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("model-part")]

    rng = np.random.default_rng(4)
    one = OnnxRuntimeBackend(variant_file(model_path), IO, threads=1)
    two = OnnxRuntimeBackend(variant_file(model_path), IO, threads=2)
    try:
        for n in (1, 2, 7):
            two.run(rng.standard_normal((n, 1, SIZE, SIZE)).astype(np.float32))
        assert workers() == []  # no hand-over below two parts of SideBySide.MIN_PART studies
        for n in (8, 11):
            x = rng.standard_normal((n, 1, SIZE, SIZE)).astype(np.float32)
            got, want = two.run(x), one.run(x)
            for name in ("logits", "cam"):
                np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
        assert len(workers()) == 1
    finally:
        one.close()
        two.close()
    assert workers() == []


def test_declared_output_missing_from_model_is_refused(model_path):
    with pytest.raises(RuntimeFailure, match=r"lacks outputs \['heatmap'\]"):
        OnnxRuntimeBackend(variant_file(model_path), ModelIO("image", ("logits", "heatmap"), (1, SIZE, SIZE)), 1)


def test_corrupt_model_file_is_a_clear_failure(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(RuntimeFailure, match="cannot load model.onnx"):
        OnnxRuntimeBackend(variant_file(bad), IO, 1)
