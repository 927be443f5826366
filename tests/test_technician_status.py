"""The technician's status page shows a TensorRT engine build as it runs and when it is done (fake
TensorRT/pycuda, which enforce the real API's contract; see tests/fakes), in a real kiosk app."""

from __future__ import annotations

from device.appliance.context import appliance_of
from dicom_peers import wait_until
from kiosk_support import form_client
from loopback import free_port
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


def test_status_shows_each_links_certificate_and_warns_before_expiry(config, test_ca, site_cert, tmp_path):
    """The kiosk's HTTPS certificate with its subject, fingerprint and expiry; the DICOM listener's,
    20 days from expiry, with a warning; an insecure FHIR destination flagged. The diagnostics
    export carries none of the private keys."""
    import io
    import zipfile

    from device.kiosk import create_app

    dicom = test_ca.issue("bedside-scp", ["localhost"], days=20)
    app = create_app(config.with_overrides(**{
        "server.tls_cert": site_cert.cert, "server.tls_key": site_cert.key,
        "dicom.port": free_port(), "dicom.tls_cert": dicom.cert, "dicom.tls_key": dicom.key,
        "dicom.fhir_destinations": [{"name": "ehr", "url": "https://ehr.example/fhir", "tls_insecure": True}],
    }))
    try:
        with form_client(app) as c:
            set_password(c)
            log_in(c)
            kiosk, listener, ehr = c.get("/technician/status.json").json["links"]
            page = c.get("/technician/").get_data(as_text=True)
            archive = c.get("/technician/diagnostics")
    finally:
        appliance_of(app).close()
    assert kiosk["subject"] == "O=Bedside,CN=localhost" and kiosk["warning"] is None
    assert kiosk["fingerprint"] == site_cert.fingerprint_sha256 and kiosk["fingerprint"] in page
    assert listener["days_left"] in (19, 20) and "expires on" in listener["warning"]
    assert listener["warning"] in page
    assert ehr["warning"].startswith("INSECURE") and "INSECURE" in page
    assert archive.status_code == 200
    with zipfile.ZipFile(io.BytesIO(archive.data)) as z:
        contents = b"".join(z.read(name) for name in z.namelist())
    assert b"PRIVATE KEY" not in contents and site_cert.key.read_bytes() not in contents


def test_status_flags_an_insecure_or_plain_central_node(config):
    from device.technician.status import links

    insecure = links(config.with_overrides(**{"models.remote_url": "https://node.clinic:8443",
                                              "models.remote_tls_insecure": True}))[-1]
    assert insecure["name"] == "Central inference node" and insecure["warning"].startswith("INSECURE")
    plain = links(config.with_overrides(**{"models.remote_url": "http://node.clinic:8000"}))[-1]
    assert plain["tls"] is False and "clear text" in plain["warning"]
    checked = links(config.with_overrides(**{"models.remote_url": "https://node.clinic:8443",
                                             "models.remote_tls_ca": "/etc/bedside/tls/ca.pem"}))[-1]
    assert checked["warning"] is None and checked["checked_against"] == "/etc/bedside/tls/ca.pem"


def test_an_expired_certificate_says_so_and_what_to_do(site_cert):
    import datetime as dt

    from device.core.certificates import describe_certificate

    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=900)
    info = describe_certificate(site_cert.cert, now=later)
    assert info.expired and info.warning().startswith(f"the certificate {site_cert.cert} expired on ")
    assert "install a renewed one" in info.warning()
    assert describe_certificate(site_cert.cert).warning() is None
