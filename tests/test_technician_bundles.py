"""The technician's bundles page on the device.updates API, in a running kiosk: nothing switches the
live model before the technician confirms it; an upload (named as chosen) installs a signed
archive health-checked in this process (the kiosk then triages with it), a USB drive's archive
whose self-test fails is rolled back by itself, a switch back and forth between the slots and to
the shipped bundle, a self-test, and refusals with their reason in words for the device (no shell
commands); each audited. In safe mode an install commits after its self-test, for the next start."""

from __future__ import annotations

import io
import re

import pytest

from device import updates
from device.appliance.context import appliance_of
from device.technician.area import area_of
from kiosk_support import form_client
from test_technician import log_in, set_password
from update_support import EXAM, kiosk_config, rewrite, xray_files


@pytest.fixture
def tech(tmp_path, signer, releases):
    """A logged-in technician on a kiosk serving the installed tiny exam 1.0.0."""
    from device.kiosk import create_app

    config = kiosk_config(tmp_path, signer)
    updates.install(releases["1.0.0"], config)
    app = create_app(config)
    app.config["TESTING"] = True
    try:
        with form_client(app) as c:
            set_password(c)
            log_in(c)
            yield c
    finally:
        appliance_of(app).close()


def _upload(c, path, name=None, confirm=True):
    """Upload an archive; it is checked and held, and installed when ``confirm`` (as the question asks)."""
    asked = c.post("/technician/bundles/upload", content_type="multipart/form-data",
                   data={"archive": (io.BytesIO(path.read_bytes()), name or path.name)})
    if not confirm or b"data-confirm" not in asked.data:
        return asked
    action = re.search(rb'<form method="post" action="(/technician/bundles/upload/[0-9a-f]+/install)">', asked.data)
    return c.post(action.group(1).decode(), data={"confirm": "1"})


def _triaged_version(c) -> str:
    response = c.post("/api/v1/studies", content_type="multipart/form-data",
                      data={"file": (io.BytesIO(xray_files(1)[0].read_bytes()), "x.jpeg")})
    assert response.status_code == 201, response.json
    return response.json["result"]["model"]["version"]


def test_upload_install_activate_rollback_and_selftest(tech, releases):
    page = tech.get("/technician/bundles")
    assert page.status_code == 200 and b"tiny-test 1.0.0" in page.data and b"(slot a)" in page.data
    asked = _upload(tech, releases["1.1.0"], "tiny-1.1.0.bedside", confirm=False)
    assert asked.status_code == 200 and b"data-confirm" in asked.data and b"Install tiny-test 1.1.0?" in asked.data
    assert b"tiny-1.1.0.bedside: tiny-test 1.1.0, signed by key" in asked.data and b"1.0.0 (slot a) triages" in asked.data
    assert _triaged_version(tech) == "1.0.0"  # asked, not installed
    token = re.search(rb"/upload/([0-9a-f]+)/cancel", asked.data).group(1).decode()
    cancelled = tech.post(f"/technician/bundles/upload/{token}/cancel")
    assert b"Nothing was installed" in cancelled.data and tech.post(f"/technician/bundles/upload/{token}/install",
                                                                     data={"confirm": "1"}).status_code == 404
    done = _upload(tech, releases["1.1.0"])
    assert done.status_code == 200, done.data
    assert b"tiny-test 1.1.0 is active in slot b (before: 1.0.0 in slot a)" in done.data
    assert b"passed 3 self-test request(s)" in done.data and b"commit" in done.data
    assert _triaged_version(tech) == "1.1.0"

    # One button per other slot, named for where it goes; each asked before it switches.
    assert b"Roll back to 1.0.0 (slot a)</button>" in done.data and b">Roll back</button>" not in done.data
    asked = tech.post(f"/technician/bundles/{EXAM}/rollback")
    assert b"data-confirm" in asked.data and b"Switch tiny-test to 1.0.0?" in asked.data and _triaged_version(tech) == "1.1.0"
    back = tech.post(f"/technician/bundles/{EXAM}/rollback", data={"confirm": "1"})
    assert back.status_code == 200 and b"tiny-test 1.0.0 is active in slot a (before: 1.1.0 in slot b)" in back.data
    assert _triaged_version(tech) == "1.0.0"
    assert b"Go forward to 1.1.0 (slot b)</button>" in back.data and b"Roll back to" not in back.data
    asked = tech.post(f"/technician/bundles/{EXAM}/activate", data={"slot": "b"})
    assert b"data-confirm" in asked.data and _triaged_version(tech) == "1.0.0"
    forward = tech.post(f"/technician/bundles/{EXAM}/activate", data={"slot": "b", "confirm": "1"})
    assert forward.status_code == 200 and b"tiny-test 1.1.0 is active in slot b" in forward.data
    assert _triaged_version(tech) == "1.1.0"

    tested = tech.post(f"/technician/bundles/{EXAM}/selftest")
    assert tested.status_code == 200 and b"self-test passed" in tested.data
    events = [e.event for e in area_of(tech.application).credentials.audit_log()]
    assert {"bundle_install", "bundle_rollback", "bundle_activate", "bundle_selftest"} <= set(events)
    assert not list((area_of(tech.application).config.store.data_dir / "update-uploads").iterdir())  # no upload left


def test_a_drive_archive_that_fails_its_selftest_is_rolled_back(tech, releases, tmp_path):
    usb = tmp_path / "media" / "usb"
    usb.mkdir(parents=True)
    (usb / "tiny-broken.bedside").write_bytes(releases["broken"].read_bytes())
    page = tech.get("/technician/bundles")
    assert b"tiny-broken.bedside" in page.data
    asked = tech.post("/technician/bundles/usb", data={"path": str(usb / "tiny-broken.bedside")})
    assert b"data-confirm" in asked.data and b"Install tiny-test 1.2.0?" in asked.data
    done = tech.post("/technician/bundles/usb", data={"path": str(usb / "tiny-broken.bedside"), "confirm": "1"})
    assert done.status_code == 409 and b"self-test" in done.data and b"what served before serves still" in done.data
    assert _triaged_version(tech) == "1.0.0"
    elsewhere = tech.post("/technician/bundles/usb", data={"path": str(releases["1.1.0"])})  # not on a drive
    assert elsewhere.status_code == 400 and _triaged_version(tech) == "1.0.0"
    failed = [e for e in area_of(tech.application).credentials.audit_log() if e.event == "bundle_install_failed"]
    assert failed and "self-test" in failed[0].detail["reason"]


def test_a_tampered_upload_is_refused_with_its_reason(tech, releases, tmp_path):
    def flip(info, data):
        if data is not None and info.name.endswith(".onnx"):
            data = data[:-1] + bytes([data[-1] ^ 1])
        return [(info, data)]

    tampered = rewrite(releases["1.1.0"], tmp_path / "tampered.bedside", flip)
    done = _upload(tech, tampered, "ward-update.bedside")
    assert done.status_code == 422 and b"ward-update.bedside: file model" in done.data and b"does not match" in done.data
    assert b"data-confirm" not in done.data and b"Nothing was installed" in done.data
    assert _triaged_version(tech) == "1.0.0"
    # Refusals in words for the device: no shell command to run.
    unsigned = rewrite(releases["1.1.0"], tmp_path / "unsigned.bedside",
                       lambda info, data: [] if info.name.endswith("signature.json") else [(info, data)])
    done = _upload(tech, unsigned, "from-the-vendor.bedside")
    assert done.status_code == 422 and b"from-the-vendor.bedside: not signed" in done.data, done.data
    older = _upload(tech, releases["0.9.0"], "old.bedside")
    assert older.status_code == 422 and b"old.bedside: tiny-test 0.9.0 is older than the installed 1.0.0" in older.data
    for refused in (done, older):
        assert b"`" not in refused.data and b"bedside bundle" not in refused.data
    assert not list((area_of(tech.application).config.store.data_dir / "update-uploads").iterdir())


def test_the_shipped_bundle_can_serve_again(tmp_path, signer, releases):
    from device.kiosk import create_app
    from update_support import make_bundle

    config = kiosk_config(tmp_path, signer)
    make_bundle(tmp_path / "shipped" / "tiny", "0.5.0")
    updates.install(releases["1.0.0"], config)
    app = create_app(config)
    try:
        with form_client(app) as c:
            set_password(c)
            log_in(c)
            page = c.get("/technician/bundles")
            assert b"Use the shipped 0.5.0</button>" in page.data
            assert b"data-confirm" in c.post(f"/technician/bundles/{EXAM}/shipped").data
            done = c.post(f"/technician/bundles/{EXAM}/shipped", data={"confirm": "1"})
            assert done.status_code == 200 and b"tiny-test 0.5.0 (shipped with the appliance) serves again" in done.data
            assert _triaged_version(c) == "0.5.0"
            assert b"Go forward to 1.0.0 (slot a)</button>" in done.data and b"Use the shipped" not in done.data
    finally:
        appliance_of(app).close()


def test_the_bundles_page_needs_a_login_and_the_csrf_token(tmp_path, signer, releases):
    from device.kiosk import create_app

    config = kiosk_config(tmp_path, signer)
    updates.install(releases["1.0.0"], config)
    app = create_app(config)
    try:
        anonymous = app.test_client()
        assert anonymous.get("/technician/bundles").status_code == 303
        with form_client(app) as c:
            set_password(c)
            log_in(c)
            cookie = c.get_cookie("bedside_session").value
        anonymous.set_cookie("bedside_session", cookie)
        assert anonymous.get("/technician/bundles").status_code == 200
        assert anonymous.post(f"/technician/bundles/{EXAM}/rollback").status_code == 403  # no CSRF token
    finally:
        appliance_of(app).close()


def test_in_safe_mode_an_install_commits_after_its_selftest(tmp_path, signer, releases):
    from device.kiosk.app import close_app, create_safe_app

    config = kiosk_config(tmp_path, signer)
    updates.install(releases["1.0.0"], config)
    app = create_safe_app(config, "the last start failed: a test")
    try:
        with form_client(app) as c:
            set_password(c)
            log_in(c)
            page = c.get("/technician/bundles")
            assert page.status_code == 200 and b"serves it at its next start" in page.data
            done = _upload(c, releases["1.1.0"])
            assert done.status_code == 200 and b"tiny-test 1.1.0 is active in slot b" in done.data, done.data
        assert [e.version for e in updates.list_installed(config)] == ["1.1.0"]
    finally:
        close_app(app)
