"""The engine cache: exact keys, rebuild on any mismatch, one build for many callers, loud when unwritable."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from device.tensorrt.build import BuildCancelled
from device.tensorrt.engine_cache import BuildJob, CacheNotWritable, EngineCache, EngineKey
from device.tensorrt.library import Platform
from device.tensorrt.progress import BuildProgress
from device.tensorrt.settings import EngineSettings

PLATFORM = Platform("10.3.0.30", "Orin (nvgpu)", "8.7", 16)
KEY = EngineKey("a" * 64, "int8", PLATFORM, "image", ((1, 1, 32, 32), (1, 1, 32, 32), (16, 1, 32, 32)), None)


class CountingBuild:
    def __init__(self, seconds: float = 0.0):
        self.calls = 0
        self.seconds = seconds
        self.lock = threading.Lock()

    def __call__(self, engine, progress, cancel):
        with self.lock:
            self.calls += 1
        time.sleep(self.seconds)
        if progress:
            progress(BuildProgress("Building engine", 1, 2, 0.5))
        if cancel is not None and cancel.is_set():
            raise BuildCancelled("cancelled")
        engine.write_bytes(b"engine-" + str(self.calls).encode())


VARIANTS = {
    "model content": dataclasses.replace(KEY, model_sha256="b" * 64),
    "precision": dataclasses.replace(KEY, precision="fp16"),
    "tensorrt build number": dataclasses.replace(KEY, platform=dataclasses.replace(PLATFORM, tensorrt_version="10.3.0.26")),
    "gpu name": dataclasses.replace(KEY, platform=dataclasses.replace(PLATFORM, gpu_name="Orin Nano")),
    "compute capability": dataclasses.replace(KEY, platform=dataclasses.replace(PLATFORM, compute_capability="8.6")),
    "sm count": dataclasses.replace(KEY, platform=dataclasses.replace(PLATFORM, sm_count=8)),
    "profile": dataclasses.replace(KEY, profile=((1, 1, 32, 32), (4, 1, 32, 32), (16, 1, 32, 32))),
    "dla core": dataclasses.replace(KEY, dla_core=0),
    "input name": dataclasses.replace(KEY, input_name="pixels"),
}


@pytest.mark.parametrize("component", sorted(VARIANTS))
def test_every_component_changes_the_key_and_the_file(component, tmp_path):
    cache = EngineCache(tmp_path)
    other = VARIANTS[component]
    assert other.digest() != KEY.digest()
    assert cache.engine_path(other) != cache.engine_path(KEY)


def test_key_is_canonical():
    same = EngineKey(*dataclasses.astuple(KEY)[:2], PLATFORM, *dataclasses.astuple(KEY)[3:])
    assert same.digest() == KEY.digest() and KEY.file_stem.startswith("int8-")


def test_builds_once_and_persists(tmp_path):
    build = CountingBuild()
    first = EngineCache(tmp_path).get_or_build(KEY, build)
    again = EngineCache(tmp_path).get_or_build(KEY, build)  # a new process, the same directory
    assert first == again and build.calls == 1
    sidecar = json.loads((tmp_path / f"{KEY.file_stem}.json").read_text())
    assert sidecar["key"] == KEY.as_dict() and sidecar["engine_bytes"] == first.stat().st_size


def test_a_sidecar_for_another_key_means_rebuild(tmp_path):
    cache, build = EngineCache(tmp_path), CountingBuild()
    cache.get_or_build(KEY, build)
    sidecar = cache.sidecar_path(KEY)
    record = json.loads(sidecar.read_text())
    record["key"]["tensorrt_version"] = "10.2.0.19"  # e.g. written before a JetPack upgrade
    sidecar.write_text(json.dumps(record))
    assert cache.lookup(KEY) is None
    cache.get_or_build(KEY, build)
    assert build.calls == 2 and cache.lookup(KEY) is not None


def test_damaged_engine_or_sidecar_means_rebuild(tmp_path):
    cache, build = EngineCache(tmp_path), CountingBuild()
    engine = cache.get_or_build(KEY, build)
    engine.write_bytes(b"truncated")
    assert cache.lookup(KEY) is None
    cache.get_or_build(KEY, build)
    assert build.calls == 2 and engine.read_bytes() == b"engine-2"  # rebuilt, not the damaged file
    cache.sidecar_path(KEY).write_text("{not json")
    assert cache.lookup(KEY) is None
    cache.invalidate(KEY)
    assert not engine.exists() and not cache.sidecar_path(KEY).exists()


def test_failed_build_leaves_no_entry(tmp_path):
    cache = EngineCache(tmp_path)

    def broken(engine, progress, cancel):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        cache.get_or_build(KEY, broken)
    assert cache.lookup(KEY) is None


def test_unwritable_directory_is_a_clear_error_up_front(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CacheNotWritable, match="not writable.*every start would rebuild.*BEDSIDE_ENGINE_CACHE"):
        EngineCache(blocker / "engines")


def test_concurrent_requests_build_once(tmp_path):
    cache, build = EngineCache(tmp_path), CountingBuild(seconds=0.2)
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: cache.get_or_build(KEY, build), range(8)))
    assert build.calls == 1 and len(set(paths)) == 1


def test_background_job_reports_progress_and_readiness(tmp_path):
    cache, build = EngineCache(tmp_path), CountingBuild(seconds=0.1)
    done = []
    job = BuildJob(cache, KEY, build, on_done=done.append)
    assert job.status()["state"] == "pending"
    job.start()
    assert job.wait(10)
    status = job.status()
    assert status["state"] == "ready" and status["fraction"] == 1.0 and status["engine"]
    assert done == [job] and job.engine_path == cache.lookup(KEY)


def test_background_job_failure_and_cancel_are_reported(tmp_path):
    cache = EngineCache(tmp_path)

    def broken(engine, progress, cancel):
        raise RuntimeError("parser said no")

    job = BuildJob(cache, KEY, broken).start()
    job.wait(10)
    assert job.status()["state"] == "failed" and "parser said no" in job.status()["error"]
    job = BuildJob(cache, KEY, CountingBuild(seconds=0.1))
    job.cancel()
    job.start().wait(10)
    assert job.status()["state"] == "cancelled" and cache.lookup(KEY) is None


def test_settings_from_environment(tmp_path):
    env = {"BEDSIDE_ENGINE_CACHE": str(tmp_path), "BEDSIDE_TRT_MAX_BATCH": "8", "BEDSIDE_DLA_CORE": "1"}
    settings = EngineSettings().with_env(env)
    options = settings.build_options("int8")
    assert settings.cache_dir == tmp_path and options.max_batch == 8 and options.dla_core == 1
    assert options.workspace_bytes == 1024 << 20 and options.opt_batch == 1
    with pytest.raises(ValueError, match="BEDSIDE_TRT_MAX_BATCH='many'"):
        EngineSettings().with_env({"BEDSIDE_TRT_MAX_BATCH": "many"})
