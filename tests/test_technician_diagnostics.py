"""The diagnostics archive holds no patient data: studies with a patient reference, an operator and a
telling file name, a real DICOM with a patient's name, ID and accession number received over
C-STORE (dcmtk's storescu), and log lines that name them, and none of it is in the archive."""

from __future__ import annotations

import io
import json
import logging
import zipfile

import pydicom
import pytest

from device.appliance.context import appliance_of
from device.technician.area import area_of
from device.technician.diagnostics import Scrubber
from device.technician.safe_mode import StartRecord
from dcmtk_peer import SAMPLES, storescu, storescu_config
from dicom_peers import need_dcmtk, need_samples, wait_until
from loopback import free_port
from kiosk_support import form_client, png_bytes
from test_technician import log_in, set_password

REFERENCE = "PAT-ZX-98765"
OPERATOR = "Nurse Quillfeather"
FILENAME = "zelda_doe_chest.png"
PATIENT = {"PatientName": "Doe^Zelda", "PatientID": "PID-77421", "AccessionNumber": "ACC-55310"}


@pytest.fixture
def dicom_app(config):
    from device.kiosk import create_app

    need_dcmtk()
    need_samples()
    cfg = config.with_overrides(**{"dicom.port": free_port(),
                                   "dicom.allowed_callers": [{"ae_title": "XRAY1", "host": "127.0.0.1"}]})
    application = create_app(cfg)
    yield application
    appliance_of(application).close()


def _patient_dicom(tmp_path):
    ds = pydicom.dcmread(SAMPLES / "cr_dx" / "RG2_JPLY_fixed.dcm")
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    path = tmp_path / "patient.dcm"
    ds.save_as(path)
    return path, str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)


def test_the_diagnostics_archive_holds_no_patient_data(dicom_app, tmp_path):
    appliance = appliance_of(dicom_app)
    with form_client(dicom_app) as c:
        upload = c.post("/api/v1/studies", data={"file": (io.BytesIO(png_bytes(5, 128)), FILENAME),
                                                 "reference": REFERENCE, "operator": OPERATOR},
                        content_type="multipart/form-data")
        assert upload.status_code == 201
        dicom, sop_uid, study_uid = _patient_dicom(tmp_path)
        sent = storescu(appliance.config.dicom.port, "XRAY1", [dicom], storescu_config([dicom], tmp_path))
        assert sent.returncode == 0, sent.stderr
        row = wait_until(lambda: appliance.store.dicom_instance(sop_uid), 30, "the received instance")
        assert row["patient_id"] == PATIENT["PatientID"]
        # Log lines that name them, as the kiosk writes them: a capture folder's skipped file (the
        # real reader's warning) and a DICOM line with the instance's UID.
        folder = tmp_path / "frames"
        folder.mkdir()
        (folder / f"0-{REFERENCE}.png").write_bytes(b"not an image")
        (folder / "1.png").write_bytes(png_bytes(1, 64))
        set_password(c)
        log_in(c)
        assert c.post("/technician/sources/test", data={"uri": f"file://{folder}"}).status_code == 200
        logging.getLogger("device.dicom.ingest").warning("C-STORE from %s (%s), %s: refused", "XRAY1", "127.0.0.1", sop_uid)
        logging.getLogger("bedside.kiosk").warning("study of %s (%s) by %s", PATIENT["PatientName"], study_uid, OPERATOR)
        log_text = "".join(p.read_text() for p in area_of(dicom_app).logbook.files())
        assert REFERENCE in log_text and sop_uid in log_text  # the raw logs do hold them

        StartRecord(appliance.config.store.data_dir).failed("failed: the bundle directory was not found")
        archive = c.get("/technician/diagnostics")
    assert archive.status_code == 200 and archive.headers["Content-Type"] == "application/zip"
    members = zipfile.ZipFile(io.BytesIO(archive.data))
    names = members.namelist()
    assert {"status.json", "settings.json", "technician-audit.json", "logs/bedside.log"} <= set(names)
    assert "failed: the bundle directory was not found" in members.read("startup.json").decode()
    everything = b"".join(members.read(n) for n in names)
    secrets = [REFERENCE, OPERATOR, FILENAME, sop_uid, study_uid, *PATIENT.values(), "Zelda"]
    assert [s for s in secrets if s.encode() in everything] == []
    assert b"\x89PNG" not in everything and b"DICM" not in everything
    assert b"<redacted>" in members.read("logs/bedside.log") and b"<uid>" in members.read("logs/bedside.log")
    status = json.loads(members.read("status.json"))
    assert status["models"] and status["backends"]


def test_the_scrubber_replaces_longest_values_first_and_every_uid():
    scrub = Scrubber({"Doe", "Doe^Zelda", "ab"})
    assert scrub("Doe^Zelda and Doe, 1.2.840.113619.2.55.3") == "<redacted> and <redacted>, <uid>"
    assert scrub("ab stays") == "ab stays"  # too short to scrub without eating ordinary words
