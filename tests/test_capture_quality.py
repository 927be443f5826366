"""Camera-frame quality: sharp, well exposed frames pass; blurred, dark, bright and capped ("no
image") frames are UNGRADABLE with the reason, end to end through live triage."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from camera_peer import sample_xrays
from loopback import wait_for
from device.capture.frame_quality import FrameQualityPolicy, frame_issues, frame_stats
from device.capture.live import LiveTriage
from device.capture.sources import parse_source
from device.capture.stream import STOPPED, CaptureStream, Timing
from device.intake import DecodedImage

POLICY = FrameQualityPolicy()


@pytest.fixture(scope="module")
def camera_frames() -> list[np.ndarray]:
    """The sample X-rays as 1280x720 gray camera frames (scaled to fill, centre-cropped)."""
    samples = sample_xrays()
    if not samples:
        pytest.skip("sample X-rays not found (datasets/chest-xray/fullres-samples)")
    frames = []
    for path in samples:
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        scale = max(1280 / gray.shape[1], 720 / gray.shape[0])
        big = cv2.resize(gray, (round(gray.shape[1] * scale), round(gray.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        y, x = (big.shape[0] - 720) // 2, (big.shape[1] - 1280) // 2
        frames.append(big[y : y + 720, x : x + 1280])
    return frames


def codes(pixels: np.ndarray) -> list[str]:
    img = DecodedImage(pixels=pixels, source_format="raw", original_size=pixels.shape[:2], bits_stored=8)
    return [issue.code for issue in frame_issues(frame_stats(img), POLICY)]


def test_sharp_well_exposed_frames_pass(camera_frames):
    assert [codes(f) for f in camera_frames] == [[] for _ in camera_frames]


def test_defocused_frames_are_blurred(camera_frames):
    # sigma 4 px on a 1280-wide frame: a camera clearly out of focus or moving
    assert all(codes(cv2.GaussianBlur(f, (0, 0), 4)) == ["blurred"] for f in camera_frames)


def test_lens_cap_and_no_signal_are_no_image():
    rng = np.random.default_rng(0)
    capped = rng.integers(0, 6, (720, 1280), dtype=np.uint8)  # black with a little sensor noise
    no_signal = np.full((720, 1280, 3), (16, 16, 180), np.uint8)  # a capture card's blue screen
    assert codes(capped) == ["no_image"]
    assert codes(no_signal) == ["no_image"]


def test_exposure(camera_frames):
    frame = camera_frames[0].astype(np.float32)
    dark = (frame * 0.15).astype(np.uint8)
    bright = (255 - (255 - frame) * 0.12).astype(np.uint8)
    assert codes(dark) == ["too_dark"]
    assert codes(bright) == ["too_bright"]


def test_capped_camera_reads_ungradable_with_the_reason(tmp_path: Path, shipped_triager):
    rng = np.random.default_rng(1)
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"cap{i}.jpg"), rng.integers(0, 5, (480, 640), dtype=np.uint8))
    stream = CaptureStream("cap", parse_source(f"file://{tmp_path}?fps=30"), Timing())
    live = LiveTriage("cap", stream.slot, shipped_triager.triage_image, shipped_triager.manifest)
    live.start()
    stream.start()
    try:
        assert wait_for(lambda: stream.state == STOPPED and live.stats()["processed"] >= 1, 10)
        result = live.latest().as_json()
    finally:
        stream.stop()
        live.stop()
    assert result["triage"] == "UNGRADABLE"
    issues = {i["code"]: i for i in result["result"]["quality"]["issues"]}
    assert "no_image" in issues and "lens cap" in issues["no_image"]["action"]
    assert issues["no_image"]["action"]
