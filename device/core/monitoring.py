"""What /metrics exposes, through prometheus-client: one registry per kiosk (not the library's global
one, so that several kiosks in one process, as in the tests, count apart), the study counters and
latency histograms, and the live capture sources read from their status at each scrape."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # the text format every Prometheus reads


class Metrics:
    def __init__(self, exams: Iterable[str], triage_categories: Iterable[str],
                 sources: Callable[[], list[dict]] = list, choices: Callable[[], dict[str, dict]] = dict,
                 watched: Callable[[], dict] = dict):
        self.registry = CollectorRegistry()
        self._is_ready = False
        self._ready = Gauge("bedside_ready", "1 when the models are loaded and warmed up and the store is open",
                            registry=self.registry)
        self._studies = Counter("bedside_studies", "Studies created since start, by exam and triage category",
                                ["exam", "triage"], registry=self.registry)
        self._errors = Counter("bedside_errors", "Rejected requests by kind (intake kinds, bad_request, too_large...)",
                               ["kind"], registry=self.registry)
        self._inference = Histogram(
            "bedside_inference_seconds", "Model time per study (quality checks, preprocessing, inference)",
            buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )
        self._study_seconds = Histogram(
            "bedside_study_seconds", "Time to create a study: decode, triage and durable commit",
            buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )
        for exam in exams:  # every series exists from the start, at 0
            for triage in triage_categories:
                self._studies.labels(exam, triage)
        self.registry.register(SourceCollector(sources))
        self.registry.register(BackendChoiceCollector(choices))
        self.registry.register(WatchedCollector(watched))

    @property
    def ready(self) -> bool:
        return self._is_ready

    @ready.setter
    def ready(self, value: bool) -> None:
        self._is_ready = value
        self._ready.set(int(value))

    def watch_drift(self, status: Callable[[], dict]) -> None:
        """Export the drift monitor's status (device/core/drift_monitor.py) at each scrape."""
        self.registry.register(DriftCollector(status))

    def study_created(self, exam: str, triage: str, inference_s: float, total_s: float) -> None:
        self._studies.labels(exam, triage).inc()
        self._inference.observe(inference_s)
        self._study_seconds.observe(total_s)

    def error(self, kind: str) -> None:
        self._errors.labels(kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


SOURCE_STATES = ("streaming", "connecting", "stalled", "stopped")
# name, help, kind, value from a source's status (CaptureManager.status()); None leaves the sample out
SOURCE_METRICS: tuple[tuple[str, str, str, Callable[[dict], float | None]], ...] = (
    ("bedside_source_fps", "Frames per second arriving from the source", "gauge", lambda s: s["fps"]),
    ("bedside_source_frames_total", "Frames received from the source", "counter", lambda s: s["frames"]),
    ("bedside_source_reconnects_total", "Reconnect attempts after a failure or stall", "counter",
     lambda s: s["reconnects"]),
    ("bedside_source_skipped_files", "Files a folder source skipped (not regular files, or undecodable)", "gauge",
     lambda s: s["skipped_files"]),
    ("bedside_source_last_frame_age_seconds", "Seconds since the newest frame arrived", "gauge",
     lambda s: s["last_frame_age_s"]),
    ("bedside_source_triaged_fps", "Frames per second triaged live", "gauge", lambda s: s["triage"]["processed_fps"]),
    ("bedside_source_dropped_frames_total", "Frames replaced by a newer one before triage", "counter",
     lambda s: s["triage"]["dropped"]),
    ("bedside_source_latency_p95_seconds", "95th percentile frame-to-result latency (recent frames)", "gauge",
     lambda s: None if s["triage"]["latency_ms"]["p95"] is None else s["triage"]["latency_ms"]["p95"] / 1e3),
)


class SourceCollector(Collector):
    """The live capture sources, from their status at scrape time."""

    def __init__(self, sources: Callable[[], list[dict]]):
        self._sources = sources

    def collect(self) -> Iterable[Metric]:
        sources = self._sources()
        state = GaugeMetricFamily("bedside_source_state", "1 for the state the capture source is in",
                                  labels=["source", "state"])
        for s in sources:
            for name in SOURCE_STATES:
                state.add_metric([s["id"], name], int(s["state"] == name))
        yield state
        for name, help_text, kind, value in SOURCE_METRICS:
            family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, help_text, labels=["source"])
            for s in sources:
                v = value(s)
                if v is not None:
                    family.add_metric([s["id"]], v)
            yield family


class BackendChoiceCollector(Collector):
    """Each exam's backend choice (device/runtime/backend_choice.py): which candidate it serves on, and the
    batch-1 latency measured for every candidate that passed its self-test."""

    def __init__(self, choices: Callable[[], dict[str, dict]]):
        self._choices = choices

    def collect(self) -> Iterable[Metric]:
        labels = ["exam", "backend", "precision", "file"]
        served = GaugeMetricFamily("bedside_backend_served", "1 for the backend and variant an exam serves on, "
                                   "0 for the other candidates measured at start", labels=labels)
        p50 = GaugeMetricFamily("bedside_backend_latency_p50_seconds",
                                "Batch-1 model latency measured at start (median), by candidate", labels=labels)
        p99 = GaugeMetricFamily("bedside_backend_latency_p99_seconds",
                                "Batch-1 model latency measured at start (99th percentile), by candidate",
                                labels=labels)
        for exam, choice in self._choices().items():
            chosen = choice["served"]
            rows = choice["measured"] or [{**chosen, "p50_ms": None, "p99_ms": None}]
            for m in rows:
                key = [exam, m["backend"], m["precision"], m["file"]]
                served.add_metric(key, int((m["backend"], m["file"]) == (chosen["backend"], chosen["file"])))
                if m["p50_ms"] is not None:
                    p50.add_metric(key, m["p50_ms"] / 1e3)
                    p99.add_metric(key, m["p99_ms"] / 1e3)
        yield from (served, p50, p99)


class DriftCollector(Collector):
    """Each exam's drift state (one series per state, 1 for the current one: the fleet's alert rules
    watch ``bedside_drift_state{state="drift"}``), every signal's PSI and its limits, the window's
    fill, the operating point in force, whether acceptance is needed again, and the reviewers'
    observed agreement."""

    def __init__(self, status: Callable[[], dict]):
        self._status = status

    def collect(self) -> Iterable[Metric]:
        status = self._status()
        state = GaugeMetricFamily("bedside_drift_state", "1 for the drift monitor state an exam is in (collecting, "
                                  "ok, watch, drift)", labels=["exam", "state"])
        psi = GaugeMetricFamily("bedside_drift_psi", "Population-stability index of a signal over the exam's "
                                "window against its reference", labels=["exam", "signal"])
        limit = GaugeMetricFamily("bedside_drift_psi_limit", "The PSI above which a signal reads watch or drift at "
                                  "the window's size", labels=["exam", "signal", "level"])
        window = GaugeMetricFamily("bedside_drift_window_studies", "Studies in the exam's drift window", labels=["exam"])
        threshold = GaugeMetricFamily("bedside_operating_point_threshold", "The threshold the exam decides at, and "
                                      "whose it is (site: accepted on local cases; bundle: the model's own)",
                                      labels=["exam", "source"])
        again = GaugeMetricFamily("bedside_acceptance_needed", "1 when an earlier bundle of the exam was accepted on "
                                  "this site and the one served now is not", labels=["exam"])
        agreement = GaugeMetricFamily("bedside_review_agreement_ratio", "Share of reviews that agreed with the "
                                      "triage (over the latest weeks with answers)", labels=["exam"])
        for exam, entry in status["exams"].items():
            for name in status["states"]:
                state.add_metric([exam, name], int(entry["state"] == name))
            for s in entry["signals"]:
                psi.add_metric([exam, s["name"]], s["psi"])
                limit.add_metric([exam, s["name"], "watch"], s["watch_limit"])
                limit.add_metric([exam, s["name"], "drift"], s["drift_limit"])
            window.add_metric([exam], entry["window"]["studies"])
            threshold.add_metric([exam, entry["operating_point"]["source"]], entry["operating_point"]["threshold"])
            again.add_metric([exam], int(entry["acceptance"]["needed_again"]))
            if entry["agreement"]["share"] is not None:
                agreement.add_metric([exam], entry["agreement"]["share"])
        yield from (state, psi, limit, window, threshold, again, agreement)


class WatchedCollector(Collector):
    """What a fleet's alert rules watch (systemd/prometheus/bedside-alerts.yml), read from the running
    appliance at each scrape: ``watched()`` gives ``inference`` (each exam's worker), ``storage`` (free
    and reserve bytes), ``outbox`` (items by destination and state), ``remote`` (exam -> who answers,
    for exams on a central node) and ``rolled_back`` (installed exam -> whether it serves an older
    bundle than the newest it holds); a part that is missing is left out."""

    def __init__(self, watched: Callable[[], dict]):
        self._watched = watched

    def collect(self) -> Iterable[Metric]:
        w = self._watched()
        families = [
            ("bedside_inference_stuck", "1 while the exam's model has been in one call longer than models.stuck_after_s",
             ["exam"], [([i["exam"]], int(i["stuck"])) for i in w.get("inference", [])]),
            ("bedside_inference_busy_seconds", "How long the exam's model has been in its current call (0: idle)",
             ["exam"], [([i["exam"]], i["busy_s"]) for i in w.get("inference", [])]),
            ("bedside_outbox_items", "Results in the outbox by destination and state (queued, sending, sent, failed)",
             ["destination", "state"], [([o["destination"], o["state"]], o["count"]) for o in w.get("outbox", [])]),
            ("bedside_remote_fallback", "1 while an exam set to a central node is triaged by this kiosk's own model",
             ["exam"], [([exam], int(r["state"] == "local")) for exam, r in w.get("remote", {}).items()]),
            ("bedside_update_rolled_back", "1 while an installed exam serves an older bundle than the newest it holds",
             ["exam"], [([exam], int(back)) for exam, back in w.get("rolled_back", {}).items()]),
        ]
        storage = w.get("storage")
        if storage is not None:
            families += [("bedside_storage_free_bytes", "Free space in the data dir", [], [([], storage["free_bytes"])]),
                         ("bedside_storage_reserve_bytes", "Free space below which new studies are refused (507)", [],
                          [([], storage["reserve_bytes"])])]
        for name, help_text, labels, samples in families:
            family = GaugeMetricFamily(name, help_text, labels=labels)
            for values, value in samples:
                family.add_metric(values, value)
            yield family
