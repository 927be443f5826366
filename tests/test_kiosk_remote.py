"""A kiosk whose exams run on a central node (``[models] backend = "remote"``): studies go to the
node; when it stalls the kiosk triages the same study with its own model within 2 s, says so in
health, /metrics and on the home screen, names the backend on every result, and goes back to the
node once it answers and passes its checks again."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from central_peer import SHIPPED
from device.core.settings import ModelSettings
from kiosk_support import running_server
from loopback import wait_for

EXAM = "chest-xray-pneumonia"


def _remote(health: dict) -> dict:
    return next(m for m in health["models"] if m["id"] == EXAM)["remote"]


def test_a_kiosk_serves_on_the_node_and_on_its_own_when_the_node_stalls(central_node, datasets, tmp_path):
    toml = tmp_path / "bedside.toml"
    toml.write_text(f'[models]\nbackend = "remote"\nremote_url = "{central_node.url}"\nremote_timeout_s = 0.5\n'
                    "remote_retry_s = 0.5\ninference_threads = 1\n")
    xray = sorted((datasets / "chest-xray" / "fullres-samples").glob("PNEUMONIA/*.jpeg"))[0].read_bytes()
    with running_server(tmp_path / "data", [SHIPPED[0]], "--config", str(toml)) as kiosk:
        client = kiosk.client()
        try:
            status, body = client.upload("xray.jpeg", xray, exam=EXAM)
            assert status == 201 and body["result"]["model"]["backend"] == "remote"
            on_node = body["result"]
            assert _remote(client.get_json("/api/v1/health")[1])["state"] == "remote"

            triton = central_node.triton_pid()
            os.kill(triton, signal.SIGSTOP)
            try:
                started = time.monotonic()
                status, body = client.upload("xray.jpeg", xray, exam=EXAM, reference="remote test")
                took = time.monotonic() - started
                assert status == 201 and took < 2.0, (status, took)
                local = body["result"]
                assert local["model"]["backend"] != "remote" and local["triage"] == on_node["triage"]
                remote = _remote(client.get_json("/api/v1/health")[1])
                assert remote["state"] == "local" and remote["fallbacks"] == 1 and "timed out" in remote["reason"]
                _, _, metrics = client.request("GET", "/metrics")
                assert re.search(rf'^bedside_remote_fallback{{exam="{EXAM}"}} 1\.0$', metrics.decode(), re.M)
                _, _, home = client.request("GET", "/")
                assert b"Central server not answering: this kiosk triages on its own" in home
            finally:
                os.kill(triton, signal.SIGCONT)
            assert wait_for(lambda: _remote(client.get_json("/api/v1/health")[1])["state"] == "remote", 15)
            status, body = client.upload("xray.jpeg", xray, exam=EXAM, reference="remote test")
            assert status == 201 and body["result"]["model"]["backend"] == "remote"
            _, _, home = client.request("GET", "/")
            assert b"Central server not answering" not in home
            _, listed = client.get_json("/api/v1/studies")
            assert listed["total"] == 3  # one study per upload: none lost, none stored twice
        finally:
            client.close()


def test_remote_needs_the_node_and_a_usable_url():
    with pytest.raises(ValueError, match="needs remote_url"):
        ModelSettings(backend="remote")
    with pytest.raises(ValueError, match="remote_url: '10.0.0.5:8000' is not http://HOST:PORT"):
        ModelSettings(backend="remote", remote_url="10.0.0.5:8000")
