"""Capture URIs, the CSI pipeline, the JPEG header parser behind the reduced decode, V4L2 listing."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from device.capture.analysis import jpeg_size
from models.reading import reduction
from device.capture.devices import list_video_devices
from device.capture.errors import CaptureError
from device.capture.readers import open_reader
from device.capture.sources import CSI, FILE, HTTP, RTSP, V4L2, SourceError, csi_pipeline, parse_source, redact


def test_parse_each_kind():
    v = parse_source("v4l2:///dev/video0?width=1280&height=720&fps=30&fourcc=MJPG")
    assert (v.kind, v.target, v.option_int("width"), v.option_float("fps")) == (V4L2, "/dev/video0", 1280, 30.0)
    assert parse_source("csi://1").kind == CSI and parse_source("csi://1").target == "1"
    url = "http://cam.local:8080/video?action=stream"
    assert parse_source(url).kind == HTTP and parse_source(url).target == url  # query belongs to the camera
    assert parse_source("rtsp://u:p@10.0.0.2/live").kind == RTSP
    f = parse_source("file:///data/clip.mp4?loop=1")
    assert (f.kind, f.target, f.loop) == (FILE, "/data/clip.mp4", True)
    assert parse_source("file://rel/clip.mp4").target == "rel/clip.mp4"


@pytest.mark.parametrize(
    "uri, message",
    [
        ("ftp://x/y", "unsupported source"),
        ("v4l2:///dev/video0?widht=1", "unknown option 'widht'"),
        ("v4l2:///dev/video0?width=wide", "width must be a whole number"),
        ("v4l2:///dev/video0?fps=0", "fps must be positive"),
        ("v4l2:///dev/video0?fourcc=MJPEG", "fourcc must be 4 characters"),
        ("csi://left", "sensor id must be a number"),
        ("http:///stream", "no host"),
        ("http://u:secret@127.0.0.1:99999/x", r"u:\*\*\*@127.0.0.1:99999/x: Port out of range"),
        ("rtsp://cam:abc/live", "Port could not be cast"),
    ],
)
def test_bad_uris_are_refused_with_the_reason(uri: str, message: str):
    with pytest.raises(SourceError, match=message):
        parse_source(uri)


def test_passwords_are_redacted():
    assert redact("rtsp://admin:secret@10.0.0.2:554/live") == "rtsp://admin:***@10.0.0.2:554/live"
    assert redact("http://10.0.0.2/stream") == "http://10.0.0.2/stream"
    assert redact("http://u:pw@[fe80::1]:8080/x") == "http://u:***@[fe80::1]:8080/x"


def test_csi_pipeline_keeps_only_the_newest_buffer():
    pipeline = csi_pipeline(parse_source("csi://0?width=1280&height=720&fps=60&flip=2"))
    assert pipeline.startswith("nvarguscamerasrc sensor-id=0 ! ")
    assert "width=1280,height=720,framerate=60/1" in pipeline and "flip-method=2" in pipeline
    assert pipeline.endswith("appsink drop=true max-buffers=1 sync=false")


@pytest.mark.parametrize("shape", [(720, 1280, 3), (480, 640), (31, 17, 3)])
def test_jpeg_size_reads_the_header(shape):
    ok, buf = cv2.imencode(".jpg", np.zeros(shape, np.uint8))
    assert jpeg_size(buf.tobytes()) == shape[:2]
    ok, progressive = cv2.imencode(".jpg", np.zeros(shape, np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert jpeg_size(progressive.tobytes()) == shape[:2]
    assert jpeg_size(b"\xff\xd8\xff\xda\x00\x02") is None


def test_reduction_keeps_what_the_model_needs():
    assert reduction(720, 1280, 128) == 4  # 180 px short side
    assert reduction(480, 640, 128) == 2
    assert reduction(2160, 3840, 128) == 8
    assert reduction(100, 100, 128) == 1  # too small already: the quality gate will say so


def test_v4l2_devices_are_listed_with_their_names(tmp_path: Path):
    dev, sysfs = tmp_path / "dev", tmp_path / "sys"
    for n, name in ((10, "Capture dongle"), (2, "USB Otoscope"), (3, None)):
        (dev / f"video{n}").parent.mkdir(exist_ok=True)
        (dev / f"video{n}").touch()
        if name:
            (sysfs / f"video{n}").mkdir(parents=True)
            (sysfs / f"video{n}" / "name").write_text(name + "\n")
    (dev / "video-bogus").touch()
    found = list_video_devices(dev, sysfs)
    assert [(d.path.rsplit("/", 1)[1], d.name) for d in found] == [
        ("video2", "USB Otoscope"), ("video3", "video3"), ("video10", "Capture dongle")
    ]
    assert found[0].uri == f"v4l2://{dev}/video2"


def test_a_missing_camera_gets_opencvs_warning_once_not_on_every_reconnect(capfd):
    spec = parse_source("v4l2:///dev/video99")
    for _ in range(3):
        with pytest.raises(CaptureError, match="cannot open /dev/video99"):
            open_reader(spec, 1.0, 1.0)
    assert capfd.readouterr().err.count("VIDEOIO(V4L2)") == 1
