"""``bedside bench``: every variant on every available backend, measured side by side in one run
(interleaved rounds, see optimize.timing).

Each runner first runs the bundle's self-test (device/runtime/variant_check.py, as the kiosk does before it
serves). A row that fails it computes wrong answers on this CPU (an INT8 graph with 8-bit weights
in ONNX Runtime's kernels on x86 without VNNI, say): it is timed and shown, marked, but never counted
as the fastest nor in a target's ratio."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from dataclasses import dataclass
from typing import Callable

import numpy as np
from tqdm import tqdm

from device.commands.common import add_bundle_argument, resolve_bundle
from device.machine.facts import usable_cores
from device.runtime import registry
from device.runtime.backend_choice import choose
from device.runtime.base import RuntimeFailure, VariantFile, model_io
from device.runtime.stage_report import format_trtexec
from device.runtime.study_gap import between_studies
from device.runtime.variant_check import compare, probabilities, reference_outputs
from models.bundle import Bundle
from optimize.timing import interleaved_latencies, summarise


@dataclass
class Runner:
    backend: str
    precision: str
    run: Callable[[np.ndarray], object]
    close: Callable[[], None]
    variant: str  # the ONNX file: two INT8 graphs (GPU and CPU recipes) can share a precision
    profile: Callable[[np.ndarray, int], dict] | None = None  # a trtexec-shaped report, where the backend has one
    selftest_ok: bool = True  # set by self_test(): whether this runner computes the bundle's answers here


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    add_bundle_argument(parser)
    parser.add_argument("--json", action="store_true", help='print {"results": [...]}')
    parser.add_argument("--batch", type=int, default=16, help="batch size for the throughput measurement")
    parser.add_argument("--iterations", type=int, default=200, help="batch-1 runs per runner")
    parser.add_argument("--rounds", type=int, default=10, help="interleaving rounds")
    parser.add_argument("--threads", type=int, default=None, help="threads for every runner (default: all cores)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager baseline")
    parser.add_argument("--pipeline", nargs="+", type=Path, metavar="FILE",
                        help="instead: time the served path on these images (decode, quality, preprocess, model) "
                        "beside libjpeg's own decode at the same scale")


def build_runners(bundle: Bundle, threads: int, with_torch: bool) -> tuple[list[Runner], list[str]]:
    """Every (backend, variant) that can run here, and a note for each that cannot."""
    runners: list[Runner] = []
    try:
        skipped = _add_runners(runners, bundle, threads, with_torch)
        self_test(runners, bundle)
    except BaseException:
        for r in runners:
            r.close()
        raise
    return runners, skipped


def _add_runners(runners: list[Runner], bundle: Bundle, threads: int, with_torch: bool) -> list[str]:
    m = bundle.manifest
    io = model_io(m)  # logits and CAM: the work the device really does per image
    skipped = []
    for name, status in registry.all_availability().items():
        if not status.ok:
            skipped.append(f"{name}: {status.reason}")
            continue
        cls = registry.backend_class(name)
        if cls.remote:
            skipped.append(f"{name}: runs on another machine; benchmarks/central.py times it against a node")
            continue
        for variant in m.variants:
            # A CPU backend runs any graph, so GPU-only variants are measured there too (for
            # reference); a GPU backend runs only the graphs made for it.
            if cls.target in variant.targets or cls.target == "cpu":
                try:
                    backend = cls(VariantFile.of(bundle, variant), io, threads)
                except RuntimeFailure as exc:  # e.g. a precision this CPU cannot pin on that backend
                    skipped.append(f"{name} {variant.precision} ({variant.file}): {exc}")
                    continue
                runners.append(Runner(name, variant.precision, backend.run, backend.close, variant.file,
                                      getattr(backend, "profile", None)))
    if with_torch:
        runner = _torch_eager_runner(bundle, threads)
        if runner is None:
            skipped.append("pytorch-eager: torch is not installed (the 'train' extra)")
        else:
            runners.append(runner)
    return skipped


def _torch_eager_runner(bundle: Bundle, threads: int) -> Runner | None:
    """PyTorch eager FP32 on the FP32 variant's weights; None where torch or onnx is not installed."""
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("onnx") is None:
        return None
    from models.training.onnx_eager import eager_graph

    fp32 = bundle.manifest.variant("fp32").file
    return Runner("pytorch-eager", "fp32", eager_graph(bundle.path_of(fp32), threads), lambda: None, fp32)


def self_test(runners: list[Runner], bundle: Bundle) -> None:
    """Each runner on the bundle's golden inputs against the stored FP32 answers (variant_check)."""
    m = bundle.manifest
    x, want = reference_outputs(bundle)
    for r in runners:
        r.selftest_ok = compare(probabilities(r.run, m, x), want, m, r.precision)["ok"]


def measure(runners: list[Runner], shape: tuple[int, int, int], batch: int, calls: int, rounds: int,
            progress: tqdm, between: Callable[[], None] | None = None) -> list[dict]:
    """One row per runner; with ``between`` (a study's decode and preprocessing) before each timed
    call, the rows say ``"as_served": true``: how the kiosk's backend choice times them."""
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    samples = interleaved_latencies([r.run for r in runners], x, calls, rounds, on_round=progress.update,
                                    before_call=between)
    return [
        {"backend": r.backend, "precision": r.precision, "variant": r.variant, "batch": batch,
         "as_served": between is not None, "selftest_ok": r.selftest_ok, **summarise(s, batch)}
        for r, s in zip(runners, samples)
    ]


def run(args: argparse.Namespace) -> int:
    if args.pipeline:
        from device.commands.bench_pipeline import run_pipeline

        return run_pipeline(args)
    bundle = resolve_bundle(args.bundle)
    m = bundle.manifest
    threads = args.threads or usable_cores()
    served = served_pair(bundle, threads)
    runners, skipped = build_runners(bundle, threads, not args.no_torch)
    shape = (m.input.channels, m.input.height, m.input.width)
    bar = tqdm(total=3 * args.rounds, desc=f"measuring {len(runners)} runners", unit="round", file=sys.stderr,
               leave=False, disable=None)
    try:
        results = measure(runners, shape, 1, args.iterations, args.rounds, bar)
        results += measure(runners, shape, args.batch, max(args.rounds, args.iterations // 10), args.rounds, bar)
        results += measure(runners, shape, 1, max(args.rounds, args.iterations // 4), args.rounds, bar,
                           between_studies(m))
        stages = stage_reports(runners, shape, (1, args.batch), args.iterations)
    finally:
        bar.close()
        for r in runners:
            r.close()
    for r in results:
        r["served"] = (r["backend"], r["variant"]) == served
    report = {"model": {"id": m.id, "version": m.version}, "threads": threads, "input": list(shape),
              "served": {"backend": served[0], "variant": served[1]}, "results": results,
              "targets": targets(results), "trtexec": stages, "skipped": skipped}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{m.id} {m.version}, input {'x'.join(map(str, shape))}, {threads} thread{'s' if threads != 1 else ''}, "
          f"interleaved over {args.rounds} rounds; * = what the kiosk serves (backend = auto)")
    print(format_table(results))
    for line in format_targets(report["targets"]):
        print(line)
    for stage in stages:
        print(f"[{stage['backend']} {stage['precision']} {stage['variant']}, batch {stage['batch']}, "
              f"{stage['iterations']} iterations] as trtexec reports it:")
        for line in format_trtexec(stage["report"]):
            print(f"  {line}")
    if not all(r["selftest_ok"] for r in results):
        print("! fails the bundle's self-test on this CPU (wrong answers here): timed, never served, not in the targets")
    for note in skipped:
        print(f"skipped {note}")
    return 0


def stage_reports(runners: list[Runner], shape: tuple[int, int, int], batches: tuple[int, ...],
                  iterations: int) -> list[dict]:
    """trtexec's per-stage report (H2D, compute, D2H, enqueue) of every runner whose backend times
    its stages on the device."""
    rng = np.random.default_rng(0)
    reports = []
    for r in runners:
        if r.profile is None:
            continue
        for batch in batches:
            x = rng.standard_normal((batch, *shape)).astype(np.float32)
            reports.append({"backend": r.backend, "precision": r.precision, "variant": r.variant, "batch": batch,
                            "iterations": iterations, "report": r.profile(x, iterations)})
    return reports


def served_pair(bundle: Bundle, threads: int) -> tuple[str, str]:
    """(backend, variant file) the kiosk's ``backend = "auto"`` picks here, by the kiosk's own
    procedure (self-test, then its bounded timing; not read from any cache)."""
    choice, backend = choose(bundle, "auto", "auto", threads, {}, None)
    backend.close()
    return choice.backend, choice.file


def targets(results: list[dict]) -> list[dict]:
    """The issue's targets as ratios of rows measured side by side in this run, among the rows that
    pass the self-test here."""
    results = [r for r in results if r["selftest_ok"]]
    b1 = [r for r in results if r["batch"] == 1 and not r.get("as_served")]
    served = next((r for r in b1 if r["served"]), None)
    if served is None:
        return []
    fastest = min(b1, key=lambda r: r["p50_ms"])
    rows = [
        _target("served p50 / fastest p50 (batch 1)", served["p50_ms"] / fastest["p50_ms"], "<=", 1.05),
        _target("served p99 / its own p50 (batch 1)", served["p99_ms"] / served["p50_ms"], "<=", 2.0),
    ]
    as_served = [r for r in results if r.get("as_served")]
    served_there = next((r for r in as_served if r["served"]), None)
    if served_there is not None:
        quickest = min(as_served, key=lambda r: r["p50_ms"])
        rows.append(_target("as served (each run after a study's decode): served p50 / fastest p50",
                            served_there["p50_ms"] / quickest["p50_ms"], "<=", 1.05))
    eager = next((r for r in b1 if r["backend"] == "pytorch-eager"), None)
    if eager is not None:
        rows.append(_target("pytorch eager fp32 p50 / served p50", eager["p50_ms"] / served["p50_ms"], ">=", 6.0))
    engine = [r for r in b1 if r["backend"] == served["backend"]]
    int8 = min((r for r in engine if r["precision"] == "int8"), key=lambda r: r["p50_ms"], default=None)
    fp32 = next((r for r in engine if r["precision"] == "fp32"), None)
    if int8 is not None and fp32 is not None:
        rows.append(_target(f"{served['backend']} fp32 p50 / int8 p50", fp32["p50_ms"] / int8["p50_ms"], ">=", 2.0))
    return rows


def _target(name: str, value: float, op: str, bound: float) -> dict:
    met = value <= bound if op == "<=" else value >= bound
    return {"target": name, "value": round(value, 3), "op": op, "bound": bound, "met": met}


def format_targets(rows: list[dict]) -> list[str]:
    return [f"target {r['target']}: {r['value']:.2f} ({'met' if r['met'] else 'NOT met'}: {r['op']} {r['bound']:g})"
            for r in rows]


def format_table(results: list[dict]) -> str:
    """One block per batch size (then batch 1 as served), fastest first, each row's p50 as a multiple
    of the fastest row's that passes the self-test here; ``!`` marks a row that fails it."""
    rows = [("runner", "variant", "p50 ms", "p90 ms", "p99 ms", "img/s", "p50 vs fastest")]
    blocks = sorted({(bool(r.get("as_served")), r["batch"]) for r in results})
    for as_served, batch in blocks:
        block = sorted((r for r in results if r["batch"] == batch and bool(r.get("as_served")) == as_served),
                       key=lambda r: r["p50_ms"])
        fastest = min((r["p50_ms"] for r in block if r["selftest_ok"]), default=block[0]["p50_ms"])
        title = f"batch {batch}" + (", each run after a study's decode (as served)" if as_served else "")
        rows.append((title,))  # a block's title line, not a row of the table
        for r in block:
            rows.append((
                f"{_mark(r)}{r['backend']} {r['precision']}", _variant_label(r), f"{r['p50_ms']:.3f}", f"{r['p90_ms']:.3f}",
                f"{r['p99_ms']:.3f}", f"{r['throughput_ips']:,.0f}", f"{r['p50_ms'] / fastest:.2f}x",
            ))
    widths = [max(len(row[i]) for row in rows if len(row) > 1) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        if len(row) == 1:
            lines.append(row[0])
            continue
        left = [cell.ljust(w) for cell, w in zip(row[:2], widths)]
        right = [cell.rjust(w) for cell, w in zip(row[2:], widths[2:])]
        lines.append("  ".join(left + right).rstrip())
    return "\n".join(lines)


def _mark(result: dict) -> str:
    return ("* " if result.get("served") else "") + ("" if result["selftest_ok"] else "! ")


def _variant_label(result: dict) -> str:
    """PyTorch runs no ONNX file: it runs the graph of one, on the same weights."""
    if result["backend"] == "pytorch-eager":
        return f"graph of {result['variant']}"
    return result["variant"]
