"""Live capture in the kiosk: the sources API, the live view (each picture the judged frame with its
own result, its text readable), capture into the store (the exact frame on the screen with its
result), health and metrics, the pages, the config; and end to end, a real `bedside serve --source`
on an ffmpeg MJPEG camera that is killed and comes back."""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from camera_peer import make_frames, MjpegServer, sample_xrays
from loopback import free_port, wait_for

from device.core.settings import ConfigError, KioskConfig, load_config
from kiosk_support import SHIPPED, form_client, running_server, shipped_bundle


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory) -> Path:
    samples = sample_xrays()[:3]
    if not samples:
        pytest.skip("sample X-rays not found (datasets/chest-xray/fullres-samples)")
    return make_frames(tmp_path_factory.mktemp("live"), samples, (640, 480))[0].parent


@pytest.fixture
def live_client(config: KioskConfig, frames_dir: Path):
    """The kiosk with two sources: a looping folder of JPEG frames, and a camera that is not there."""
    from device.kiosk import create_app
    from device.appliance.context import appliance_of

    data = config.model_dump(mode="json")
    data["capture"] = {
        "sources": [
            {"uri": f"file://{frames_dir}?fps=10&loop=1", "name": "Bench camera"},
            {"id": "absent", "uri": f"http://127.0.0.1:{free_port()}/stream"},
        ],
        "backoff_initial_s": 0.1,
        "backoff_max_s": 0.5,
    }
    app = create_app(KioskConfig.model_validate(data))
    app.config["TESTING"] = True
    try:
        with form_client(app) as c:
            assert wait_for(lambda: c.get("/api/v1/sources/cam0/latest").status_code == 200, 10)
            yield c
    finally:
        appliance_of(app).close()


def test_sources_are_listed_with_their_state(live_client):
    assert wait_for(lambda: live_client.get("/api/v1/sources/cam0").json["frames"] >= 4, 5)
    r = live_client.get("/api/v1/sources")
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    by_id = {s["id"]: s for s in r.json["sources"]}
    cam = by_id["cam0"]
    assert cam["state"] == "streaming" and cam["name"] == "Bench camera"
    assert cam["uri"].startswith("file://") and cam["frames"] > 0 and cam["reconnects"] == 0
    assert cam["last_frame_age_s"] < 1.0 and 2 <= cam["fps"] <= 15  # the folder plays at fps=10
    assert by_id["absent"]["state"] in ("stalled", "connecting")
    assert "refused" in by_id["absent"]["reason"] or by_id["absent"]["state"] == "connecting"
    assert isinstance(r.json["devices"], list)


def test_latest_result(live_client):
    r = live_client.get("/api/v1/sources/cam0/latest")
    body = r.json
    assert body["state"] == "streaming" and body["source"] == "cam0"
    assert body["triage"] in ("URGENT", "ROUTINE", "UNGRADABLE")
    assert body["result"]["model"]["id"] == "tiny-test"
    assert body["frame"]["size"] == [480, 640] and body["latency_ms"] > 0
    assert live_client.get("/api/v1/sources/absent/latest").status_code == 404
    assert live_client.get("/api/v1/sources/nope/latest").status_code == 404


def test_capture_stores_the_exact_frame_that_was_triaged(live_client, frames_dir: Path):
    r = live_client.post("/api/v1/sources/cam0/capture", json={"reference": "MRN-7", "operator": "nurse b"})
    assert r.status_code == 201, r.json
    study = r.json
    assert r.headers["Location"] == f"/api/v1/studies/{study['id']}"
    assert study["source"] == "capture:cam0" and study["reference"] == "MRN-7" and study["operator"] == "nurse b"
    capture = study["result"]["capture"]
    seq = capture["frame_seq"]
    files = sorted(frames_dir.glob("*.jpg"))
    expected = files[(seq - 1) % len(files)].read_bytes()  # the folder source plays them in order, looping
    image = live_client.get(f"/api/v1/studies/{study['id']}/image")
    assert image.status_code == 200 and image.data == expected
    assert study["image"]["sha256"] == hashlib.sha256(expected).hexdigest()
    assert study["image"]["media_type"] == "image/jpeg"
    assert (study["image"]["height"], study["image"]["width"]) == (480, 640)
    assert study["filename"] == f"cam0-frame{seq}.jpg"
    listed = live_client.get("/api/v1/studies?q=MRN-7").json
    assert [s["id"] for s in listed["studies"]] == [study["id"]]
    assert live_client.get(f"/api/v1/studies/{study['id']}/heatmap").status_code == 200


def test_the_picture_shown_and_the_capture_are_the_frame_of_the_result_shown(live_client, frames_dir: Path):
    """/latest names the picture of its own frame; that picture and a capture naming the frame stay
    that frame's after newer frames were judged (the folder plays at 10 fps)."""
    shown = live_client.get("/api/v1/sources/cam0/latest").json
    seq = shown["frame"]["seq"]
    assert shown["picture"] == f"/api/v1/sources/cam0/frames/{seq}"
    # Asked about three times a second, a 10 fps source judges frames no screen is handed (not kept).
    handed = {seq}
    deadline = time.monotonic() + 10
    while not (max(handed) >= seq + 3 and set(range(seq, max(handed))) - handed) and time.monotonic() < deadline:
        time.sleep(0.3)
        handed.add(live_client.get("/api/v1/sources/cam0/latest").json["frame"]["seq"])
    unseen = min(set(range(seq, max(handed))) - handed)
    picture = live_client.get(shown["picture"])
    assert picture.status_code == 200 and picture.mimetype == "image/jpeg" and picture.headers["Cache-Control"] == "no-store"
    r = live_client.post("/api/v1/sources/cam0/capture", json={"reference": "MRN-8", "frame": seq})
    assert r.status_code == 201, r.json
    study = r.json
    assert study["result"]["capture"]["frame_seq"] == seq and study["triage"] == shown["triage"]
    assert study["result"]["threshold"] == shown["result"]["threshold"]
    files = sorted(frames_dir.glob("*.jpg"))
    assert live_client.get(f"/api/v1/studies/{study['id']}/image").data == files[(seq - 1) % len(files)].read_bytes()
    # A frame no screen was shown is not kept: neither its picture nor a capture of it.
    assert live_client.get(f"/api/v1/sources/cam0/frames/{unseen}").status_code == 404
    gone = live_client.post("/api/v1/sources/cam0/capture", json={"frame": unseen})
    assert gone.status_code == 409
    assert f"frame {unseen}, the one on the screen, is no longer kept" in gone.json["error"]["message"]
    assert live_client.post("/api/v1/sources/cam0/capture", json={"frame": "7"}).status_code == 400
    page = live_client.post("/live/cam0/capture", data={"reference": "bed 5", "frame": str(seq)})
    assert page.status_code == 303
    study_id = int(page.headers["Location"].split("/")[2].split("?")[0])
    assert live_client.get(f"/api/v1/studies/{study_id}").json["result"]["capture"]["frame_seq"] == seq
    # The stream (the page without script) shows the same pairs: a frame with its own result.
    from device.appliance.context import appliance_of

    _, (frame_seq, result_seq, *_) = appliance_of(live_client.application).capture.get("cam0").view.snapshot()
    assert frame_seq == result_seq > 0


def test_the_live_pictures_text_is_readable_where_the_kiosk_shows_it():
    """Its text, small frames included, is drawn at least 3% of the picture's width tall: 14 px or
    more where the kiosk shows the picture (about 0.6 of its size at 1024x600)."""
    import numpy as np

    from device.capture.frames import Frame
    from device.capture.overlay import OverlayInfo, draw, view_pixels

    for width in (224, 640, 960):
        frame = Frame(seq=1, captured=0.0, wall=0.0, bgr=np.full((width * 3 // 4, width, 3), 128, np.uint8))
        pixels = draw(view_pixels(frame, 960), OverlayInfo("streaming", "", "chest-xray-pneumonia 2.0.0 int8", 1.0, None))
        h, w = pixels.shape[:2]
        bottom = pixels[h // 2:, :, :].max(axis=2) > 200  # the white text of the bottom lines
        rows = np.flatnonzero(bottom.any(axis=1))
        assert w >= 640 and rows.size, width
        assert rows[-1] - rows[0] + 1 >= 0.03 * w, (width, rows[-1] - rows[0] + 1)  # the model line's height


def test_capture_refuses_a_malformed_body_or_a_wrong_type(live_client):
    r = live_client.post("/api/v1/sources/cam0/capture", data="{not json", content_type="application/json")
    assert r.status_code == 400 and "JSON object" in r.json["error"]["message"]
    r = live_client.post("/api/v1/sources/cam0/capture", json={"reference": 7})
    assert r.status_code == 400 and "'reference' must be a string" in r.json["error"]["message"]


def test_capture_refuses_a_stale_frame(live_client, monkeypatch):
    """Streaming, but the newest triaged frame is older than stall_timeout_s (triage fell behind)."""
    from device.appliance.context import appliance_of

    live = appliance_of(live_client.application).capture.get("cam0").live
    fresh = live.latest()
    stale = dataclasses.replace(fresh, frame=dataclasses.replace(fresh.frame, captured=time.monotonic() - 60))
    monkeypatch.setattr(live, "latest", lambda: stale)
    r = live_client.post("/api/v1/sources/cam0/capture", json={})
    assert r.status_code == 409 and "s old" in r.json["error"]["message"]


def test_capture_refused_when_there_is_no_current_frame(live_client):
    r = live_client.post("/api/v1/sources/absent/capture", json={})
    assert r.status_code == 409 and r.json["error"]["code"] == "conflict"
    assert "absent" in r.json["error"]["message"]
    assert live_client.post("/api/v1/sources/nope/capture", json={}).status_code == 404


def test_live_view_is_an_mjpeg_stream(live_client):
    r = live_client.get("/api/v1/sources/cam0/live", buffered=False)
    try:
        assert r.status_code == 200
        assert r.mimetype == "multipart/x-mixed-replace"
        chunk = next(iter(r.response))
    finally:
        r.close()
    head, _, body = chunk.partition(b"\r\n\r\n")
    assert head.startswith(b"--bedside-live-frame\r\nContent-Type: image/jpeg")
    assert body.startswith(b"\xff\xd8") and body.endswith(b"\xff\xd9\r\n")


def test_live_views_are_capped_so_the_server_keeps_threads_free(live_client):
    """capture.max_viewers (2) views at once; the next is refused at once with 503, not queued."""
    opened = [live_client.get("/api/v1/sources/cam0/live", buffered=False) for _ in range(2)]
    try:
        assert [r.status_code for r in opened] == [200, 200]
        refused = live_client.get("/api/v1/sources/cam0/live")
        assert refused.status_code == 503 and refused.json["error"]["code"] == "busy"
        assert "at most 2 live views at once" in refused.json["error"]["message"]
        assert live_client.get("/api/v1/health").status_code == 200
    finally:
        opened.pop().close()  # never read: closing still frees its slot
    again = live_client.get("/api/v1/sources/cam0/live", buffered=False)
    try:
        assert again.status_code == 200
    finally:
        again.close()
        opened[0].close()


@pytest.mark.parametrize("threads, max_viewers, limit", [(3, 4, 1), (8, 4, 4), (2, 2, 0)])
def test_live_views_always_leave_two_server_threads_free(config: KioskConfig, threads, max_viewers, limit):
    from device.kiosk import create_app
    from device.appliance.context import appliance_of

    data = config.model_dump(mode="json")
    data["server"]["threads"], data["capture"] = threads, {"max_viewers": max_viewers}
    app = create_app(KioskConfig.model_validate(data))
    try:
        assert appliance_of(app).live_viewers.limit == limit
    finally:
        appliance_of(app).close()


def test_health_and_metrics_show_the_sources(live_client):
    health = live_client.get("/api/v1/health").json
    assert {s["id"]: s["state"] for s in health["sources"]}["cam0"] == "streaming"
    text = live_client.get("/metrics").get_data(as_text=True)
    assert 'bedside_source_state{source="cam0",state="streaming"} 1' in text
    assert 'bedside_source_frames_total{source="cam0"}' in text
    assert 'bedside_source_reconnects_total{source="absent"}' in text
    assert 'bedside_source_skipped_files{source="cam0"} 0.0' in text


def test_live_pages(live_client):
    home = live_client.get("/").get_data(as_text=True)
    assert 'href="/live"' in home
    index = live_client.get("/live").get_data(as_text=True)
    assert "Bench camera" in index and "/live/cam0" in index
    page = live_client.get("/live/cam0").get_data(as_text=True)
    assert 'src="/api/v1/sources/cam0/live"' in page and ">Capture</button>" in page
    assert "Research use only, not for diagnosis." in page  # the tiny test bundle is research-only
    r = live_client.post("/live/cam0/capture", data={"reference": "bed 4"})
    assert r.status_code == 303 and "/studies/" in r.headers["Location"]
    r = live_client.post("/live/absent/capture", data={})
    assert r.status_code == 409 and "no current frame" in r.get_data(as_text=True)


def test_config_refuses_bad_sources(tmp_path: Path, config: KioskConfig):
    path = tmp_path / "bedside.toml"
    path.write_text('[capture]\nsources = ["ftp://camera"]\n')
    with pytest.raises(ConfigError, match=r"capture\.sources\.0\.uri.*unsupported source"):
        load_config(path)
    path.write_text('[[capture.sources]]\nuri = "v4l2:///dev/video0?widht=640"\n')
    with pytest.raises(ConfigError, match="unknown option 'widht'"):
        load_config(path)
    path.write_text('[capture]\nsources = [{uri = "file:///a", id = "x"}, {uri = "file:///b", id = "x"}]\n')
    with pytest.raises(ConfigError, match="source id 'x' is used twice"):
        load_config(path)
    ok = tmp_path / "ok.toml"
    ok.write_text('[capture]\nsources = ["v4l2:///dev/video0?width=1280&height=720&fps=30&fourcc=MJPG"]\n')
    assert load_config(ok).capture.sources[0].uri.startswith("v4l2://")

    from device.kiosk import create_app

    data = config.model_dump(mode="json")
    data["capture"] = {"sources": [{"uri": "file:///nothing", "exam": "no-such-exam"}]}
    with pytest.raises(ConfigError, match="no-such-exam"):
        create_app(KioskConfig.model_validate(data))


def test_serve_with_a_camera_that_dies_and_comes_back(tmp_path: Path, xray_video: Path):
    """`bedside serve --source http://...` on a real ffmpeg MJPEG camera, killed and restarted; then a
    capture through the API that is found in the store with its image, and the live view over HTTP."""
    if shipped_bundle() is None:
        pytest.skip("the shipped chest X-ray bundle is not installed")
    camera = MjpegServer(xray_video).start()
    try:
        with running_server(tmp_path / "data", [SHIPPED], "--source", camera.url) as server:
            client = server.client()
            try:
                def source() -> dict:
                    return client.get_json("/api/v1/sources")[1]["sources"][0]

                assert wait_for(lambda: source()["state"] == "streaming", 10, 0.1)
                camera.kill()
                assert wait_for(lambda: source()["state"] != "streaming", 10, 0.1)
                camera.start()
                assert wait_for(lambda: source()["state"] == "streaming", 15, 0.1)
                assert source()["reconnects"] >= 1
                assert wait_for(lambda: client.get_json("/api/v1/sources/cam0/latest")[0] == 200, 10, 0.1)

                status, _, body = client.request("POST", "/api/v1/sources/cam0/capture", b"{}",
                                                 {"Content-Type": "application/json"})
                assert status == 201, body
                study = json.loads(body)
                status, got = client.get_json(f"/api/v1/studies/{study['id']}")
                status_img, ctype, image = client.request("GET", f"/api/v1/studies/{study['id']}/image")
            finally:
                client.close()
            assert status == 200 and got["source"] == "capture:cam0"
            assert (got["image"]["width"], got["image"]["height"]) == (1280, 720)
            assert got["result"]["model"]["id"] == "chest-xray-pneumonia"
            assert status_img == 200 and ctype == "image/jpeg"
            assert hashlib.sha256(image).hexdigest() == got["image"]["sha256"]
            assert list((tmp_path / "data").rglob(got["image"]["sha256"]))  # the file in the store

            parts = urlsplit(server.url)
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
            try:
                conn.request("GET", "/api/v1/sources/cam0/live")
                r = conn.getresponse()
                assert r.status == 200 and r.getheader("Content-Type").startswith("multipart/x-mixed-replace")
                assert r.readline().startswith(b"--bedside-live-frame")
            finally:
                conn.close()
    finally:
        camera.kill()
