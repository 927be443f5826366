"""``bedside bench``: every variant on every available backend, measured side by side in one run.

Runners are timed in interleaved rounds (A, B, C, A, B, C, ...) rather than one after the
other, so drift on a shared, noisy machine (other processes, thermal throttling) hits all of
them alike and the ratios between them stay meaningful.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from device.commands.common import add_bundle_argument, resolve_bundle
from device.runtime import registry
from device.runtime.base import ModelIO
from device.triage import default_threads
from models.bundle import Bundle


@dataclass
class Runner:
    backend: str
    precision: str
    run: Callable[[np.ndarray], object]
    close: Callable[[], None]


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    add_bundle_argument(parser)
    parser.add_argument("--json", action="store_true", help='print {"results": [...]}')
    parser.add_argument("--batch", type=int, default=16, help="batch size for the throughput measurement")
    parser.add_argument("--iterations", type=int, default=200, help="batch-1 runs per runner")
    parser.add_argument("--rounds", type=int, default=10, help="interleaving rounds")
    parser.add_argument("--threads", type=int, default=None, help="threads for every runner (default: all cores)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager baseline")


def build_runners(bundle: Bundle, threads: int, with_torch: bool) -> tuple[list[Runner], list[str]]:
    """Every (backend, variant) that can run here, and a note for each that cannot."""
    m = bundle.manifest
    io = ModelIO(m.input.tensor_name, (m.outputs.logits,), (m.input.channels, m.input.height, m.input.width))
    runners, skipped = [], []
    for name, status in registry.all_availability().items():
        if not status.ok:
            skipped.append(f"{name}: {status.reason}")
            continue
        cls = registry.backend_class(name)
        for variant in m.variants:
            backend = cls(bundle.path_of(variant.file), io, threads)
            runners.append(Runner(name, variant.precision, backend.run, backend.close))
    if with_torch:
        runner = _torch_eager_runner(bundle, threads)
        if runner is None:
            skipped.append("pytorch-eager: torch is not installed")
        else:
            runners.append(runner)
    return runners, skipped


def _torch_eager_runner(bundle: Bundle, threads: int) -> Runner | None:
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    from models.onnx_eager import EagerGraph

    torch.set_num_threads(threads)
    graph = EagerGraph(bundle.path_of(bundle.manifest.variant("fp32").file))
    return Runner("pytorch-eager", "fp32", graph, lambda: None)


def _percentiles(samples_ms: list[float]) -> dict[str, float]:
    p50, p90, p99 = np.percentile(np.asarray(samples_ms), [50, 90, 99])
    return {"p50_ms": round(float(p50), 4), "p90_ms": round(float(p90), 4), "p99_ms": round(float(p99), 4)}


def measure(runners: list[Runner], shape: tuple[int, int, int], batch: int, calls: int, rounds: int) -> list[dict]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    for r in runners:  # warm-up: arenas, kernel choice, caches
        for _ in range(3):
            r.run(x)
    samples: dict[int, list[float]] = {i: [] for i in range(len(runners))}
    per_round = max(1, calls // rounds)
    for _ in range(rounds):
        for i, r in enumerate(runners):
            for _ in range(per_round):
                t0 = time.perf_counter()
                r.run(x)
                samples[i].append((time.perf_counter() - t0) * 1e3)
    results = []
    for i, r in enumerate(runners):
        stats = _percentiles(samples[i])
        results.append({
            "backend": r.backend, "precision": r.precision, "batch": batch, **stats,
            "throughput_ips": round(batch * 1e3 / float(np.mean(samples[i])), 2),
        })
    return results


def run(args: argparse.Namespace) -> int:
    bundle = resolve_bundle(args.bundle)
    m = bundle.manifest
    threads = args.threads or default_threads()
    runners, skipped = build_runners(bundle, threads, not args.no_torch)
    shape = (m.input.channels, m.input.height, m.input.width)
    try:
        results = measure(runners, shape, 1, args.iterations, args.rounds)
        results += measure(runners, shape, args.batch, max(args.rounds, args.iterations // 10), args.rounds)
    finally:
        for r in runners:
            r.close()
    if args.json:
        print(json.dumps({"model": {"id": m.id, "version": m.version}, "threads": threads,
                          "input": list(shape), "results": results, "skipped": skipped}))
        return 0
    print(f"{m.id} {m.version}, input {shape}, {threads} threads, interleaved over {args.rounds} rounds")
    print(f"{'backend':<15} {'prec':<5} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'img/s':>9}")
    for r in results:
        print(f"{r['backend']:<15} {r['precision']:<5} {r['batch']:>5} {r['p50_ms']:>9.3f} {r['p90_ms']:>9.3f} "
              f"{r['p99_ms']:>9.3f} {r['throughput_ips']:>9.1f}")
    _print_ratios(results)
    for note in skipped:
        print(f"skipped {note}")
    return 0


def _print_ratios(results: list[dict]) -> None:
    """b1 p50 of every runner relative to ONNX Runtime FP32: the numbers the targets are stated in."""
    b1 = {(r["backend"], r["precision"]): r["p50_ms"] for r in results if r["batch"] == 1}
    base = b1.get(("onnxruntime", "fp32"))
    if base is None:
        return
    for (backend, precision), p50 in b1.items():
        if (backend, precision) != ("onnxruntime", "fp32"):
            print(f"b1 p50 {backend} {precision} / onnxruntime fp32 = {p50 / base:.2f}x")
