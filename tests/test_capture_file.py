"""File sources (a video made by ffmpeg, a folder of images) through capture and live triage; the
watchdog restarting a capture thread that died; smoothing; the stored frame being the exact one."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from camera_peer import make_frames, sample_xrays
from loopback import wait_for
from device.capture.errors import CaptureError
from device.capture.live import LiveTriage
from device.capture.manager import frame_file
from device.capture.readers import open_reader
from device.capture.sources import parse_source
from device.capture.stream import CONNECTING, STALLED, STOPPED, STREAMING, CaptureStream, Timing
from device.capture.watchdog import Watchdog

FAST = Timing(stall_timeout_s=1.0, open_timeout_s=2.0, backoff_initial_s=0.05, backoff_max_s=0.2)


@pytest.fixture(scope="module")
def xray_frames(tmp_path_factory) -> list[Path]:
    samples = sample_xrays()[:4]
    if not samples:
        pytest.skip("sample X-rays not found (datasets/chest-xray/fullres-samples)")
    return make_frames(tmp_path_factory.mktemp("frames"), samples, (640, 480))


def run_until_done(uri: str, triager, timeout: float = 20, smoothing: int = 1):
    stream = CaptureStream("file", parse_source(uri), FAST)
    live = LiveTriage("file", stream.slot, triager.triage_image, triager.manifest, smoothing_frames=smoothing)
    watchdog = Watchdog([stream], 0.05)
    live.start()
    stream.start()
    watchdog.start()
    try:
        ended = wait_for(lambda: stream.state == STOPPED, timeout)
        wait_for(lambda: live.stats()["processed"] > 0, 5)
        return ended, stream, live
    finally:
        watchdog.stop()
        stream.stop()
        live.stop()


def test_video_file_plays_to_its_end_and_is_triaged(xray_video: Path, shipped_triager):
    ended, stream, live = run_until_done(f"file://{xray_video}?fps=120", shipped_triager)
    status = stream.status()
    assert ended and status["reason"] == "end of the recording"
    assert status["frames"] == 90  # 6 images x 0.5 s at 30 fps
    assert status["reconnects"] == 0
    stats = live.stats()
    assert stats["processed"] + stats["dropped"] + stats["errors"] <= 90
    assert stats["processed"] >= 30 and stats["errors"] == 0
    latest = live.latest()
    assert latest.image.original_size == (720, 1280)
    assert latest.frame.bgr is not None  # OpenCV decoded it: stored as lossless PNG
    assert latest.result.model.precision == "int8"


def test_looped_video_keeps_streaming(xray_video: Path):
    stream = CaptureStream("loop", parse_source(f"file://{xray_video}?loop=1&fps=200"), FAST)
    stream.start()
    try:
        assert wait_for(lambda: stream.status()["frames"] > 200, 10)
        assert stream.state == STREAMING
    finally:
        stream.stop()
    assert stream.state == STOPPED


def test_folder_of_jpegs_keeps_frames_as_received(xray_frames: list[Path], shipped_triager):
    folder = xray_frames[0].parent
    ended, stream, live = run_until_done(f"file://{folder}?fps=20", shipped_triager)
    assert ended and stream.status()["frames"] == len(xray_frames)
    latest = live.latest()
    data, fmt = frame_file(latest.frame)
    assert fmt == "jpeg" and data == xray_frames[-1].read_bytes()  # byte for byte what was triaged
    assert latest.image.original_size == (480, 640)
    assert latest.result.quality.ok, latest.result.quality.issues


def test_png_frames_are_stored_losslessly(tmp_path: Path, xray_frames: list[Path], shipped_triager):
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, path in enumerate(xray_frames[:2]):
        cv2.imwrite(str(folder / f"f{i}.png"), cv2.imread(str(path), cv2.IMREAD_COLOR))
    ended, _, live = run_until_done(f"file://{folder}?fps=20", shipped_triager)
    frame = live.latest().frame
    data, fmt = frame_file(frame)
    assert ended and fmt == "png"
    assert np.array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), frame.bgr)


def test_smoothing_is_reported_as_such(xray_frames: list[Path], shipped_triager):
    folder = xray_frames[0].parent
    _, _, live = run_until_done(f"file://{folder}?fps=20&loop=1", shipped_triager, timeout=1.5, smoothing=3)
    latest = live.latest().as_json()
    assert latest["smoothed"]["window"] == 3
    assert 1 <= latest["smoothed"]["frames"] <= 3
    assert latest["triage"] == latest["smoothed"]["triage"]
    assert latest["probability"] == latest["smoothed"]["probability"]
    assert latest["result"]["triage"] in ("URGENT", "ROUTINE")  # the frame's own result is kept too


def test_missing_file_is_a_stall_with_the_reason(tmp_path: Path):
    stream = CaptureStream("gone", parse_source(f"file://{tmp_path}/nothing.mp4"), FAST)
    stream.start()
    try:
        assert wait_for(lambda: stream.status()["reconnects"] >= 2, 5)
        assert "no such file" in stream.status()["reason"]
    finally:
        stream.stop()


def test_watchdog_restarts_a_capture_thread_that_died(xray_video: Path, state_changes):
    """A bug in the capture thread itself (here: delivering a frame raising once) kills the thread;
    the watchdog notices and starts a new one, which then streams."""
    stream = CaptureStream("flaky", parse_source(f"file://{xray_video}?loop=1"), FAST)
    deliver, calls = stream._deliver, []

    def flaky_deliver(payload) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected fault")
        deliver(payload)

    stream._deliver = flaky_deliver
    watchdog = Watchdog([stream], 0.05)
    stream.start()
    watchdog.start()
    try:
        assert wait_for(lambda: stream.state == STREAMING, 5), stream.status()
        status = stream.status()
    finally:
        watchdog.stop()
        stream.stop()
    assert status["thread_restarts"] == 1
    assert any("injected fault" in reason for _, reason in state_changes())


class BrokenReader:
    """Opens, then fails every read with something that is not a CaptureError."""

    def __init__(self, closed: list[int]):
        self._closed = closed

    def read(self):
        raise PermissionError(13, "Permission denied")

    def interrupt(self) -> None:
        pass

    def close(self) -> None:
        self._closed.append(1)


@pytest.mark.parametrize("fault", ["open", "read"])
def test_any_error_opening_or_reading_is_retried_with_back_off(tmp_path: Path, fault: str, caplog, state_changes):
    """Not only CaptureError: a ValueError from a bad port, a PermissionError from a folder, a cv2.error
    are failed attempts, retried with the capped back-off, with no thread restarts and one log line."""
    attempts: list[float] = []
    closed: list[int] = []

    def opener(spec, open_timeout_s, read_timeout_s):
        attempts.append(time.monotonic())
        if fault == "open":
            raise ValueError("Port out of range 0-65535")
        return BrokenReader(closed)

    timing = Timing(stall_timeout_s=1.0, open_timeout_s=1.0, backoff_initial_s=0.05, backoff_max_s=0.2)
    stream = CaptureStream("broken", parse_source(f"file://{tmp_path}/x.mp4"), timing, opener=opener)
    watchdog = Watchdog([stream], 0.02)
    stream.start()
    watchdog.start()
    try:
        assert wait_for(lambda: len(attempts) >= 7, 5)
        status = stream.status()
    finally:
        watchdog.stop()
        stream.stop()
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    expected = [min(0.05 * 2**i, 0.2) for i in range(len(gaps))]
    assert all(gap >= want * 0.9 for gap, want in zip(gaps, expected)), gaps
    assert status["thread_restarts"] == 0 and status["state"] in (STALLED, CONNECTING)
    why = "ValueError: Port out of range" if fault == "open" else "PermissionError: [Errno 13] Permission denied"
    assert any(state == STALLED and reason.startswith(why) for state, reason in state_changes())
    assert len(closed) == (len(attempts) if fault == "read" else 0)  # each opened reader was closed
    stalls = [r for r in caplog.records if r.name == "device.capture.stream" and r.levelno >= logging.WARNING]
    assert len(stalls) == 1 and stalls[0].exc_info is None


def test_folder_without_images_is_refused(tmp_path: Path):
    with pytest.raises(CaptureError, match="no images"):
        open_reader(parse_source(f"file://{tmp_path}"), 1.0, 1.0)
