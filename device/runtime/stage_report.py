"""The report shape of NVIDIA's trtexec, for backends that can time the stages of a run on the
device (TensorRT, with CUDA events): H2D latency, GPU compute time, D2H latency, their sum and the
host's enqueue time, each as min/mean/median/p90/p95/p99/max. A backend offering it has a
``profile(batch, iterations)`` method returning ``trtexec_report`` of its runs; `bedside bench`
prints it for every backend that has one.
"""

from __future__ import annotations

import numpy as np

TRTEXEC_ROWS = (("h2d", "H2D Latency"), ("compute", "GPU Compute Time"), ("d2h", "D2H Latency"),
                ("latency", "Latency"), ("enqueue", "Enqueue Time"))


def trtexec_report(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per-run timings -> trtexec's statistics of each (latency = H2D + compute + D2H, as trtexec sums it)."""
    series = {key: [r[key] for r in runs] for key in ("h2d", "compute", "d2h", "enqueue")}
    series["latency"] = [r["h2d"] + r["compute"] + r["d2h"] for r in runs]
    report = {}
    for key, _ in TRTEXEC_ROWS:
        v = np.asarray(series[key])
        p50, p90, p95, p99 = np.percentile(v, [50, 90, 95, 99])
        report[key] = {"min": float(v.min()), "mean": float(v.mean()), "median": float(p50), "p90": float(p90),
                       "p95": float(p95), "p99": float(p99), "max": float(v.max())}
    return report


def format_trtexec(report: dict[str, dict[str, float]]) -> list[str]:
    """The report as trtexec prints its performance summary."""
    return [f"{title}: min = {s['min']:.5f} ms, max = {s['max']:.5f} ms, mean = {s['mean']:.5f} ms, "
            f"median = {s['median']:.5f} ms, percentile(90%) = {s['p90']:.5f} ms, percentile(95%) = {s['p95']:.5f} ms, "
            f"percentile(99%) = {s['p99']:.5f} ms" for key, title in TRTEXEC_ROWS for s in (report[key],)]
