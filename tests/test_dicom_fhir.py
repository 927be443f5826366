"""The optional FHIR result against a real HTTP server on loopback and a real folder: each
triaged DICOM study's DiagnosticReport + Observation (a transaction Bundle, valid FHIR by
fhir.resources) goes through the durable outbox, waits while the endpoint is down, arrives
exactly once, and a refusal is a failed item on the study page."""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pydicom
import pytest
from fhir.resources.R4B.bundle import Bundle

from device.appliance.context import appliance_of
from dcmtk_peer import SAMPLES, storescu, storescu_config
from dicom_peers import need_dcmtk, need_samples, wait_until
from loopback import free_port

FILE = SAMPLES / "cr_dx" / "RG3_J2KR.dcm"


class Endpoint:
    """A FHIR endpoint on loopback that keeps every Bundle POSTed to it and answers ``status``."""

    def __init__(self, port: int, status: int = 200, tls: ssl.SSLContext | None = None):
        self.received: list[dict] = []
        self.status = status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append({"type": self.headers["Content-Type"], "body": json.loads(body)})
                answer = json.dumps({"resourceType": "Bundle", "type": "transaction-response"}).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def fhir_app(config, destination: dict):
    from device.kiosk import create_app

    need_dcmtk()
    need_samples()
    return create_app(config.with_overrides(**{
        "dicom.port": free_port(), "dicom.allowed_callers": [{"ae_title": "XRAY1", "host": "127.0.0.1"}],
        "dicom.fhir_destinations": [{"name": "ehr", **destination}],
        "dicom.retry_first_s": 0.2, "dicom.retry_max_s": 0.5,
    }))


def send(appliance, folder) -> int:
    done = storescu(appliance.config.dicom.port, "XRAY1", [FILE], storescu_config([FILE], folder))
    assert done.returncode == 0, done.stderr
    ds = pydicom.dcmread(FILE, stop_before_pixels=True)
    return appliance.store.dicom_instance(ds.SOPInstanceUID)["study_id"]


def check_bundle(body: dict, appliance, study_id: int) -> None:
    """Valid FHIR; the report points at its observation; patient, source study, category and
    algorithm as the kiosk holds them."""
    bundle = Bundle.model_validate(body)
    assert bundle.type == "transaction"
    observation, report = (e.resource for e in bundle.entry)
    assert (observation.get_resource_type(), report.get_resource_type()) == ("Observation", "DiagnosticReport")
    assert [r.reference for r in report.result] == [bundle.entry[0].fullUrl]
    assert all(e.request.method == "POST" and e.request.ifNoneExist for e in bundle.entry)  # a re-send creates nothing
    ds = pydicom.dcmread(FILE, stop_before_pixels=True)
    study = appliance.store.get(study_id)
    assert observation.subject.identifier.value == ds.PatientID == report.subject.identifier.value
    assert observation.derivedFrom[0].identifier.value == f"urn:oid:{ds.StudyInstanceUID}"
    assert observation.valueCodeableConcept.text == study.triage
    assert study.model.sha256 in observation.method.text and study.model.version in observation.method.text
    assert report.conclusion.startswith(study.triage)
    if study.probability is None:  # UNGRADABLE: no score, here as on the screen
        assert observation.component is None
    else:
        assert float(observation.component[0].valueQuantity.value) == pytest.approx(study.probability)


def test_bundle_waits_for_the_endpoint_then_arrives_once(config, tmp_path):
    port = free_port()
    app = fhir_app(config, {"url": f"http://127.0.0.1:{port}/fhir"})
    appliance = appliance_of(app)
    try:
        study_id = send(appliance, tmp_path)
        (item,) = wait_until(lambda: [i for i in appliance.dicom.outbox.items() if i["attempts"] >= 2], 30,
                             "failed attempts while the endpoint is down")
        assert item["state"] == "queued" and "cannot reach" in item["last_error"] and item["sop_class"] == "FHIR R4 Bundle"
        page = app.test_client().get(f"/studies/{study_id}").get_data(as_text=True)
        assert "FHIR report to ehr" in page and "cannot reach" in page
        with Endpoint(port) as endpoint:
            wait_until(lambda: appliance.dicom.outbox.items()[0]["state"] == "sent", 30, "the Bundle delivered")
            (received,) = endpoint.received
        assert received["type"] == "application/fhir+json" and received["body"]["id"] == item["sop_instance_uid"]
        check_bundle(received["body"], appliance, study_id)
        assert 'data-send-state="sent"' in app.test_client().get("/").get_data(as_text=True)
    finally:
        appliance.close()


def test_a_refused_bundle_is_failed_not_resent(config, tmp_path):
    port = free_port()
    with Endpoint(port, status=422) as endpoint:
        app = fhir_app(config, {"url": f"http://127.0.0.1:{port}/fhir"})
        appliance = appliance_of(app)
        try:
            study_id = send(appliance, tmp_path)
            (item,) = wait_until(lambda: [i for i in appliance.dicom.outbox.items() if i["state"] == "failed"], 30,
                                 "the refusal recorded")
            assert "422" in item["last_error"] and item["attempts"] == 1 and len(endpoint.received) == 1
            page = app.test_client().get(f"/studies/{study_id}").get_data(as_text=True)
            assert 'data-send-state="failed"' in page
        finally:
            appliance.close()


def https_endpoint_context(pair) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair.cert, pair.key)
    return context


@pytest.mark.parametrize("case", ["trusted", "another CA", "another name", "expired", "insecure"])
def test_bundle_over_https_only_to_an_endpoint_whose_certificate_checks_out(config, tmp_path, test_ca, site_cert,
                                                                             case, caplog):
    """The endpoint's certificate is from the test CA and names localhost only: trusted, it gets the
    Bundle; with another CA bundle, called by another name or with its certificate expired it gets
    nothing and the item waits with the reason; the insecure switch sends anyway, with a loud warning."""
    port = free_port()
    host = "127.0.0.1" if case == "another name" else "localhost"
    ca = site_cert.cert if case in ("another CA", "insecure") else test_ca.cert
    expired = {"not_before_days": -30, "days": -1} if case == "expired" else {}
    with Endpoint(port, tls=https_endpoint_context(test_ca.issue("ehr", ["localhost"], **expired))) as endpoint:
        app = fhir_app(config, {"url": f"https://{host}:{port}/fhir", "tls_ca": str(ca), "tls_insecure": case == "insecure"})
        appliance = appliance_of(app)
        try:
            send(appliance, tmp_path)
            if case in ("trusted", "insecure"):
                wait_until(lambda: appliance.dicom.outbox.items()[0]["state"] == "sent", 30, "the Bundle delivered")
                assert len(endpoint.received) == 1
            else:
                (item,) = wait_until(lambda: [i for i in appliance.dicom.outbox.items() if i["attempts"] >= 1], 30,
                                     "a refused attempt")
                assert item["state"] == "queued" and "CERTIFICATE_VERIFY_FAILED" in item["last_error"], item
                assert endpoint.received == []
            assert ("INSECURE TLS to FHIR destination ehr" in caplog.text) == (case == "insecure")
        finally:
            appliance.close()


def test_bundle_written_to_a_folder(config, tmp_path):
    folder = tmp_path / "fhir-out"
    app = fhir_app(config, {"folder": str(folder)})
    appliance = appliance_of(app)
    try:
        study_id = send(appliance, tmp_path)
        wait_until(lambda: appliance.dicom.outbox.items()[0]["state"] == "sent", 30, "the Bundle written")
        (written,) = folder.glob("*.json")
        assert written.stem == appliance.dicom.outbox.items()[0]["sop_instance_uid"]
        check_bundle(json.loads(written.read_text()), appliance, study_id)
    finally:
        appliance.close()


@pytest.mark.parametrize("fhir,message", [
    ({"name": "ehr", "folder": "/tmp/x", "url": "http://127.0.0.1:1/"}, "either folder or url"),
    ({"name": "ehr"}, "either folder or url"),
    ({"name": "ehr", "url": "http://127.0.0.1:1/", "tls_ca": "/ca.pem"}, "are for a link over TLS"),
    ({"name": "pacs", "folder": "/tmp/x"}, "used more than once: pacs"),
])
def test_fhir_settings_are_checked(config, fhir, message):
    from device.core.settings import ConfigError

    with pytest.raises(ConfigError, match=message):
        config.with_overrides(**{"dicom.fhir_destinations": [fhir], "dicom.destinations": [
            {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}]})


def test_an_ungradable_study_has_no_score_in_fhir(config, tmp_path):
    """The Bundle of an UNGRADABLE study says why and what to do, and carries no probability."""
    import dataclasses

    from device.dicom.fhir import report_bundle

    app = fhir_app(config, {"folder": str(tmp_path / "out")})
    appliance = appliance_of(app)
    try:
        study = appliance.store.get(send(appliance, tmp_path))
        issues = [{"message": "the image is blank", "action": "Take the image again"}]
        ungradable = dataclasses.replace(study, triage="UNGRADABLE", label=None, probability=None, cam=None,
                                         result={**study.result, "quality": {"ok": False, "issues": issues}})
        manifest = appliance.exams.resolve(study.exam).bundle.manifest
        _, data = report_bundle(pydicom.dcmread(FILE, stop_before_pixels=True), ungradable, manifest)
        observation, report = (e.resource for e in Bundle.model_validate_json(data).entry)
        assert observation.component is None and observation.valueCodeableConcept.text == "UNGRADABLE"
        assert "the image is blank. Take the image again" in observation.note[0].text
        assert report.conclusion.startswith("UNGRADABLE: Cannot assess")
        assert "score" not in data.decode().lower() and "probab" not in data.decode().lower()
    finally:
        appliance.close()
