"""Real-time triage of one source: a single worker thread that always takes the newest frame.

The worker waits on the source's newest-frame slot, so while it is busy the capture thread simply
replaces the frame in the slot: frames it never saw count as dropped, and it can never fall behind
(latency is bounded by one inference, not by a queue). Each result keeps the exact frame it was
computed from, which is what a capture stores.

Optional smoothing (device/decision/smoothing.py) holds a result steady; it is reported separately
from the per-frame result and always labelled as smoothed.

The results handed to a screen (``shown``) are kept a little longer than the newest, so that the live
page can fetch the picture of exactly the frame whose result it shows, and Capture can store exactly
that pair, even after newer frames were judged.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from device.capture.analysis import FrameDecodeError, analysis_image
from device.capture.frame_quality import FrameQualityPolicy, frame_issues, frame_stats, gate
from device.capture.frames import Frame, FrameSlot, NewestSlot
from device.capture.stats import LatencyWindow, RateMeter
from device.decision.smoothing import Smoothed, Smoother
from device.decision.triage import TriageResult
from device.intake import DecodedImage
from models.reading import ReducedDecode
from device.machine.clock import utc_iso
from models.bundle import Manifest

log = logging.getLogger(__name__)

TriageFn = Callable[[DecodedImage, str, float], TriageResult]
# Results handed to screens and kept for their picture and a capture: two viewers polling a few
# times a second hold what they show for over a second. Each keeps its frame (a raw camera frame
# can be a few MB), hence few.
SHOWN_KEPT = 10


@dataclass(frozen=True)
class LiveResult:
    source_id: str
    frame: Frame
    image: DecodedImage  # what the model saw (reduced); frame holds the full-resolution original
    result: TriageResult
    smoothed: Smoothed | None
    latency_ms: float  # frame complete -> result ready

    @property
    def seq(self) -> int:
        return self.frame.seq

    @property
    def display_triage(self) -> str:
        return self.smoothed.triage if self.smoothed else self.result.triage

    @property
    def display_probability(self) -> float | None:
        """None when UNGRADABLE: a frame the model cannot assess has no score."""
        return self.smoothed.probability if self.smoothed else self.result.urgent_probability

    def as_json(self) -> dict:
        """The newest result, as its TriageResult and Smoothed hold it (an UNGRADABLE one has no score)."""
        probability = self.display_probability
        return {
            "source": self.source_id,
            "frame": {
                "seq": self.frame.seq,
                "captured_at": utc_iso(self.frame.wall),
                "age_s": round(time.monotonic() - self.frame.captured, 3),
                "size": list(self.image.original_size),
            },
            "latency_ms": round(self.latency_ms, 3),
            "triage": self.display_triage,
            "probability": None if probability is None else round(probability, 6),
            "smoothed": self.smoothed.as_json() if self.smoothed else None,
            "result": self.result.as_json(),
        }


class LiveTriage:
    def __init__(
        self,
        source_id: str,
        slot: FrameSlot,
        triage: TriageFn,
        manifest: Manifest,
        frame_policy: FrameQualityPolicy = FrameQualityPolicy(),
        smoothing_frames: int = 1,
    ):
        self.source_id = source_id
        self._slot = slot
        self._triage = triage
        self._manifest = manifest
        self._plan = ReducedDecode.for_manifest(manifest)
        self._policy = frame_policy
        self._smoother = Smoother(smoothing_frames, manifest)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"triage-{source_id}", daemon=True)
        self._results: NewestSlot[LiveResult] = NewestSlot()
        self._shown: OrderedDict[int, LiveResult] = OrderedDict()  # by frame seq, oldest first
        self._lock = threading.Lock()  # the counters
        self._processed = 0
        self._dropped = 0
        self._errors = 0
        self._fps = RateMeter()
        self._latency = LatencyWindow()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._results.close()

    def latest(self) -> LiveResult | None:
        return self._results.newest()

    def show(self) -> LiveResult | None:
        """The newest result, kept (``shown``) because a screen is about to show it."""
        result = self._results.newest()
        if result is not None:
            with self._lock:
                self._shown[result.seq] = result
                self._shown.move_to_end(result.seq)
                while len(self._shown) > SHOWN_KEPT:
                    self._shown.popitem(last=False)
        return result

    def shown(self, seq: int) -> LiveResult | None:
        """The result of frame ``seq`` if a screen was shown it lately (or it is the newest), else None."""
        newest = self._results.newest()
        if newest is not None and newest.seq == seq:
            return newest
        with self._lock:
            return self._shown.get(seq)

    def wait_result(self, after_seq: int, timeout: float) -> LiveResult | None:
        """The newest result if its frame seq is above `after_seq`, waiting up to `timeout`."""
        return self._results.wait_newer(after_seq, timeout)

    def stats(self) -> dict:
        with self._lock:
            processed, dropped, errors = self._processed, self._dropped, self._errors
        return {
            "processed_fps": round(self._fps.rate(), 2),
            "processed": processed,
            "dropped": dropped,
            "errors": errors,
            "latency_ms": self._latency.percentiles(),
        }

    def _run(self) -> None:
        last_seq = 0
        while not self._stop.is_set():
            frame = self._slot.wait_newer(last_seq, timeout=0.5)
            if frame is None:
                if self._slot.closed:
                    return
                continue
            skipped = frame.seq - last_seq - 1 if last_seq else 0
            last_seq = frame.seq
            try:
                live = self._process(frame)
            except FrameDecodeError as exc:
                log.warning("source %s: frame %d skipped: %s", self.source_id, frame.seq, exc)
                live = None
            except Exception:  # one bad frame must not end live triage for this source
                log.exception("source %s: triage of frame %d failed", self.source_id, frame.seq)
                live = None
            with self._lock:
                self._dropped += skipped
                if live is None:
                    self._errors += 1
                else:
                    self._processed += 1
            if live is not None:
                self._results.put(live)  # after the count: whoever sees the result also sees it counted
                self._fps.tick(time.monotonic())
                self._latency.add(live.latency_ms)

    def _process(self, frame: Frame) -> LiveResult:
        img, decode_ms = analysis_image(frame, self._plan)
        t0 = time.perf_counter()
        issues = frame_issues(frame_stats(img), self._policy)
        quality_ms = (time.perf_counter() - t0) * 1e3
        result = self._triage(img, f"{self.source_id} frame {frame.seq}", decode_ms)
        result = gate(result, issues)
        result = dataclasses.replace(result, timings_ms={**result.timings_ms, "frame_quality": quality_ms})
        smoothed = self._smoother.add(result, frame.captured)
        latency_ms = (time.monotonic() - frame.captured) * 1e3
        return LiveResult(
            self.source_id, frame, img, result, smoothed, latency_ms
        )
