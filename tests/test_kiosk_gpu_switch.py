"""While a GPU engine builds the kiosk keeps serving on the CPU, then switches (fake TensorRT/pycuda)."""

from __future__ import annotations

import numpy as np

from device import intake
from device.core.exams import ExamRegistry
from device.core.settings import ModelSettings
from device.runtime import registry
from device.runtime.onnxruntime_backend import OnnxRuntimeBackend
from tiny_bundle import make_tiny_bundle


def _image() -> intake.DecodedImage:
    ramp = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    return intake.DecodedImage(pixels=ramp, source_format="png", original_size=(64, 64), bits_stored=8)


def test_serves_on_cpu_while_the_engine_builds_then_switches(gpu, gated_build, tmp_path):
    settings = ModelSettings(bundles=[make_tiny_bundle(tmp_path / "b")], inference_threads=1)
    exams = ExamRegistry.load(settings)
    try:
        exam = next(iter(exams))
        assert exam.gpu_build is not None
        first = exam.triage(_image(), "during build")
        assert registry.backend_class(first.model.backend).target == "cpu"
        assert exam.gpu_status()["state"] in ("pending", "building")
        gated_build.set()
        assert exam.gpu_build.wait(timeout=60)
        assert exam.gpu_status()["state"] == "ready" and exam.gpu_status()["fraction"] == 1.0
        after = exam.triage(_image(), "after build")
        assert after.model.backend == "tensorrt"
        assert after.model.sha256 == first.model.sha256  # the same fp32 graph, now as an engine
        np.testing.assert_allclose(after.model_output.probabilities["PNEUMONIA"],
                                   first.model_output.probabilities["PNEUMONIA"], atol=1e-5)
        assert exam.as_json()["gpu_engine"]["state"] == "ready"
    finally:
        exams.close()


def test_no_gpu_build_when_turned_off(gpu, tmp_path):
    settings = ModelSettings(bundles=[make_tiny_bundle(tmp_path / "b")], gpu="off", inference_threads=1)
    exams = ExamRegistry.load(settings)
    try:
        exam = next(iter(exams))
        assert exam.gpu_build is None and exam.as_json()["gpu_engine"] is None
        assert registry.backend_class(exam.triage(_image(), "x").model.backend).target == "cpu"
    finally:
        exams.close()


def test_no_gpu_build_where_tensorrt_is_missing(tmp_path):
    exams = ExamRegistry.load(ModelSettings(bundles=[make_tiny_bundle(tmp_path / "b")], inference_threads=1))
    try:
        assert next(iter(exams)).gpu_build is None
    finally:
        exams.close()


class CpuAsGpu(OnnxRuntimeBackend):
    """A GPU backend with nothing to prepare, known to the kiosk only through the registry."""

    name = "cpu-as-gpu"
    target = "gpu"


def test_any_registered_gpu_backend_is_used_and_one_without_preparation_loads_at_once(monkeypatch, tmp_path):
    monkeypatch.setitem(registry.BACKENDS, CpuAsGpu.name, f"{__name__}:CpuAsGpu")
    exams = ExamRegistry.load(ModelSettings(bundles=[make_tiny_bundle(tmp_path / "b")], inference_threads=1))
    try:
        exam = next(iter(exams))
        assert exam.gpu_build is None and exam.gpu_error is None
        assert exam.triage(_image(), "x").model.backend == "cpu-as-gpu"
    finally:
        exams.close()
