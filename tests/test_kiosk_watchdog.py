"""The systemd watchdog is pinged only while the inference workers are healthy: a model stuck in one
call longer than models.stuck_after_s turns health to 503 and the pings stop (systemd then kills and
restarts the kiosk); once the call returns they go on. The kiosk runs in this process, on a real
waitress server, with a real $NOTIFY_SOCKET datagram socket standing in for systemd."""

from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from device.appliance.context import appliance_of
from device.core.settings import ServerSettings
from device.kiosk.server import HealthProbe, KioskServer, _start_watchdog
from device.technician.area import area_of
from dicom_peers import wait_until
from kiosk_support import Client, png_bytes


@pytest.fixture
def slow_app(config):
    from device.kiosk import create_app

    application = create_app(config.with_overrides(**{"models.stuck_after_s": 1}))
    yield application
    appliance_of(application).close()


def _hold_the_model(appliance) -> tuple[threading.Event, threading.Event]:
    """Make the exam's next inference block until `release` is set (`entered` when it starts)."""
    exam = next(iter(appliance.exams))
    real = exam.triager.triage_prepared
    entered, release = threading.Event(), threading.Event()

    def stuck(*args, **kwargs):
        entered.set()
        release.wait(120)
        return real(*args, **kwargs)

    exam.triager.triage_prepared = stuck
    return entered, release


def test_pings_stop_while_a_model_is_stuck_and_resume_after(slow_app, tmp_path, monkeypatch, caplog):
    appliance = appliance_of(slow_app)
    probe = HealthProbe("/api/v1/health", area_of(slow_app).internal_token)
    server = KioskServer(slow_app, ServerSettings(port=0), lambda: None, probe)
    serving = threading.Thread(target=server._plain.run, name="test-waitress", daemon=True)
    serving.start()
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, ThreadPoolExecutor(1) as uploads:
        sock.bind(address)
        sock.settimeout(30)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        monkeypatch.setenv("WATCHDOG_USEC", "400000")
        stop = _start_watchdog(server.host, server.port, probe)
        client = Client(server.url)
        try:
            assert sock.recv(64) == b"WATCHDOG=1"
            entered, release = _hold_the_model(appliance)
            upload = uploads.submit(_upload, server.url)
            assert entered.wait(30)
            status, health = wait_until(lambda: _unhealthy(client), 30, "health 503 while the model is stuck")
            assert health["inference"][0]["stuck"] and not health["ready"]
            wait_until(lambda: "not pinging the watchdog" in caplog.text, 30, "the watchdog's refusal to ping")
            release.set()
            assert upload.result(60)[0] == 201  # the study was still saved once the call returned
            while sock.recv(64) != b"WATCHDOG=1":
                pass
            assert client.get_json("/api/v1/health")[0] == 200
        finally:
            stop.set()
            client.close()
            server._plain.close()


def _upload(url: str):
    client = Client(url)
    try:
        return client.upload("x.png", png_bytes(4))
    finally:
        client.close()


def _unhealthy(client: Client):
    status, health = client.get_json("/api/v1/health")
    return (status, health) if status == 503 else None
