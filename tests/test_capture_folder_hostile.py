"""A capture folder holding a FIFO named like an image and a corrupt PNG: both are skipped and
counted, the source keeps streaming its good images (no flapping), and stopping it does not block."""

from __future__ import annotations

import os
import threading

import cv2
import numpy as np

from loopback import wait_for
from kiosk_support import kiosk_client

from device.capture.sources import parse_source
from device.capture.stream import STREAMING, CaptureStream, Timing
from device.capture.watchdog import Watchdog

FAST = Timing(stall_timeout_s=1.0, open_timeout_s=2.0, backoff_initial_s=0.05, backoff_max_s=0.2)


def _folder(tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    ok, jpeg = cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))
    (tmp_path / "a-good.jpg").write_bytes(jpeg.tobytes())
    os.mkfifo(tmp_path / "b-pipe.jpg")
    ok, png = cv2.imencode(".png", np.full((64, 64), 200, np.uint8))
    broken = bytearray(png.tobytes())
    broken[40:60] = bytes(20)
    (tmp_path / "c-corrupt.png").write_bytes(bytes(broken))
    return tmp_path


def test_fifos_and_corrupt_images_are_skipped_and_counted(tmp_path):
    stream = CaptureStream("folder", parse_source(f"file://{_folder(tmp_path)}?fps=50&loop=1"), FAST)
    watchdog = Watchdog([stream], interval_s=0.05)
    stream.start()
    watchdog.start()
    try:
        assert wait_for(lambda: stream.status()["frames"] >= 20, 10), stream.status()
        status = stream.status()
        assert status["state"] == STREAMING and status["skipped_files"] == 2
        assert status["reconnects"] == 0
    finally:
        watchdog.stop()
        stream.stop()
    assert "capture-folder" not in {t.name for t in threading.enumerate()}  # stop() did not give up waiting


def test_a_folder_of_nothing_but_bad_files_stalls_with_the_reason(tmp_path):
    folder = _folder(tmp_path)
    (folder / "a-good.jpg").unlink()
    stream = CaptureStream("bad", parse_source(f"file://{folder}?fps=50&loop=1"), FAST)
    stream.start()
    try:
        assert wait_for(lambda: "no readable images" in stream.status()["reason"], 10), stream.status()
    finally:
        stream.stop()


def _kiosk_with_folder(config, folder):
    """A form client of a kiosk whose one capture source plays `folder` in a loop."""
    from device.core.settings import KioskConfig

    data = config.model_dump(mode="json")
    data["capture"] = {"sources": [{"uri": f"file://{folder}?fps=20&loop=1", "name": "Folder"}]}
    return kiosk_client(KioskConfig.model_validate(data))


def test_the_live_page_says_how_many_files_a_folder_source_skipped(tmp_path, config):
    with _kiosk_with_folder(config, _folder(tmp_path / "frames")) as c:
        assert wait_for(lambda: c.get("/api/v1/sources/cam0").json["skipped_files"] == 2, 10)
        page = c.get("/live").get_data(as_text=True)
        assert "2 files skipped" in page and "check the folder" in page


def test_an_ungradable_frame_carries_no_score_in_the_latest_result(tmp_path, config):
    """Black frames (a lens cap): /latest says UNGRADABLE with the reason and no probability; what the
    model said is kept under ungraded_model_output."""
    frames = tmp_path / "black"
    frames.mkdir()
    ok, jpeg = cv2.imencode(".jpg", np.zeros((64, 64, 3), np.uint8))
    (frames / "a.jpg").write_bytes(jpeg.tobytes())
    with _kiosk_with_folder(config, frames) as c:
        assert wait_for(lambda: c.get("/api/v1/sources/cam0/latest").status_code == 200, 10)
        latest = c.get("/api/v1/sources/cam0/latest").json
        assert latest["triage"] == "UNGRADABLE" and latest["probability"] is None
        result = latest["result"]
        assert result["probabilities"] is None and result["label"] is None
        assert set(result["ungraded_model_output"]["probabilities"]) == {"NORMAL", "PNEUMONIA"}
