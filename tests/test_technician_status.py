"""The technician's status page shows a TensorRT engine build as it runs and when it is done (fake
TensorRT/pycuda, which enforce the real API's contract; see tests/fakes), in a real kiosk app."""

from __future__ import annotations

from device.appliance.context import appliance_of
from dicom_peers import wait_until
from kiosk_support import form_client
from test_technician import log_in, set_password


def test_status_shows_the_engine_build_progress(gpu, gated_build, config):
    from device.kiosk import create_app

    app = create_app(config)
    try:
        with form_client(app) as c:
            set_password(c)
            log_in(c)
            building = c.get("/technician/status.json").json["models"][0]["engine_build"]
            assert building["state"] in ("queued", "building") and building["fraction"] < 1
            page = c.get("/technician/")
            assert f"<td>{building['state']}".encode() in page.data
            gated_build.set()
            exam = next(iter(appliance_of(app).exams))
            wait_until(lambda: exam.triager.model.backend == "tensorrt", 60, "the switch to the engine")
            status = c.get("/technician/status.json").json["models"][0]
            assert status["backend"] == "tensorrt" and status["engine_build"]["state"] == "ready"
            assert b"ready 100%" in c.get("/technician/").data
    finally:
        appliance_of(app).close()
