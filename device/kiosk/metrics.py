"""Counters and histograms exposed at /metrics in the Prometheus text format (written by hand:
a few dozen lines do not justify a dependency on the appliance)."""

from __future__ import annotations

import threading
from collections import Counter

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _labels(pairs: dict[str, str]) -> str:
    if not pairs:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(pairs.items()))
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS_S):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{b:g}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{name}_sum {self.total:.6f}")
        out.append(f"{name}_count {self.count}")
        return out


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ready = False
        self._studies: Counter[tuple[str, str]] = Counter()
        self._errors: Counter[str] = Counter()
        self._inference = Histogram()
        self._study_seconds = Histogram()

    def study_created(self, exam: str, triage: str, inference_s: float, total_s: float) -> None:
        with self._lock:
            self._studies[(exam, triage)] += 1
            self._inference.observe(inference_s)
            self._study_seconds.observe(total_s)

    def error(self, kind: str) -> None:
        with self._lock:
            self._errors[kind] += 1

    def render(self, exams: list[str], triage_categories: tuple[str, ...]) -> str:
        with self._lock:
            lines = [
                "# HELP bedside_ready 1 when the models are loaded and warmed up and the store is open",
                "# TYPE bedside_ready gauge",
                f"bedside_ready {int(self.ready)}",
                "# HELP bedside_studies_total Studies created since start, by exam and triage category",
                "# TYPE bedside_studies_total counter",
            ]
            for exam in exams:
                for triage in triage_categories:
                    n = self._studies[(exam, triage)]
                    lines.append(f"bedside_studies_total{_labels({'exam': exam, 'triage': triage})} {n}")
            lines += [
                "# HELP bedside_errors_total Rejected requests by kind (intake kinds, bad_request, too_large...)",
                "# TYPE bedside_errors_total counter",
            ]
            lines += [f"bedside_errors_total{_labels({'kind': k})} {n}" for k, n in sorted(self._errors.items())]
            lines += [
                "# HELP bedside_inference_seconds Model time per study (quality checks, preprocessing, inference)",
                "# TYPE bedside_inference_seconds histogram",
                *self._inference.lines("bedside_inference_seconds"),
                "# HELP bedside_study_seconds Time to create a study: decode, triage and durable commit",
                "# TYPE bedside_study_seconds histogram",
                *self._study_seconds.lines("bedside_study_seconds"),
            ]
        return "\n".join(lines) + "\n"

