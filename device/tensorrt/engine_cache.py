"""The engine cache on the device: one engine per (model content, TensorRT build, GPU, profile, ...).

Engines are portable across neither TensorRT versions (down to the build number) nor GPUs, so the
cache key holds everything an engine depends on, and the file name is a hash of that key. Peers'
failures this design answers:

- stale engines loaded after a JetPack upgrade (jetson-inference#426, Triton#317): the full
  TensorRT version and the GPU identity are in the key, so an upgrade misses the cache and rebuilds;
- a cache keyed on the model's file *name*, so a retrained model reuses the old engine (ONNX
  Runtime's TensorRT EP): the key holds the sha256 of the model's bytes;
- a 5-10 minute build on every boot because the cache directory is not writable
  (jetson-inference#1031): the directory is probed when the cache is opened, and that fails loudly.

Each engine has a JSON sidecar holding its full key and the engine's sha256; the sidecar is
written last, so it is the commit mark of a finished build. An entry whose sidecar does not match
the key exactly (or whose engine bytes do not match the sidecar) is rebuilt, never loaded.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from device.machine.clock import utc_iso
from device.tensorrt.build import BuildCancelled, BuildOptions, build_engine
from device.tensorrt.library import Platform
from device.tensorrt.progress import BuildProgress, ProgressCallback
from device.tensorrt.settings import ENV_CACHE_DIR
from models import atomic
from models.bundle import sha256_file

log = logging.getLogger("bedside.engine_cache")

KEY_FORMAT = 1

# (engine path to write, progress callback, cancel event) -> None
BuildFunction = Callable[[Path, "ProgressCallback | None", "threading.Event | None"], None]


class CacheNotWritable(Exception):
    """The engine cache directory cannot hold engines; every start would rebuild for minutes."""


@dataclass(frozen=True)
class EngineKey:
    model_sha256: str
    precision: str
    platform: Platform
    input_name: str
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # min, opt, max input shapes
    dla_core: int | None

    @classmethod
    def for_model(cls, onnx_path: Path, precision: str, platform: Platform, input_name: str,
                  chw: tuple[int, int, int], options: BuildOptions) -> "EngineKey":
        return cls(sha256_file(onnx_path), precision, platform, input_name,
                   options.profile_shapes(tuple(chw)), options.dla_core)

    def as_dict(self) -> dict:
        return {
            "format": KEY_FORMAT,
            "model_sha256": self.model_sha256,
            "precision": self.precision,
            "tensorrt_version": self.platform.tensorrt_version,
            "gpu_name": self.platform.gpu_name,
            "compute_capability": self.platform.compute_capability,
            "sm_count": self.platform.sm_count,
            "input": self.input_name,
            "profile": {name: list(shape) for name, shape in zip(("min", "opt", "max"), self.profile)},
            "dla_core": self.dla_core,
        }

    def digest(self) -> str:
        return hashlib.sha256(_canonical(self.as_dict())).hexdigest()

    @property
    def file_stem(self) -> str:
        return f"{self.precision}-{self.digest()[:32]}"


class EngineCache:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._check_writable()

    def _check_writable(self) -> None:
        """Probe with a real write: os.access says yes to root on a read-only filesystem."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.directory, prefix=".probe.")
            try:
                os.write(fd, b"ok")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            raise CacheNotWritable(
                f"engine cache {self.directory} is not writable ({exc.strerror or exc}): engines could "
                f"not persist and every start would rebuild them (minutes each); point [models.tensorrt] cache_dir "
                f"(or {ENV_CACHE_DIR}) at a writable directory on persistent storage"
            ) from None

    def engine_path(self, key: EngineKey) -> Path:
        return self.directory / f"{key.file_stem}.engine"

    def sidecar_path(self, key: EngineKey) -> Path:
        return self.directory / f"{key.file_stem}.json"

    def timing_cache_path(self, platform: Platform) -> Path:
        """Kernel timings are valid per TensorRT build and GPU, whatever the model."""
        digest = hashlib.sha256(_canonical(vars(platform))).hexdigest()[:16]
        return self.directory / f"timing-{digest}.cache"

    def lookup(self, key: EngineKey) -> Path | None:
        """The engine for exactly this key, or None (absent, stale, or damaged)."""
        engine, sidecar = self.engine_path(key), self.sidecar_path(key)
        try:
            record = json.loads(sidecar.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("engine sidecar %s is unreadable (%s): rebuilding", sidecar.name, exc)
            return None
        if not isinstance(record, dict) or record.get("key") != key.as_dict():
            log.warning("engine %s was built for another key: rebuilding", engine.name)
            return None
        if not engine.is_file() or sha256_file(engine) != record.get("engine_sha256"):
            log.warning("engine %s is missing or does not match its sidecar: rebuilding", engine.name)
            return None
        return engine

    def invalidate(self, key: EngineKey) -> None:
        """Forget an entry (e.g. one that TensorRT refused to deserialize); sidecar first."""
        self.sidecar_path(key).unlink(missing_ok=True)
        self.engine_path(key).unlink(missing_ok=True)

    def get_or_build(self, key: EngineKey, build: BuildFunction,
                     progress: ProgressCallback | None = None,
                     cancel: threading.Event | None = None) -> Path:
        """The cached engine, building it first if needed: once, even with concurrent callers.

        An exclusive lock file per key serialises builders across threads and processes (the
        service and a `bedside infer` run at the same time); whoever waited finds the engine built.
        """
        lock_path = self.directory / f"{key.file_stem}.lock"
        with open(lock_path, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                found = self.lookup(key)
                if found is not None:
                    return found
                engine = self.engine_path(key)
                self.sidecar_path(key).unlink(missing_ok=True)
                started = time.monotonic()
                build(engine, progress, cancel)
                record = {
                    "key": key.as_dict(),
                    "engine_sha256": sha256_file(engine),
                    "engine_bytes": engine.stat().st_size,
                    "built_at": utc_iso(),
                    "build_seconds": round(time.monotonic() - started, 3),
                }
                atomic.write_bytes(self.sidecar_path(key), (json.dumps(record, indent=2) + "\n").encode())
                return engine
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def tensorrt_build(onnx_path: Path, key: EngineKey, options: BuildOptions, timing_cache: Path) -> BuildFunction:
    """The BuildFunction that compiles ``onnx_path`` with TensorRT for ``key``."""
    chw = tuple(key.profile[0][1:])

    def build(engine: Path, progress: ProgressCallback | None, cancel: threading.Event | None) -> None:
        build_engine(onnx_path, key.input_name, chw, options, engine, timing_cache, progress, cancel)

    return build


class BuildJob:
    """An engine build on a background thread, for a device that keeps serving on the CPU meanwhile.

    Poll ``status()`` for the phase and fraction done; ``on_done(job)`` is called from the build
    thread at the end, and then ``ready`` is set (look at ``state``).
    """

    def __init__(self, cache: EngineCache, key: EngineKey, build: BuildFunction,
                 on_done: Callable[["BuildJob"], None] | None = None):
        self._cache, self._key, self._build, self._on_done = cache, key, build, on_done
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self.ready = threading.Event()
        self.state = "pending"  # pending -> building -> ready | failed | cancelled
        self.progress: BuildProgress | None = None
        self.error: str | None = None
        self.engine_path: Path | None = None
        self._thread = threading.Thread(target=self._run, name=f"engine-build-{key.file_stem}", daemon=True)

    def start(self) -> "BuildJob":
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.ready.wait(timeout)

    def status(self) -> dict:
        with self._lock:
            p = self.progress
            return {
                "state": self.state,
                "phase": p.phase if p else None,
                "step": p.step if p else None,
                "num_steps": p.num_steps if p else None,
                "fraction": 1.0 if self.state == "ready" else (p.fraction if p else 0.0),
                "error": self.error,
                "engine": str(self.engine_path) if self.engine_path else None,
            }

    def _report(self, progress: BuildProgress) -> None:
        with self._lock:
            self.progress = progress

    def _run(self) -> None:
        with self._lock:
            self.state = "building"
        try:
            path = self._cache.get_or_build(self._key, self._build, self._report, self._cancel)
        except BuildCancelled as exc:
            state, error, path = "cancelled", str(exc), None
        except Exception as exc:  # a build thread must report every failure, not die silently
            state, error, path = "failed", f"{type(exc).__name__}: {exc}", None
        else:
            state, error = "ready", None
        with self._lock:
            self.state, self.error, self.engine_path = state, error, path
        try:
            if self._on_done is not None:
                self._on_done(self)
        finally:
            self.ready.set()  # after on_done, so whoever waits sees its effect (e.g. the switch to the GPU)


def _canonical(data: dict) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
