"""Safe mode with real `bedside serve` processes: after a start that was killed before it completed,
after one that failed, and with a settings file that does not validate, the kiosk comes up with the
last known good settings and no models: the clinicians keep the worklist and studies (nothing is
triaged), the technician area says why; the start after that (or the technician's restart, exit
status 75) is a normal one again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from dicom_peers import wait_until
from kiosk_support import ROOT, multipart, png_bytes, start_server, stop_server
from technician_support import WebSession, provisioned_config

GOOD = '[server]\nallowed_hosts = ["ward4.example"]\n'


def _record(data_dir) -> dict:
    return json.loads((data_dir / "startup.json").read_text())


def _check_safe_screen(url: str, why: str, study: int | None = None) -> None:
    """Safe mode as a clinician meets it: the worklist and the studies readable, in plain words that
    nothing new is triaged and a technician is needed (the reason is the technician's: never the raw
    text on the clinician's screen); every error page the kiosk's own; no triage by any route."""
    screen = WebSession(url)
    try:
        status, _, page = screen.request("GET", "/")
        text = page.decode()
        assert status == 200 and "data-safe-mode" in text and "A technician is needed" in text, text
        assert why not in text and "To review" in text
        status, health = screen.get_json("/api/v1/health")
        assert status == 503 and health["safe_mode"] and why in health["reason"] and health["models"] == []
        for path in ("/history", "/api/v1/studies", "/api/v1/worklist"):
            assert screen.request("GET", path)[0] == 200, path
        status, _, page = screen.request("GET", "/studies/new")
        assert status == 200 and b"New studies cannot be triaged now" in page and b'type="file"' not in page
        body, ctype = multipart({"reference": "PT-1"}, ("x.png", png_bytes(1)))
        status, _, refused = screen.request("POST", "/api/v1/studies", body, {"Content-Type": ctype})
        assert status == 503 and json.loads(refused)["error"]["code"] == "safe_mode", refused
        if study is not None:
            status, _, page = screen.request("GET", f"/studies/{study}")
            assert status == 200 and b"data-triage=" in page and b"data-safe-mode" in page
            assert screen.request("GET", f"/api/v1/studies/{study}/preview")[0] == 200
        for gone in ("/studies/999999", "/no/such/page"):  # old links: the kiosk's own page, in its words
            status, _, page = screen.request("GET", gone)
            assert status == 404 and b"Not found (404)" in page and b"requested URL was not found" not in page
        status, _, page = screen.request("GET", "/technician/login")
        assert status == 200 and why in page.decode()
    finally:
        screen.close()


def _hanging_bundle(tmp_path):
    """A bundle whose manifest is a FIFO: reading it blocks, as a start stuck in a model runtime does."""
    folder = tmp_path / "hangs"
    folder.mkdir()
    os.mkfifo(folder / "manifest.json")
    return folder


def test_a_killed_start_is_followed_by_safe_mode_then_a_normal_start(tmp_path, tiny_bundle):
    data = tmp_path / "data"
    config = provisioned_config(tmp_path, GOOD)
    stop_server(start_server(data, [tiny_bundle], "--config", str(config), "--safe-mode"))
    assert _record(data)["state"] == "started"

    cmd = [sys.executable, "-m", "device.cli", "serve", "--port", "0", "--data-dir", str(data),
           "--config", str(config), "--safe-mode", "--bundle", str(_hanging_bundle(tmp_path))]
    stuck = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _record(data)["state"] == "starting", 60, "the start record of the hanging start")
    finally:
        stuck.send_signal(signal.SIGKILL)
        stuck.wait(30)

    safe = start_server(data, [tiny_bundle], "--config", str(config), "--safe-mode", check_health=False)
    try:
        _check_safe_screen(safe.url, "did not complete")
        assert _record(data)["state"] == "safe"
        # The last known good settings: the host name they allow is answered (the defaults would 421).
        named = WebSession(safe.url)
        try:
            assert named.request("GET", "/technician/login", headers={"Host": "ward4.example"})[0] == 200
        finally:
            named.close()
        # The technician logs in and restarts: exit status 75, for systemd to start it again.
        technician = WebSession(safe.url)
        try:
            technician.log_in()
            status, _, page = technician.request("GET", "/technician/")
            assert status == 200 and b"No models are loaded" in page
            status, _, page = technician.post_form("/technician/restart", {}, token_from="/technician/")
            assert status == 200 and b"Restart the kiosk?" in page and safe.proc.poll() is None  # asked first
            status, _, _ = technician.post_form("/technician/restart", {"confirm": "1"}, token_from="/technician/")
            assert status == 200
        finally:
            technician.close()
        assert safe.proc.wait(30) == 75
    finally:
        stop_server(safe)

    normal = start_server(data, [tiny_bundle], "--config", str(config), "--safe-mode")  # health: ready, with its models
    stop_server(normal)
    assert _record(data)["state"] == "started"


def test_a_failed_start_names_its_reason_in_safe_mode(tmp_path, tiny_bundle):
    data = tmp_path / "data"
    config = provisioned_config(tmp_path, GOOD)
    failed = subprocess.run([sys.executable, "-m", "device.cli", "serve", "--port", "0", "--data-dir", str(data),
                             "--config", str(config), "--safe-mode", "--bundle", str(tmp_path / "no-such-bundle")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert failed.returncode != 0 and _record(data)["state"] == "failed"
    safe = start_server(data, [tiny_bundle], "--config", str(config), "--safe-mode", check_health=False)
    try:
        _check_safe_screen(safe.url, "bundle directory not found")
    finally:
        stop_server(safe)


def test_an_invalid_settings_file_starts_safe_mode_with_the_last_good_settings(tmp_path, tiny_bundle):
    data = tmp_path / "data"
    config = provisioned_config(tmp_path, GOOD)
    normal = start_server(data, [tiny_bundle], "--config", str(config), "--safe-mode")
    client = normal.client()
    try:
        status, study = client.upload("x.png", png_bytes(2), reference="PT-2")
        assert status == 201
    finally:
        client.close()
    stop_server(normal)
    config.write_text(config.read_text() + "\n[ui]\npage_size = 1\n")  # below its minimum of 5

    safe = start_server(data, [tiny_bundle], "--config", str(config), "--safe-mode", check_health=False)
    try:
        _check_safe_screen(safe.url, "ui.page_size", study["id"])
        named = WebSession(safe.url)
        try:
            assert named.request("GET", "/", headers={"Host": "ward4.example"})[0] == 200  # not 421
        finally:
            named.close()
    finally:
        assert stop_server(safe) == 0
    # Still invalid: safe mode again, for the same reason (never a normal start on settings it cannot use).
    again = start_server(data, [tiny_bundle], "--config", str(config), "--safe-mode", check_health=False)
    try:
        _check_safe_screen(again.url, "ui.page_size")
    finally:
        stop_server(again)
