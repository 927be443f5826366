"""The OpenVINO backend: registered in the seam, name-based I/O, and its precision pinned to the
variant's (on a CPU with bf16 support OpenVINO would otherwise run an FP32 graph at bf16)."""

from __future__ import annotations

import numpy as np
import pytest

from device.machine.facts import cpu_features
from device.runtime import registry
from device.runtime.base import ModelIO, RuntimeFailure
from device.runtime.onnxruntime_backend import OnnxRuntimeBackend
from tiny_bundle import IO, SIZE, variant_file

pytest.importorskip("openvino")
from device.runtime.openvino_backend import OpenVinoBackend  # noqa: E402


def test_openvino_is_registered_and_available():
    status = registry.availability("openvino")
    assert status.ok, status.reason
    assert registry.backend_class("openvino") is OpenVinoBackend
    assert "openvino" in registry.available("cpu")


def test_fp32_runs_at_f32_and_matches_onnxruntime(model_path):
    x = np.random.default_rng(1).standard_normal((3, 1, SIZE, SIZE)).astype(np.float32)
    ov = OpenVinoBackend(variant_file(model_path), IO, threads=1)
    ort = OnnxRuntimeBackend(variant_file(model_path), IO, threads=1)
    try:
        assert ov.inference_precision == "f32"
        got, want = ov.run(x), ort.run(x)
        assert set(got) == {"logits", "cam"} and got["cam"].shape == (3, 2, SIZE, SIZE)
        # bf16 keeps 8 bits of mantissa: its logits would differ by ~1e-2, far beyond this.
        np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got["cam"], want["cam"], rtol=1e-4, atol=1e-4)
    finally:
        ov.close()
        ort.close()
    with pytest.raises(RuntimeFailure, match="closed"):
        ov.run(x)


def test_results_are_not_overwritten_by_the_next_run(model_path):
    ov = OpenVinoBackend(variant_file(model_path), IO, threads=1)
    rng = np.random.default_rng(2)
    first = ov.run(rng.standard_normal((1, 1, SIZE, SIZE)).astype(np.float32))
    kept = first["logits"].copy()
    ov.run(rng.standard_normal((1, 1, SIZE, SIZE)).astype(np.float32))
    np.testing.assert_array_equal(first["logits"], kept)
    ov.close()


def test_a_batch_is_split_across_one_stream_per_thread_and_matches_one_run(model_path):
    """Two threads make two streams of one thread each; a batch runs as one part per stream, side
    by side, and its results (odd sizes included, batches of one on a single stream) are those of
    ONNX Runtime on the whole batch, in order, and not overwritten by the next run."""
    ov = OpenVinoBackend(variant_file(model_path), IO, threads=2)
    ort = OnnxRuntimeBackend(variant_file(model_path), IO, threads=1)
    try:
        assert int(ov._compiled.get_property("NUM_STREAMS")) == 2 and len(ov._requests) == 2
        assert int(ov._compiled.get_property("INFERENCE_NUM_THREADS")) == 2
        rng = np.random.default_rng(3)
        for n in (1, 2, 8, 11):
            x = rng.standard_normal((n, 1, SIZE, SIZE)).astype(np.float32)
            got, want = ov.run(x), ort.run(x)
            kept = {k: v.copy() for k, v in got.items()}
            ov.run(rng.standard_normal((4, 1, SIZE, SIZE)).astype(np.float32))
            for name in ("logits", "cam"):
                assert got[name].shape == want[name].shape
                np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4)
                np.testing.assert_array_equal(got[name], kept[name])
    finally:
        ov.close()
        ort.close()


@pytest.mark.skipif(bool({"avx512_fp16", "amx_fp16"} & set(cpu_features()["features"])),
                    reason="this CPU computes in f16: OpenVINO takes the pin")
def test_fp16_variant_that_the_cpu_would_upcast_is_refused(model_path):
    with pytest.raises(RuntimeFailure, match="not the variant's f16.*use onnxruntime"):
        OpenVinoBackend(variant_file(model_path, "fp16"), IO, threads=1)


def test_declared_output_missing_and_corrupt_file_are_clear_failures(model_path, tmp_path):
    with pytest.raises(RuntimeFailure, match=r"lacks outputs \['heatmap'\]"):
        OpenVinoBackend(variant_file(model_path), ModelIO("image", ("logits", "heatmap"), (1, SIZE, SIZE)), 1)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(RuntimeFailure, match="cannot load bad.onnx"):
        OpenVinoBackend(variant_file(bad), IO, 1)


def test_availability_does_not_load_openvino():
    """A kiosk whose cached choice is another backend never pays OpenVINO's ~70 MB."""
    import subprocess
    import sys

    code = ("import sys; from device.runtime import registry; s = registry.availability('openvino'); "
            "print(s.ok, 'openvino' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False"]
