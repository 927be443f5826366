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



SOURCE_STATES = ("streaming", "connecting", "stalled", "stopped")


def source_lines(sources: list[dict]) -> str:
    """Live capture sources (from CaptureManager.status()) in the Prometheus text format."""
    gauges = [
        ("bedside_source_state", "1 for the state the capture source is in", "gauge", None),
        ("bedside_source_fps", "Frames per second arriving from the source", "gauge", lambda s: s["fps"]),
        ("bedside_source_frames_total", "Frames received from the source", "counter", lambda s: s["frames"]),
        ("bedside_source_reconnects_total", "Reconnect attempts after a failure or stall", "counter",
         lambda s: s["reconnects"]),
        ("bedside_source_last_frame_age_seconds", "Seconds since the newest frame arrived", "gauge",
         lambda s: s["last_frame_age_s"]),
        ("bedside_source_triaged_fps", "Frames per second triaged live", "gauge", lambda s: s["triage"]["processed_fps"]),
        ("bedside_source_dropped_frames_total", "Frames replaced by a newer one before triage", "counter",
         lambda s: s["triage"]["dropped"]),
        ("bedside_source_latency_p95_seconds", "95th percentile frame-to-result latency (recent frames)", "gauge",
         lambda s: None if s["triage"]["latency_ms"]["p95"] is None else s["triage"]["latency_ms"]["p95"] / 1e3),
    ]
    lines = []
    for name, help_text, kind, value in gauges:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for s in sources:
            if value is None:
                for state in SOURCE_STATES:
                    labels = _labels({"source": s["id"], "state": state})
                    lines.append(f"{name}{labels} {int(s['state'] == state)}")
                continue
            v = value(s)
            if v is not None:
                lines.append(f"{name}{_labels({'source': s['id']})} {v:g}")
    return "\n".join(lines) + "\n" if lines else ""
