"""The technician area through the kiosk's own app: first-start password on the device's screen or
from a provisioning file, login with argon2, failed logins rate-limited and audited, CSRF on every
form, sessions that expire, API tokens, and the pages themselves."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from device.kiosk.security import TOKEN_HEADER, csrf_token
from device.technician.area import area_of
from device.technician.credentials import hash_password
from device.technician.login_gate import COOKIE
from kiosk_support import form_client, kiosk_client, png_bytes

PASSWORD = "correct horse battery"
NETWORK = {"REMOTE_ADDR": "192.0.2.44"}  # a machine on the clinic's network, not the device's screen


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(app) -> Clock:
    fake = Clock()
    a = area_of(app)
    a.sessions.clock = fake
    a.limiter.clock = fake
    return fake


@pytest.fixture
def client(app):
    with form_client(app) as c:
        yield c


def set_password(client, password: str = PASSWORD):
    return client.post("/technician/setup", data={"password": password, "repeat": password})


def log_in(client, password: str = PASSWORD, **kwargs):
    return client.post("/technician/login", data={"password": password, "next": "/technician/"}, **kwargs)


def audit_events(app) -> list[str]:
    return [e.event for e in reversed(area_of(app).credentials.audit_log())]


# ---- first start ---------------------------------------------------------------------------


def test_first_start_asks_for_a_password_on_the_devices_screen(client, app):
    response = client.get("/technician/", follow_redirects=True)
    assert response.request.path == "/technician/setup" and b"Set the technician password" in response.data
    assert set_password(client, "short").status_code == 400
    mismatch = client.post("/technician/setup", data={"password": PASSWORD, "repeat": PASSWORD + "x"})
    assert mismatch.status_code == 400 and b"differ" in mismatch.data
    assert set_password(client).status_code == 303
    stored = area_of(app).credentials._db.execute("SELECT hash FROM password").fetchone()[0]
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    # Set once: a second setup is refused, the password stays.
    assert set_password(client, "another password!").status_code == 409
    assert log_in(client).status_code == 303


def test_the_password_cannot_be_set_over_the_network(client, app):
    response = client.post("/technician/setup", data={"password": PASSWORD, "repeat": PASSWORD}, environ_base=NETWORK)
    assert response.status_code == 403 and b"own screen" in response.data
    assert not area_of(app).credentials.has_password()


def test_a_provisioning_file_sets_the_password(tmp_path, config):
    provision = tmp_path / "technician.toml"
    provision.write_text(f'password_hash = "{hash_password(PASSWORD)}"\n')
    changed = config.model_copy(update={"technician": config.technician.model_copy(update={"provisioning_file": provision})})
    with kiosk_client(changed) as c:
        assert c.get("/technician/setup").status_code == 409
        assert log_in(c, environ_base=NETWORK).status_code == 303


def test_a_bad_provisioning_file_is_reported_and_the_screen_can_still_set_it(tmp_path, config):
    provision = tmp_path / "technician.toml"
    provision.write_text('password = "in plain text"\n')
    changed = config.model_copy(update={"technician": config.technician.model_copy(update={"provisioning_file": provision})})
    with kiosk_client(changed) as c:
        a = area_of(c.application)
        assert "password_hash" in a.provisioning_error and not a.credentials.has_password()
        assert set_password(c).status_code == 303


# ---- login, rate limit, audit ----------------------------------------------------------------


def test_login_opens_the_area_and_logout_closes_it(client, app):
    set_password(client)
    assert client.get("/technician/").status_code == 303  # to the login
    wrong = log_in(client, "not the password")
    assert wrong.status_code == 401 and b"Wrong password" in wrong.data
    right = log_in(client)
    assert right.status_code == 303 and right.headers["Location"] == "/technician/"
    cookie = right.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    page = client.get("/technician/")
    assert page.status_code == 200 and b"Backends" in page.data and b"onnxruntime" in page.data
    assert client.post("/technician/logout").status_code == 303
    assert client.get("/technician/").status_code == 303
    assert audit_events(app) == ["password_set", "login_failed", "login", "logout"]


def test_login_sends_people_only_to_pages_of_this_kiosk(client):
    set_password(client)
    away = client.post("/technician/login", data={"password": PASSWORD, "next": "//evil.example/x"})
    assert away.headers["Location"] == "/technician/"


def test_failed_logins_are_rate_limited_per_address_and_audited(client, app, clock):
    set_password(client)
    limit = app_config_limit(app)
    for _ in range(limit):
        assert log_in(client, "wrong guess", environ_base=NETWORK).status_code == 401
    # Now even the right password waits: the address is locked out.
    locked = log_in(client, environ_base=NETWORK)
    assert locked.status_code == 429 and b"Too many failed logins" in locked.data
    # Another address (the device's own screen) is not.
    assert log_in(client).status_code == 303
    events = audit_events(app)
    assert events.count("login_failed") == limit and "login_refused" in events
    failed = [e for e in area_of(app).credentials.audit_log() if e.event == "login_failed"]
    assert all(e.remote == NETWORK["REMOTE_ADDR"] for e in failed)
    clock.now += app.extensions["bedside.technician"].limiter.window_s
    assert log_in(client, environ_base=NETWORK).status_code == 303


def app_config_limit(app) -> int:
    return area_of(app).config.technician.max_failed_logins


def test_every_technician_form_needs_the_csrf_token(app):
    plain = app.test_client()  # posts without the token the pages carry
    assert plain.post("/technician/setup", data={"password": PASSWORD, "repeat": PASSWORD}).status_code == 403
    with form_client(app) as c:
        set_password(c)
    assert plain.post("/technician/login", data={"password": PASSWORD}).status_code == 403
    with form_client(app) as c:
        log_in(c)
        for path in ("/technician/logout", "/technician/tokens", "/technician/restart", "/technician/sources/test"):
            sid = c.get_cookie(COOKIE).value
            plain.set_cookie(COOKIE, sid)
            assert plain.post(path, data={"name": "x", "uri": "file:///x"}).status_code == 403, path
        assert c.get("/technician/").status_code == 200  # still logged in: nothing was done
    # Another site's page posting with the user's cookie is refused by its Origin too.
    cross = app.test_client()
    cross.set_cookie(COOKIE, sid)
    refused = cross.post("/technician/logout", headers={"Origin": "http://evil.example", TOKEN_HEADER: csrf_token(app)})
    assert refused.status_code == 403


# ---- sessions --------------------------------------------------------------------------------


def test_sessions_expire_when_idle_and_after_their_maximum(client, app, clock):
    set_password(client)
    log_in(client)
    settings = area_of(app).config.technician
    clock.now += settings.session_idle_minutes * 60 - 1
    assert client.get("/technician/").status_code == 200  # used in time: the idle time starts again
    clock.now += settings.session_idle_minutes * 60 + 1
    assert client.get("/technician/").status_code == 303
    log_in(client)
    for _ in range(settings.session_max_hours * 60 // settings.session_idle_minutes + 1):
        clock.now += settings.session_idle_minutes * 60 - 1
        client.get("/technician/")
    assert client.get("/technician/").status_code == 303  # kept busy, but past its maximum


# ---- tokens ----------------------------------------------------------------------------------


def test_api_tokens_open_the_area_for_programs_until_revoked(client, app):
    set_password(client)
    log_in(client)
    made = client.post("/technician/tokens", data={"name": "ward monitor"})
    assert made.status_code == 201
    token = made.data.decode().split('class="tech-token">')[1].split("<")[0]
    stored = area_of(app).credentials._db.execute("SELECT sha256 FROM api_tokens").fetchone()[0]
    assert token.startswith("bst_") and token not in stored
    program = app.test_client()
    assert program.get("/technician/status.json").status_code == 303
    bearer = {"Authorization": f"Bearer {token}"}
    status = program.get("/technician/status.json", headers=bearer)
    assert status.status_code == 200 and "onnxruntime" in status.json["backends"]
    assert program.get("/technician/status.json", headers={"Authorization": "Bearer bst_guess"}).status_code == 303
    token_id = area_of(app).credentials.tokens()[0].id
    assert client.post(f"/technician/tokens/{token_id}/revoke").status_code == 303
    assert program.get("/technician/status.json", headers=bearer).status_code == 303


# ---- on loopback the clinician pages stay open -------------------------------------------------


def test_on_loopback_clinician_pages_are_open_and_the_technician_area_is_not(app):
    c = app.test_client()
    assert c.get("/").status_code == 200
    assert c.get("/api/v1/studies").status_code == 200
    for path in ("/technician/", "/technician/logs", "/technician/diagnostics", "/technician/tokens", "/technician/dicom"):
        assert c.get(path).status_code == 303, path


# ---- the pages -----------------------------------------------------------------------------------


def test_logs_download_and_source_test(client, app, tmp_path):
    set_password(client)
    log_in(client)
    logs = client.get("/technician/logs/download")
    assert logs.status_code == 200 and logs.headers["Content-Type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(logs.data)).namelist()
    assert "logs/bedside.log" in names
    assert "technician" in zipfile.ZipFile(io.BytesIO(logs.data)).read("logs/bedside.log").decode()
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes(3, 200))
    tested = client.post("/technician/sources/test", data={"uri": f"file://{folder}"})
    assert tested.status_code == 200 and b"one frame received, 200 x 200" in tested.data
    frame = client.get("/technician/sources/test.jpg")
    assert frame.status_code == 200 and frame.data[:2] == b"\xff\xd8"
    missing = client.post("/technician/sources/test", data={"uri": f"file://{tmp_path}/none.mp4"})
    assert missing.status_code == 422 and b"no such file" in missing.data


def test_status_json_has_what_the_page_shows(client):
    import logging

    set_password(client)
    log_in(client)
    logging.getLogger("bedside.kiosk").error("the camera cable came loose (a test)")
    status = client.get("/technician/status.json").json
    assert status["recent_problems"][0]["message"] == "the camera cable came loose (a test)"
    assert b"the camera cable came loose" in client.get("/technician/").data
    assert status["models"][0]["id"] and status["models"][0]["backend"] == "onnxruntime"
    assert status["disk"]["free_bytes"] > 0 and status["cpu"]["cores"] >= 1
    assert status["uptime"]["kiosk_s"] >= 0 and "bedside" in status["versions"]
    json.dumps(status)


def test_hash_password_makes_a_provisioning_file_the_kiosk_accepts(tmp_path, config):
    import subprocess
    import sys

    from kiosk_support import ROOT

    made = subprocess.run([sys.executable, "-m", "device.cli", "technician", "hash-password"], input=PASSWORD + "\n",
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert made.returncode == 0 and made.stdout.startswith('password_hash = "$argon2id$') and PASSWORD not in made.stdout
    provision = tmp_path / "technician.toml"
    provision.write_text(made.stdout)
    changed = config.model_copy(update={"technician": config.technician.model_copy(update={"provisioning_file": provision})})
    with kiosk_client(changed) as c:
        assert log_in(c).status_code == 303
    short = subprocess.run([sys.executable, "-m", "device.cli", "technician", "hash-password"], input="short\n",
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert short.returncode == 1 and "10 to 200 characters" in short.stderr


def test_gpus_are_read_from_the_nvidia_driver_or_the_jetson_device_tree(tmp_path):
    from device.technician.status import gpus

    driver = tmp_path / "gpus"
    (driver / "0000:3b:00.0").mkdir(parents=True)
    # The driver's own format (/proc/driver/nvidia/gpus/<bus>/information), abridged.
    (driver / "0000:3b:00.0" / "information").write_text("Model: \t\t NVIDIA H200\nIRQ:   \t\t 150\nBus Type: \t PCIe\n")
    tree = tmp_path / "model"
    tree.write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\0")
    assert gpus(driver, tree) == [{"model": "NVIDIA H200", "bus": "0000:3b:00.0"}]
    assert gpus(tmp_path / "none", tree) == [{"model": "NVIDIA Jetson Orin Nano Developer Kit", "bus": "integrated"}]
    assert gpus(tmp_path / "none", tmp_path / "absent") == []
