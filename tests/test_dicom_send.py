"""Results back to a real Orthanc: the SR and the heatmap SC arrive, reference the source study and
carry the algorithm identity; with Orthanc down the outbox waits and then delivers exactly once."""

from __future__ import annotations

import re

import pydicom
import pytest

from device.appliance.context import appliance_of
from device.dicom.results import MANUFACTURER, RESEARCH_BANNER
from dcmtk_peer import SAMPLES, storescu, storescu_config
from dicom_peers import need_dcmtk, need_samples, wait_until
from loopback import free_port
from orthanc_peer import AE_TITLE

SR_CLASS, SC_CLASS = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7"
FILES = sorted((SAMPLES / "cr_dx").glob("*.dcm"))[:3]


@pytest.fixture
def sending_app(config, orthanc):
    from device.kiosk import create_app

    need_dcmtk()
    need_samples()
    cfg = config.with_overrides(**{
        "dicom.port": free_port(),
        "dicom.allowed_callers": [{"ae_title": "XRAY1", "host": "127.0.0.1"}],
        "dicom.destinations": [{"name": "pacs", "ae_title": AE_TITLE, "host": "127.0.0.1", "port": orthanc.dicom_port}],
        "dicom.retry_first_s": 0.2,
        "dicom.retry_max_s": 1.0,
    })
    application = create_app(cfg)
    yield application
    appliance_of(application).close()


def row_states(html: str) -> dict[int, str]:
    """The send state each worklist row shows, by study id."""
    return {int(study): state for study, state in re.findall(r'data-study="(\d+)".*?data-send-state="(\w+)"', html, re.S)}


def send(appliance, files, folder):
    done = storescu(appliance.config.dicom.port, "XRAY1", files, storescu_config(files, folder))
    assert done.returncode == 0, done.stderr


def test_sr_and_heatmap_arrive_in_orthanc(sending_app, orthanc, tmp_path):
    appliance = appliance_of(sending_app)
    send(appliance, FILES[:1], tmp_path)
    arrived = wait_until(lambda: len(orthanc.get("/instances")) == 2 and orthanc.instances(), 60, "SR and SC in Orthanc")
    source = pydicom.dcmread(FILES[0], stop_before_pixels=True)
    by_class = {i["SOPClassUID"]: i for i in arrived}
    assert set(by_class) == {SR_CLASS, SC_CLASS}
    study = appliance.store.get(appliance.store.dicom_instance(source.SOPInstanceUID)["study_id"])
    for tags in arrived:
        assert tags["StudyInstanceUID"] == source.StudyInstanceUID
        assert tags["SeriesInstanceUID"] != source.SeriesInstanceUID
        # highdicom lists the source's acquisition equipment too; ours is the processing one
        (equipment,) = [e for e in tags["ContributingEquipmentSequence"] if e["Manufacturer"] == MANUFACTURER]
        assert equipment["ManufacturerModelName"] == study.model.id
        assert study.model.sha256 in equipment["SoftwareVersions"]
    assert RESEARCH_BANNER in by_class[SC_CLASS]["SeriesDescription"]
    client = sending_app.test_client()
    expected = {(SR_CLASS, "sent", "pacs"), (SC_CLASS, "sent", "pacs")}
    # Orthanc has them before the sender has committed its 'sent'
    wait_until(lambda: {(i["sop_class"], i["state"], i["destination"])
                        for i in client.get("/api/v1/outbox").get_json()["items"]} == expected, 30, "the outbox: sent")


def test_outbox_waits_for_a_down_peer_then_delivers_exactly_once(sending_app, orthanc, tmp_path):
    appliance = appliance_of(sending_app)
    send(appliance, FILES[:1], tmp_path)
    wait_until(lambda: len(orthanc.get("/instances")) == 2, 60, "the first study's results in Orthanc")
    orthanc.stop()
    send(appliance, FILES[1:], tmp_path)

    def retried() -> bool:
        waiting = [i for i in appliance.dicom.outbox.items() if i["state"] != "sent"]
        return len(waiting) == 4 and all(i["attempts"] >= 1 and i["last_error"] for i in waiting)

    wait_until(retried, 60, "the results queued, with failed attempts, while Orthanc is down")
    first = appliance.store.dicom_instance(pydicom.dcmread(FILES[0], stop_before_pixels=True).SOPInstanceUID)["study_id"]
    client = sending_app.test_client()
    waiting = {s: state for s, state in row_states(client.get("/").get_data(as_text=True)).items() if s != first}
    assert len(waiting) == 2 and set(waiting.values()) <= {"queued", "sending"}, waiting
    assert row_states(client.get("/").get_data(as_text=True))[first] == "sent"
    page = client.get(f"/studies/{next(iter(waiting))}").get_data(as_text=True)
    assert "report to pacs" in page and "heatmap to pacs" in page and "cannot connect" in page  # why it waits
    orthanc.start()
    wait_until(lambda: all(i["state"] == "sent" for i in appliance.dicom.outbox.items()), 60, "everything sent")
    assert set(row_states(client.get("/").get_data(as_text=True)).values()) == {"sent"}
    instances = orthanc.instances()
    assert len(instances) == 6
    assert len({i["SOPInstanceUID"] for i in instances}) == 6
    assert orthanc.get("/statistics")["CountInstances"] == 6


def test_an_ungradable_study_is_reported_without_a_score(sending_app, orthanc, tmp_path):
    """A blank DX: UNGRADABLE. Its SR reaches Orthanc with the category and the quality verdict,
    and no probability (no score anywhere a person looks); there is no heatmap to send."""
    import numpy as np

    from dicom_factory import grayscale_dicom

    appliance = appliance_of(sending_app)
    path = tmp_path / "blank.dcm"
    path.write_bytes(grayscale_dicom(np.full((512, 512), 4000, np.uint16), bits=12, modality="DX", body_part="CHEST"))
    ds = pydicom.dcmread(path)  # the UIDs every modality sends (Type 1); no birth date or sex (Type 2)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    ds.PatientName, ds.PatientID = "BLANK^TEST", "P-BLANK"
    ds.save_as(path)
    send(appliance, [path], tmp_path)
    study = appliance.store.get(appliance.store.dicom_instance(pydicom.dcmread(path).SOPInstanceUID)["study_id"])
    assert study.triage == "UNGRADABLE"
    (sr,) = wait_until(orthanc.instances, 60, "the SR in Orthanc")
    assert sr["SOPClassUID"] == SR_CLASS
    content = {item["ConceptNameCodeSequence"][0]["CodeMeaning"]: item for item in sr["ContentSequence"]}
    assert content["Triage category"]["TextValue"] == "UNGRADABLE"
    assert "Probability of the urgent finding" not in content
    assert content["Finding"]["TextValue"] == "Cannot assess: the image is blank or almost uniform"
    assert content["Image quality verdict"]["TextValue"] not in ("", "ok")
