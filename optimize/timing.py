"""Latency measurement shared by `bedside bench` and the optimizer's report.

Runners are timed in interleaved rounds (A, B, C, A, B, C, ...) rather than one after the other,
so drift on a shared, noisy machine (other processes, frequency scaling) hits all of them alike and
the ratios between them stay meaningful.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

WARMUP_CALLS = 3
# Pause between one runner's block and the next: ONNX Runtime's pool threads spin-wait after a
# run, and on a 2-core machine that spinning would be charged to whichever runner comes next.
SETTLE_S = 0.02
# Untimed calls at the start of each runner's block: its first call after the others ran finds its
# weights out of the cache and its threads asleep. That cost belongs to the interleaving (a kiosk
# serves one model, not eight in turn); left in, it is 1 call in every block and set each runner's
# p99 (4x its p50 on an idle 2-core box, against 1.4x in one continuous run).
BLOCK_WARMUP_CALLS = 2


def interleaved_latencies(
    runs: Sequence[Callable[[np.ndarray], object]], x: np.ndarray, calls: int, rounds: int,
    on_round: Callable[[], None] | None = None, before_call: Callable[[], None] | None = None,
) -> list[np.ndarray]:
    """Per-call wall times in ms for each runner on the same input, measured in interleaved rounds.

    ``on_round`` is called after each round (a progress bar's tick); ``before_call``, untimed,
    before every timed call (the work a served path does between two model runs)."""
    for run in runs:
        for _ in range(WARMUP_CALLS):
            run(x)
    per_round = max(1, calls // max(1, rounds))
    samples: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for i, run in enumerate(runs):
            time.sleep(SETTLE_S)
            for _ in range(BLOCK_WARMUP_CALLS):
                run(x)
            for _ in range(per_round):
                if before_call is not None:
                    before_call()
                t0 = time.perf_counter()
                run(x)
                samples[i].append((time.perf_counter() - t0) * 1e3)
        if on_round is not None:
            on_round()
    return [np.asarray(s) for s in samples]


def round_ratios(samples_ms: np.ndarray, baseline_ms: np.ndarray, rounds: int) -> np.ndarray:
    """Per round of `interleaved_latencies`, the runner's median over the baseline's, in that round.

    Paired by round, a ratio carries only the drift within one round (a few ms), not the drift
    between the first round and the last, which on a shared 2-core machine moved pooled p50s by
    10-20% in one run; the median of these ratios is the steadier estimate of a small overhead."""
    mine, base = (np.median(np.asarray(s).reshape(rounds, -1), axis=1) for s in (samples_ms, baseline_ms))
    return mine / base


def summarise(samples_ms: np.ndarray, batch: int) -> dict[str, float]:
    p50, p90, p99 = np.percentile(samples_ms, [50, 90, 99])
    return {
        "p50_ms": round(float(p50), 4),
        "p90_ms": round(float(p90), 4),
        "p99_ms": round(float(p99), 4),
        "throughput_ips": round(batch * 1e3 / float(samples_ms.mean()), 2),
    }
