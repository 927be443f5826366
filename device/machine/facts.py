"""What this machine is, as far as speed goes: its CPU (model, usable cores, SIMD extensions) and
the versions of the libraries installed. Shared by ``bedside doctor``, the benchmarks' reports and
the backend choice's cache key."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

# Instruction-set extensions that decide CNN speed on the CPU (x86 names, then Arm's).
CPU_FEATURES = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "avx512_fp16", "amx_int8", "amx_fp16", "asimd", "asimddp", "fphp", "asimdhp", "sve", "i8mm",
)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


def package_versions_of(names: tuple[str, ...]) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_features() -> dict[str, object]:
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("flags", "features"):
                flags.update(value.split())
            elif key == "model name":
                model = value.strip()
    except OSError:
        pass
    return {"model": model, "machine": platform.machine(), "features": [f for f in CPU_FEATURES if f in flags]}
