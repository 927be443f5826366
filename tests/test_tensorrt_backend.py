"""The TensorRT backend's glue, against the fake tensorrt/pycuda contract (tests/fakes)."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import fakes
from device.runtime import registry
from device.runtime.base import RuntimeFailure
from device.runtime.onnxruntime_backend import OnnxRuntimeBackend
from models.bundle import sha256_file
from device.tensorrt.settings import EngineSettings
from tiny_bundle import IO, SIZE, make_tiny_bundle, variant_file


@pytest.fixture
def gpu(monkeypatch):
    fakes.install(monkeypatch)
    import pycuda.driver
    import tensorrt

    yield tensorrt, pycuda.driver
    fakes.uninstall()


@pytest.fixture
def bundle(tmp_path) -> Path:
    return make_tiny_bundle(tmp_path / "bundle")


@pytest.fixture
def settings(tmp_path) -> EngineSettings:
    return EngineSettings(cache_dir=tmp_path / "engines", max_batch=4)


def backend(bundle: Path, settings: EngineSettings):
    from device.tensorrt.backend import TensorRTBackend

    return TensorRTBackend(variant_file(bundle / "model.onnx"), IO, threads=1, settings=settings)


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, SIZE, SIZE)).astype(np.float32)


def test_unavailable_here_with_a_reason():
    status = registry.availability("tensorrt")
    assert not status.ok and "TensorRT unavailable" in status.reason


def test_available_with_the_fakes(gpu):
    status = registry.availability("tensorrt")
    assert status.ok and "Fake Orin" in status.reason and status.version == "10.3.0.30"


def test_outputs_match_onnxruntime(gpu, bundle, settings):
    trt = backend(bundle, settings)
    ort = OnnxRuntimeBackend(variant_file(bundle / "model.onnx"), IO, threads=1)
    for n in (1, 3, 4):
        x = batch(n, seed=n)
        got, want = trt.run(x), ort.run(x)
        assert set(got) == {"logits", "cam"}
        for name in want:
            assert got[name].shape == want[name].shape
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6)
    trt.close()
    ort.close()


def test_requests_from_a_thread_pool_all_run_on_the_worker(gpu, bundle, settings):
    trt = backend(bundle, settings)
    ort = OnnxRuntimeBackend(variant_file(bundle / "model.onnx"), IO, threads=1)
    inputs = [batch(1 + i % 4, seed=i) for i in range(32)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(trt.run, inputs))
    for x, got in zip(inputs, results):
        np.testing.assert_allclose(got["logits"], ort.run(x)["logits"], rtol=1e-6, atol=1e-6)
    assert trt._session.context.threads == {trt._worker.thread}
    trt.close()
    ort.close()


def test_the_fake_refuses_cuda_work_off_the_owning_thread(gpu, bundle, settings):
    """The check that makes the test above meaningful: misuse would fail, not pass silently."""
    trt = backend(bundle, settings)
    _, cuda = gpu
    with pytest.raises(cuda.LogicError, match="invalid device context"):
        trt._session.infer(batch(1))  # bypassing the worker, from this thread
    buffer = trt._session.buffers.inputs["image"]
    with pytest.raises(cuda.LogicError, match="out-of-thread context"):
        buffer.device.free()
    trt.close()


def test_close_releases_everything_and_is_idempotent(gpu, bundle, settings):
    _, cuda = gpu
    trt = backend(bundle, settings)
    worker = trt._worker.thread
    assert cuda.STATE.allocations and cuda.STATE.pinned_live
    trt.close()
    trt.close()
    assert not cuda.STATE.allocations and cuda.STATE.pinned_live == 0 and cuda.STATE.contexts_live == 0
    assert not worker.is_alive()
    with pytest.raises(RuntimeFailure, match="closed"):
        trt.run(batch(1))


def test_batch_and_input_are_validated(gpu, bundle, settings):
    trt = backend(bundle, settings)
    with pytest.raises(RuntimeFailure, match="batch of 5 is outside the engine's profile 1..4"):
        trt.run(batch(5))
    with pytest.raises(RuntimeFailure, match="float32"):
        trt.run(batch(1).astype(np.float64))
    with pytest.raises(RuntimeFailure, match=r"not \(N, 1, 32, 32\)"):
        trt.run(np.zeros((1, 3, SIZE, SIZE), np.float32))
    trt.close()


def test_engine_is_built_once_then_loaded_from_the_cache(gpu, bundle, settings):
    trt_mod, _ = gpu
    backend(bundle, settings).close()
    trt_mod.LAST_BUILD.clear()
    second = backend(bundle, settings)
    assert not trt_mod.LAST_BUILD  # loaded, not rebuilt
    assert len(list(settings.cache_dir.glob("*.engine"))) == 1
    sidecar = json.loads(second.engine_path.with_suffix(".json").read_text())
    assert sidecar["key"]["model_sha256"] == sha256_file(bundle / "model.onnx")
    assert sidecar["key"]["precision"] == "fp32" and sidecar["key"]["gpu_name"] == "Fake Orin (nvgpu)"
    second.close()


def test_tensorrt_upgrade_builds_a_new_engine(gpu, bundle, settings, monkeypatch):
    trt_mod, _ = gpu
    backend(bundle, settings).close()
    monkeypatch.setattr(trt_mod, "__version__", "10.3.0.31")
    backend(bundle, settings).close()
    assert len(list(settings.cache_dir.glob("*.engine"))) == 2


def test_an_engine_tensorrt_refuses_is_rebuilt_not_used(gpu, bundle, settings):
    first = backend(bundle, settings)
    path = first.engine_path
    first.close()
    record = json.loads(path.read_text())
    record["version"] = "10.0.0.1"  # a plan from another TensorRT, under a matching sidecar
    path.write_text(json.dumps(record))
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["engine_sha256"] = sha256_file(path)
    sidecar.write_text(json.dumps(meta))
    again = backend(bundle, settings)
    assert json.loads(path.read_text())["version"] == "10.3.0.30"
    again.run(batch(1))
    again.close()


def test_unwritable_cache_is_a_clear_failure(gpu, bundle, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(RuntimeFailure, match="not writable"):
        backend(bundle, EngineSettings(cache_dir=tmp_path / "file" / "engines"))


def test_a_model_tensorrt_cannot_parse_fails_clearly_and_leaks_nothing(gpu, bundle, settings, monkeypatch):
    trt_mod, cuda = gpu
    monkeypatch.setattr(trt_mod, "SUPPORTED_OPS", trt_mod.SUPPORTED_OPS - {"GlobalAveragePool"})
    with pytest.raises(RuntimeFailure, match="UNSUPPORTED_NODE.*GlobalAveragePool"):
        backend(bundle, settings)
    assert cuda.STATE.contexts_live == 0
    assert not [t for t in threading.enumerate() if t.name == "bedside-cuda"]


def _doctor_selftest(tmp_path, capsys) -> tuple[int, dict]:
    from device.cli import main

    make_tiny_bundle(tmp_path / "bundles" / "tiny")
    rc = main(["doctor", "--bundles", str(tmp_path / "bundles"), "--selftest", "--json"])
    return rc, json.loads(capsys.readouterr().out)["tensorrt_selftest"]


def test_doctor_selftest_checks_every_variant_against_ort(gpu, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BEDSIDE_ENGINE_CACHE", str(tmp_path / "engines"))
    rc, selftest = _doctor_selftest(tmp_path, capsys)
    assert rc == 0 and selftest["ok"] and not selftest["skipped"]
    [variant] = selftest["variants"]
    assert variant["precision"] == "fp32" and variant["max_prob_diff"] <= 1e-3 and variant["agreement"] == 1.0


def test_doctor_selftest_skips_without_tensorrt(tmp_path, capsys):
    rc, selftest = _doctor_selftest(tmp_path, capsys)
    assert rc == 0 and selftest["skipped"] and "TensorRT unavailable" in selftest["reason"]


def test_profile_reports_trtexecs_shape_from_cuda_events(gpu, bundle, settings):
    b = backend(bundle, settings)
    try:
        report = b.profile(batch(2), 20)
    finally:
        b.close()
    assert set(report) == {"h2d", "compute", "d2h", "latency", "enqueue"}
    for stats in report.values():
        assert list(stats) == ["min", "mean", "median", "p90", "p95", "p99", "max"]
        assert 0 <= stats["min"] <= stats["median"] <= stats["p90"] <= stats["p95"] <= stats["p99"] <= stats["max"]
    # The fake's "GPU" really computes (ORT on the engine's ONNX), so compute dominates the copies.
    assert report["compute"]["median"] > 0 and report["compute"]["median"] > report["h2d"]["median"]
    assert report["latency"]["min"] >= report["compute"]["min"]


def test_the_fake_refuses_event_times_before_the_host_waited(gpu):
    _, cuda = gpu
    from device.tensorrt.cuda_worker import CudaWorker

    worker = CudaWorker()
    try:
        def unsynchronised():
            stream = cuda.Stream()
            start, end = cuda.Event().record(stream), cuda.Event().record(stream)
            with pytest.raises(cuda.LogicError, match="CUDA_ERROR_NOT_READY"):
                end.time_since(start)
            stream.synchronize()
            return end.time_since(start)

        assert worker.call(unsynchronised) >= 0
    finally:
        worker.close()


def test_bench_prints_the_trtexec_report_for_tensorrt(gpu, bundle, tmp_path, monkeypatch, capsys):
    import argparse

    from device.commands import bench

    monkeypatch.setenv("BEDSIDE_ENGINE_CACHE", str(tmp_path / "engines"))
    monkeypatch.setattr(bench, "served_pair", lambda b, threads: ("onnxruntime", "model.onnx"))
    args = argparse.Namespace(bundle=bundle, json=True, batch=2, iterations=10, rounds=2, threads=1, no_torch=True,
                              pipeline=None)
    assert bench.run(args) == 0
    report = json.loads(capsys.readouterr().out)
    stages = report["trtexec"]
    assert [(s["backend"], s["batch"]) for s in stages] == [("tensorrt", 1), ("tensorrt", 2)]
    assert all(s["report"]["compute"]["median"] > 0 for s in stages)
    args.json = False
    assert bench.run(args) == 0
    text = capsys.readouterr().out
    assert "[tensorrt fp32 model.onnx, batch 1, 10 iterations] as trtexec reports it:" in text
    for title in ("H2D Latency", "GPU Compute Time", "D2H Latency", "Latency", "Enqueue Time"):
        assert f"  {title}: min = " in text and "percentile(99%) = " in text
