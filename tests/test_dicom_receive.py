"""The C-STORE SCP against dcmtk: C-ECHO, callers refused at association, the shared samples stored,
triaged and listed, broken instances refused while the rest of the association goes on."""

from __future__ import annotations

import socket

import pydicom
import pytest

from device.appliance.context import appliance_of
from device.core.store import StudyFilter
from device.dicom.contexts import TRANSFER_SYNTAXES
from dcmtk_peer import echoscu, SAMPLES, storescu, storescu_config
from dicom_peers import need_dcmtk, need_samples, wait_until
from loopback import free_port
from kiosk_support import running_server

GOOD = sorted((SAMPLES / "cr_dx").glob("*.dcm"))
BROKEN = [SAMPLES / "edge_cases" / name for name in ("966.dcm", "RG2_JPLY.dcm")]  # X-rays that do not decode
NO_EXAM = SAMPLES / "edge_cases" / "JPEG-lossy.dcm"  # an NM (broken too): no exam reads it, kept undecoded


@pytest.fixture
def dicom_app(config, request):
    """The kiosk app with its SCP on a free port; XRAY1 from 127.0.0.1 may send."""
    from device.kiosk import create_app

    need_dcmtk()
    callers = getattr(request, "param", [{"ae_title": "XRAY1", "host": "127.0.0.1"}])
    cfg = config.with_overrides(**{"dicom.port": free_port(), "dicom.allowed_callers": callers})
    application = create_app(cfg)
    yield application
    appliance_of(application).close()


def test_every_accepted_transfer_syntax_has_a_decoder():
    from pydicom.pixels import get_decoder

    for syntax in TRANSFER_SYNTAXES:
        if syntax.is_compressed:
            assert get_decoder(syntax).is_available, syntax.name


def test_echo_from_an_allowed_caller(dicom_app):
    done = echoscu(appliance_of(dicom_app).config.dicom.port, "XRAY1")
    assert done.returncode == 0, done.stderr


def test_an_unknown_calling_ae_is_rejected_and_logged(dicom_app):
    appliance = appliance_of(dicom_app)
    done = echoscu(appliance.config.dicom.port, "STRANGER")
    assert done.returncode != 0
    assert "Calling AE Title Not Recognized" in done.stdout + done.stderr
    # recorded just after the rejection is sent, so possibly after echoscu has it
    (event,) = wait_until(appliance.store.dicom_events, 10, "the rejection in the SCP's log")
    assert (event["event"], event["calling_ae"], event["peer"]) == ("association_rejected", "STRANGER", "127.0.0.1")


@pytest.mark.parametrize("dicom_app", [[{"ae_title": "XRAY1", "host": "127.0.0.2"}]], indirect=True)
def test_a_known_title_from_another_host_is_rejected(dicom_app):
    done = echoscu(appliance_of(dicom_app).config.dicom.port, "XRAY1")
    assert done.returncode != 0
    assert "Calling AE Title Not Recognized" in done.stdout + done.stderr


def test_samples_are_stored_triaged_and_listed_broken_ones_refused(dicom_app, tmp_path):
    need_samples()
    appliance = appliance_of(dicom_app)
    # Broken files first and in between: the good ones after them must still succeed.
    files = [BROKEN[0], *GOOD[:4], BROKEN[1], *GOOD[4:], NO_EXAM, GOOD[0]]  # GOOD[0] twice
    sent = storescu(appliance.config.dicom.port, "XRAY1", files, storescu_config(files, tmp_path))
    responses = [line for line in sent.stdout.splitlines() + sent.stderr.splitlines() if "Store Response" in line]
    assert len(responses) == len(files), sent.stderr
    assert ["Success" in line for line in responses] == [path not in BROKEN for path in files]

    _, total = appliance.store.list(StudyFilter(), 100)
    assert total == len(GOOD)  # the re-sent instance is kept once
    for path in GOOD:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        row = appliance.store.dicom_instance(ds.SOPInstanceUID)
        assert row is not None, path.name
        study = appliance.store.get(row["study_id"])
        assert study.source == "dicom:XRAY1"
        assert study.reference == str(ds.get("AccessionNumber", ""))
        assert (row["patient_name"], row["patient_id"], row["modality"], row["study_date"]) == (
            str(ds.get("PatientName", "")), str(ds.get("PatientID", "")), ds.Modality, str(ds.get("StudyDate", ""))
        )
    failed = [e for e in appliance.store.dicom_events(200) if e["event"] == "store_failed"]
    assert sorted(e["sop_instance_uid"] for e in failed) == sorted(
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in BROKEN
    )
    assert all(0xC000 <= e["status"] <= 0xCFFF and e["detail"] for e in failed)
    assert [e["event"] for e in appliance.store.dicom_events(200)].count("duplicate") == 1
    (kept,), _ = appliance.store.untriaged(10)  # stored and acknowledged, never decoded, not a study
    assert (kept["sop_instance_uid"], kept["modality"], kept["reason"]) == (
        pydicom.dcmread(NO_EXAM, stop_before_pixels=True).SOPInstanceUID, "NM", "no exam for this kind of image")
    stored, sent = pydicom.dcmread(appliance.store.image_path(kept["image_sha256"])), pydicom.dcmread(NO_EXAM)
    assert stored.SOPInstanceUID == sent.SOPInstanceUID and stored.PixelData == sent.PixelData


def test_serve_with_dicom_port_receives_while_http_keeps_serving(tmp_path, tiny_bundle):
    """`bedside serve --dicom-port N` with the callers from the TOML file; the worklist API shows the
    header's patient, accession and modality, and health answers between the stores."""
    need_dcmtk()
    need_samples()
    config = tmp_path / "bedside.toml"
    config.write_text('[dicom]\nae_title = "BEDSIDE"\nallowed_callers = [{ ae_title = "XRAY1", host = "127.0.0.1" }]\n')
    port = free_port()
    files = GOOD[:2]
    with running_server(tmp_path / "data", [tiny_bundle], "--config", str(config), "--dicom-port", str(port)) as server:
        client = server.client()
        assert echoscu(port, "XRAY1").returncode == 0
        sent = storescu(port, "XRAY1", files, storescu_config(files, tmp_path))
        assert sent.returncode == 0, sent.stderr
        assert client.get_json("/api/v1/health")[0] == 200
        status, listing = client.get_json("/api/v1/studies")
        assert status == 200 and {s["source"] for s in listing["studies"]} == {"dicom:XRAY1"}
        for study, path in zip(sorted(listing["studies"], key=lambda s: s["id"]), files):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            status, body = client.get_json(f"/api/v1/studies/{study['id']}/dicom")
            (instance,) = body["instances"]
            assert instance["sop_instance_uid"] == ds.SOPInstanceUID
            assert (instance["patient_name"], instance["modality"]) == (str(ds.get("PatientName", "")), ds.Modality)
        client.close()


def test_dicom_settings_are_checked_and_a_taken_port_is_a_config_error(config):
    from device.kiosk import create_app
    from device.core.settings import ConfigError, validate

    with pytest.raises(ConfigError, match="dicom.ae_title"):
        validate({"dicom": {"ae_title": "A TITLE LONGER THAN 16"}}, "test.toml")
    with pytest.raises(ConfigError, match="dicom.allowed_callers"):
        validate({"dicom": {"allowed_callers": [{"ae_title": "XRAY1"}]}}, "test.toml")  # no host
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match=r"\[dicom\]: cannot listen on 127.0.0.1"):
            create_app(config.with_overrides(**{"dicom.port": taken.getsockname()[1]}))


def test_worklist_and_study_pages_show_the_header(dicom_app, tmp_path):
    """Patient name and id, accession, study date (ISO) and modality from the header, on the
    worklist, the study page and in GET /api/v1/worklist."""
    need_samples()
    from device.dicom.shown import iso_date, person_name

    appliance = appliance_of(dicom_app)
    files = [SAMPLES / "cr_dx" / "RG3_J2KR.dcm"]  # one with an accession number
    sent = storescu(appliance.config.dicom.port, "XRAY1", files, storescu_config(files, tmp_path))
    assert sent.returncode == 0, sent.stderr
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    study_id = appliance.store.dicom_instance(ds.SOPInstanceUID)["study_id"]
    shown = [person_name(str(ds.PatientName)), ds.PatientID, ds.AccessionNumber, iso_date(ds.StudyDate), ds.Modality]
    assert shown == ["CompressedSamples, RG3", "11RG3", "FUJI95706", "2004-08-26", "CR"]
    client = dicom_app.test_client()
    for page in ("/", f"/studies/{study_id}", "/history"):
        html = client.get(page).get_data(as_text=True)
        assert all(value in html for value in shown), page
    (entry,) = client.get("/api/v1/worklist").get_json()["studies"]
    assert [entry["dicom"][k] for k in ("patient_name", "patient_id", "accession_number", "study_date", "modality")] \
        == shown
    assert entry["dicom"]["calling_ae"] == "XRAY1" and entry["dicom"]["send_state"] is None  # no destinations
