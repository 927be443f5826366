"""Engine building against the fake TensorRT: profile, strong typing, parser errors, progress, cancel."""

from __future__ import annotations

import enum
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fakes

from device.tensorrt.build import (
    BuildCancelled, BuildOptions, EngineBuildError, OnnxParseError, build_engine,
)
from device.tensorrt.library import TensorRTUnavailable
from device.tensorrt.progress import PhaseTracker
from tiny_bundle import SIZE, tiny_onnx

CHW = (1, SIZE, SIZE)


@pytest.fixture
def trt(monkeypatch):
    fakes.install(monkeypatch)
    import tensorrt

    yield tensorrt
    fakes.uninstall()


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "model.onnx"
    tiny_onnx(path)
    return path


def test_without_tensorrt_the_error_says_so(model, tmp_path):
    with pytest.raises(TensorRTUnavailable, match="TensorRT unavailable"):
        build_engine(model, "image", CHW, BuildOptions(), tmp_path / "e.engine")


def test_builds_strongly_typed_with_profile_and_workspace(trt, model, tmp_path):
    seen = []
    out = build_engine(model, "image", CHW, BuildOptions(max_batch=8, opt_batch=2, workspace_bytes=1 << 28),
                       tmp_path / "e.engine", progress=seen.append)
    assert out.is_file() and not list(tmp_path.glob(".*.tmp"))
    built = trt.LAST_BUILD
    assert built["strongly_typed"] and not built["flags"]  # precision lives in the ONNX, not in flags
    assert built["pools"] == {trt.MemoryPoolType.WORKSPACE: 1 << 28}
    engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(out.read_bytes())
    assert engine.get_tensor_profile_shape("image", 0) == [(1, *CHW), (2, *CHW), (8, *CHW)]
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert {p.phase for p in seen} == {"Building engine", "Tactic search"}


def test_every_parser_error_is_listed(trt, tmp_path):
    nodes = [helper.make_node("Erf", ["image"], ["a"], name="erf_1"),
             helper.make_node("Relu", ["a"], ["b"], name="relu"),
             helper.make_node("Celu", ["b"], ["logits"], name="celu_2")]
    graph = helper.make_graph(nodes, "bad", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", *CHW])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", *CHW])])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(OnnxParseError) as info:
        build_engine(path, "image", CHW, BuildOptions(), tmp_path / "e.engine")
    issues = info.value.issues
    assert [(i.code, i.node, i.node_name, i.operator) for i in issues] == [
        ("UNSUPPORTED_NODE", 0, "erf_1", "Erf"), ("UNSUPPORTED_NODE", 2, "celu_2", "Celu")]
    assert "2 error(s)" in str(info.value) and "celu_2" in str(info.value)
    assert not (tmp_path / "e.engine").exists()


def test_cancel_through_the_progress_monitor(trt, model, tmp_path):
    cancel = threading.Event()
    with pytest.raises(BuildCancelled, match="cancelled"):
        build_engine(model, "image", CHW, BuildOptions(), tmp_path / "e.engine",
                     progress=lambda p: cancel.set(), cancel=cancel)
    assert not (tmp_path / "e.engine").exists()


def test_timing_cache_is_reused_and_a_corrupt_one_replaced(trt, model, tmp_path):
    cache = tmp_path / "timing.cache"
    build_engine(model, "image", CHW, BuildOptions(), tmp_path / "a.engine", timing_cache=cache)
    assert cache.is_file() and trt.LAST_BUILD["timing_cache_hits"] == 0
    build_engine(model, "image", CHW, BuildOptions(), tmp_path / "b.engine", timing_cache=cache)
    assert trt.LAST_BUILD["timing_cache_hits"] > 0
    cache.write_bytes(b"garbage")
    build_engine(model, "image", CHW, BuildOptions(), tmp_path / "c.engine", timing_cache=cache)
    assert trt.LAST_BUILD["timing_cache_hits"] == 0 and cache.read_bytes() != b"garbage"


def test_dla_core_with_gpu_fallback(trt, model, tmp_path):
    trt.DLA_CORES = 2
    build_engine(model, "image", CHW, BuildOptions(dla_core=1), tmp_path / "e.engine")
    assert trt.LAST_BUILD["device"] == trt.DeviceType.DLA and trt.LAST_BUILD["dla_core"] == 1
    assert trt.BuilderFlag.GPU_FALLBACK in trt.LAST_BUILD["flags"]
    with pytest.raises(EngineBuildError, match="DLA core 2 was asked for; this device has 2"):
        build_engine(model, "image", CHW, BuildOptions(dla_core=2), tmp_path / "f.engine")


def test_older_tensorrt_gets_explicit_batch_and_precision_flags(trt, model, tmp_path, monkeypatch):
    class OldFlags(enum.IntEnum):
        EXPLICIT_BATCH = 0

    monkeypatch.setattr(trt, "NetworkDefinitionCreationFlag", OldFlags)
    build_engine(model, "image", CHW, BuildOptions(precision="fp16"), tmp_path / "e.engine")
    assert not trt.LAST_BUILD["strongly_typed"] and trt.BuilderFlag.FP16 in trt.LAST_BUILD["flags"]


def test_input_contract_mismatch_is_refused(trt, model, tmp_path):
    with pytest.raises(EngineBuildError, match="one input 'pixels'"):
        build_engine(model, "pixels", CHW, BuildOptions(), tmp_path / "e.engine")
    with pytest.raises(EngineBuildError, match="bundle declares"):
        build_engine(model, "image", (3, SIZE, SIZE), BuildOptions(), tmp_path / "e.engine")


def test_fixed_batch_model_is_refused(trt, tmp_path):
    w = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["image", "w"], ["logits"])], "fixed",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, *CHW])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, SIZE, SIZE])], [w])
    path = tmp_path / "fixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(EngineBuildError, match="fixed batch of 1"):
        build_engine(path, "image", CHW, BuildOptions(), tmp_path / "e.engine")


def test_options_are_validated():
    with pytest.raises(ValueError, match="opt_batch"):
        BuildOptions(max_batch=4, opt_batch=8)
    with pytest.raises(ValueError, match="precision"):
        BuildOptions(precision="bf16")


def test_nested_phases_give_a_monotonic_fraction():
    t = PhaseTracker()
    t.start("build", None, 2)
    t.start("tactics", "build", 4)
    t.step("tactics", 1)
    assert t.snapshot().fraction == pytest.approx(0.25)  # 2 of 4 sub-steps of the first half
    t.finish("tactics")
    t.step("build", 0)
    assert t.snapshot().fraction == pytest.approx(0.5)


def test_each_thread_takes_only_the_tensorrt_errors_logged_on_it():
    from concurrent.futures import ThreadPoolExecutor

    from device.tensorrt.library import _LogBuffer

    buffer = _LogBuffer()
    with ThreadPoolExecutor(1) as build_thread:  # one long-lived thread, like a background build
        build_thread.submit(buffer.add, "engine build failed").result()
        buffer.add("session failed")
        assert buffer.take() == ["session failed"]  # not the build's error
        assert buffer.take() == []
        assert build_thread.submit(buffer.take).result() == ["engine build failed"]
