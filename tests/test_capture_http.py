"""MJPEG over HTTP from a real ffmpeg on loopback: streaming, live triage, and the watchdog's
reconnects when the camera dies, freezes without disconnecting, and comes back - without leaking
threads, file descriptors or memory across 50 reconnects."""

from __future__ import annotations

import gc
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from camera_peer import MjpegServer
from loopback import wait_for
from device.capture.errors import CaptureError
from device.capture.live import LiveTriage
from device.capture.mjpeg import MjpegReader
from device.capture.sources import parse_source
from device.capture.stream import CONNECTING, STALLED, STREAMING, CaptureStream, Timing
from device.capture.watchdog import Watchdog

# Fast enough for 50 cycles in well under a minute, realistic in shape (doubling, capped).
FAST = Timing(stall_timeout_s=0.6, open_timeout_s=2.0, backoff_initial_s=0.05, backoff_max_s=0.4)


class Running:
    """A stream, its watchdog and optionally live triage, all stopped at the end."""

    def __init__(self, url: str, timing: Timing, triager=None):
        self.stream = CaptureStream("cam", parse_source(url), timing)
        self.watchdog = Watchdog([self.stream], interval_s=0.05)
        self.live = None
        if triager is not None:
            self.live = LiveTriage("cam", self.stream.slot, triager.triage_image, triager.manifest)

    def __enter__(self) -> "Running":
        if self.live is not None:
            self.live.start()
        self.stream.start()
        self.watchdog.start()
        return self

    def __exit__(self, *exc) -> None:
        self.watchdog.stop()
        self.stream.stop()
        if self.live is not None:
            self.live.stop()

    def streaming_since(self, frames: int, timeout: float) -> bool:
        """Streaming with frames arriving beyond `frames`."""
        return wait_for(
            lambda: self.stream.state == STREAMING and self.stream.status()["frames"] > frames, timeout
        )


def test_stream_is_read_and_triaged_live(xray_video: Path, shipped_triager):
    with MjpegServer(xray_video) as server, Running(server.url, FAST, shipped_triager) as run:
        assert run.streaming_since(0, 10)
        assert wait_for(lambda: run.live.stats()["processed"] >= 45, 10)
        status = run.stream.status()
        result = run.live.latest()
    assert status["state"] == STREAMING and status["reconnects"] == 0
    assert 20 <= status["fps"] <= 40  # ffmpeg -re paces the 30 fps video
    assert result.result.triage in ("URGENT", "ROUTINE", "UNGRADABLE")
    assert result.image.original_size == (720, 1280)
    assert max(result.image.pixels.shape[:2]) < 1280  # decoded at a reduced scale for the model
    assert result.frame.jpeg.startswith(b"\xff\xd8")  # the full frame is kept as received


def test_killed_camera_recovers_by_itself(xray_video: Path, state_changes):
    timing = Timing(stall_timeout_s=1.0, open_timeout_s=2.0, backoff_initial_s=0.1, backoff_max_s=1.0)
    with MjpegServer(xray_video) as server, Running(server.url, timing) as run:
        assert run.streaming_since(10, 10)
        server.kill()
        assert wait_for(lambda: run.stream.state in (STALLED, CONNECTING), 3)
        # Stay away through a few failed attempts: the back-off must not give up.
        reconnects = run.stream.status()["reconnects"]
        assert wait_for(lambda: run.stream.status()["reconnects"] >= reconnects + 3, 5), run.stream.status()
        frames = run.stream.status()["frames"]
        restarted = time.monotonic()
        server.start()
        assert run.streaming_since(frames, 5), run.stream.status()
        recovered_s = time.monotonic() - restarted
        states = [state for state, _ in state_changes()]
        status = run.stream.status()
    after_kill = states[states.index(STALLED) :]
    assert after_kill[:2] == [STALLED, CONNECTING] and after_kill[-1] == STREAMING
    assert recovered_s < 3.0
    assert status["reconnects"] >= 2


def test_frozen_camera_is_detected_as_stalled(xray_video: Path, state_changes):
    """The field failure peers miss: the connection stays open but no frame comes (SIGSTOP)."""
    with MjpegServer(xray_video) as server, Running(server.url, FAST) as run:
        assert run.streaming_since(5, 10)
        server.freeze()
        frozen = time.monotonic()
        assert wait_for(lambda: run.stream.state == STALLED, 3)
        detected_s = time.monotonic() - frozen
        assert any(reason.startswith("no new frame") for _, reason in state_changes())
        server.kill()
        frames = run.stream.status()["frames"]
        server.start()
        assert run.streaming_since(frames, 5)
    assert FAST.stall_timeout_s <= detected_s < FAST.stall_timeout_s + 1.0


def _threads_fds_rss() -> tuple[int, int, int]:
    gc.collect()
    fds = len(os.listdir("/proc/self/fd"))
    status = Path("/proc/self/status").read_text().splitlines()
    rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return threading.active_count(), fds, rss_kb


def test_fifty_reconnects_leak_no_threads_fds_or_memory(xray_video: Path, shipped_triager):
    server = MjpegServer(xray_video).start()
    try:
        with Running(server.url, FAST, shipped_triager) as run:
            assert run.streaming_since(0, 10)

            def cycle() -> None:
                server.kill()
                assert wait_for(lambda: run.stream.state != STREAMING, 3), "the kill went unnoticed"
                frames = run.stream.status()["frames"]
                server.start(wait=False)
                assert run.streaming_since(frames + 2, 10), run.stream.status()

            for _ in range(5):  # reach steady state (allocator pools, lazily created objects)
                cycle()
            threads0, fds0, rss0 = _threads_fds_rss()
            started = time.monotonic()
            for _ in range(50):
                cycle()
            elapsed = time.monotonic() - started
            threads1, fds1, rss1 = _threads_fds_rss()
            reconnects = run.stream.status()["reconnects"]
            processed = run.live.stats()["processed"]
    finally:
        server.kill()
    assert reconnects >= 55
    assert processed > 55 * 2
    assert threads1 == threads0
    assert fds1 <= fds0
    assert rss1 - rss0 < 8 * 1024, f"RSS grew by {(rss1 - rss0) / 1024:.1f} MiB over 50 reconnects"
    assert elapsed < 90
    print(f"50 reconnect cycles in {elapsed:.1f} s; threads {threads0}->{threads1}, fds {fds0}->{fds1}, "
          f"RSS {rss0 / 1024:.1f}->{rss1 / 1024:.1f} MiB")


def test_camera_that_is_not_there_yet_is_retried_until_it_appears(xray_video: Path, state_changes):
    server = MjpegServer(xray_video)
    with Running(server.url, FAST) as run:
        assert wait_for(lambda: run.stream.status()["reconnects"] >= 3, 5)
        status = run.stream.status()
        assert status["state"] in (STALLED, CONNECTING) and status["frames"] == 0
        assert any("refused" in reason for _, reason in state_changes())
        server.start()
        try:
            assert run.streaming_since(0, 5)
        finally:
            server.kill()


class Http10Camera(BaseHTTPRequestHandler):
    """An mjpg-streamer-like camera: HTTP/1.0 (the connection closes at the end), a proper
    multipart/x-mixed-replace response; sends its frames, then holds the connection open silently."""

    protocol_version = "HTTP/1.0"
    frames: list[bytes] = []
    release = threading.Event()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        for jpeg in self.frames:
            head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
            self.wfile.write(head.encode() + jpeg + b"\r\n")
        self.wfile.flush()
        self.release.wait(10)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http10_camera():
    Http10Camera.frames = [cv2.imencode(".jpg", np.full((48, 64), 40 * i, np.uint8))[1].tobytes() for i in range(3)]
    Http10Camera.release = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Http10Camera)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/?action=stream"
    Http10Camera.release.set()
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_http10_camera_is_read_and_a_blocked_read_is_interrupted(http10_camera: str):
    reader = MjpegReader(http10_camera, open_timeout_s=5, read_timeout_s=30)
    try:
        assert [reader.read() for _ in Http10Camera.frames] == Http10Camera.frames
        failure: list[BaseException] = []

        def blocked_read() -> None:
            try:
                reader.read()  # the camera sends nothing more: blocks until interrupted
            except CaptureError as exc:
                failure.append(exc)

        thread = threading.Thread(target=blocked_read)
        thread.start()
        assert not wait_for(lambda: not thread.is_alive(), 0.2)
        started = time.monotonic()
        reader.interrupt()
        thread.join(5)
        assert not thread.is_alive() and time.monotonic() - started < 2
        assert len(failure) == 1  # the read gave up with a CaptureError
    finally:
        reader.close()
