"""All capture sources of one process: per source a capture stream, a live triage loop and a live
view, plus one watchdog for all of them. The kiosk owns one manager; benchmarks and tests can use
it without the kiosk."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2

from device.capture.frames import Frame
from device.capture.live import LiveTriage, TriageFn
from device.capture.settings import CaptureSettings, SourceSettings, source_ids
from device.capture.sources import parse_source
from device.capture.stream import CaptureStream
from device.capture.view import LiveView
from device.capture.watchdog import Watchdog
from models.bundle import Manifest


@dataclass(frozen=True)
class Inference:
    """What a source is triaged with: an exam's single-owner triage function and its bundle."""

    exam_id: str
    triage: TriageFn
    manifest: Manifest
    # What the live view shows, e.g. "chest-xray-pneumonia 1.0.0 int8 onnxruntime"; asked each time,
    # because the kiosk may switch an exam to its GPU engine while a source is live.
    model: Callable[[], str]


Resolver = Callable[[str | None], Inference]


class LiveSource:
    def __init__(self, source_id: str, config: SourceSettings, inference: Inference, settings: CaptureSettings):
        self.id = source_id
        self.name = config.name or source_id
        self.exam_id = inference.exam_id
        self.stream = CaptureStream(source_id, parse_source(config.uri), settings.timing())
        self.live = LiveTriage(
            source_id,
            self.stream.slot,
            inference.triage,
            inference.manifest,
            settings.quality.policy(),
            settings.smoothing_frames,
        )
        self.view = LiveView(self.stream, self.live, inference.model, settings.view_max_width, settings.view_fps,
                             settings.stall_timeout_s)

    def start(self) -> None:
        self.live.start()
        self.stream.start()

    def stop(self) -> None:
        self.stream.stop()  # closes the slot, which ends the triage loop's wait
        self.live.stop()

    def status(self) -> dict:
        return {**self.stream.status(), "name": self.name, "exam": self.exam_id, "triage": self.live.stats()}


def frame_file(frame: Frame) -> tuple[bytes, str]:
    """The frame as a file to store, byte-exact where possible: a JPEG as received from the camera,
    decoded pixels as a lossless PNG. Returns (bytes, format)."""
    if frame.jpeg is not None:
        return frame.jpeg, "jpeg"
    ok, buf = cv2.imencode(".png", frame.bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("cannot encode the frame as PNG")
    return buf.tobytes(), "png"


class CaptureManager:
    def __init__(self, settings: CaptureSettings, resolve: Resolver):
        """Raises what `resolve` raises for a source whose exam does not exist."""
        self.settings = settings
        self._closing = threading.Event()
        self._sources = {
            source_id: LiveSource(source_id, config, resolve(config.exam), settings)
            for source_id, config in zip(source_ids(settings.sources), settings.sources)
        }
        self._watchdog = Watchdog([s.stream for s in self._sources.values()], settings.watchdog_interval_s)
        self._started = False

    def start(self) -> None:
        if not self._sources:
            return  # no watchdog thread for nothing to watch
        for source in self._sources.values():
            source.start()
        self._watchdog.start()
        self._started = True

    def end_views(self) -> None:
        """End open live views (each loop checks `closing`) so the web server's threads come free."""
        self._closing.set()

    def close(self) -> None:
        """Stop every source and release its device; ends open live views."""
        self.end_views()
        if self._started:
            self._watchdog.stop()
        for source in self._sources.values():
            source.stop()

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def get(self, source_id: str) -> LiveSource | None:
        return self._sources.get(source_id)

    def __iter__(self) -> Iterator[LiveSource]:
        return iter(self._sources.values())

    def __len__(self) -> int:
        return len(self._sources)

    def status(self) -> list[dict]:
        return [source.status() for source in self._sources.values()]
