"""Issue 21, the device side: a bundle's refusal check (an output of its own graph) makes an image it
cannot judge UNGRADABLE "This does not look like a chest X-ray", in plain words with what to do,
everywhere a result appears (API, screen, SR, FHIR), with no score and no heatmap; every backend
fetches the check's output; an upload that names no exam goes to the exam that takes it; a
wrong-exam study is run again as another exam, linked, nothing deleted.

The bundle is the tiny one with a refusal output (tiny_bundle.py, REFUSAL), beside the shipped skin
exam; the images are real: chest films, dermoscopy, a red-free fundus photograph (ood-dev)."""

from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pydicom
import pytest

import fakes
from device.appliance.context import appliance_of
from device.core.settings import KioskConfig
from device.decision import refusal
from device.dicom.fhir import report_bundle
from device.dicom.results import result_objects
from device.runtime.base import ModelIO
from device.runtime.onnxruntime_backend import OnnxRuntimeBackend
from device.runtime.openvino_backend import OpenVinoBackend
from device.tensorrt.backend import TensorRTBackend
from device.tensorrt.settings import EngineSettings
from kiosk_support import form_client, gray_fundus_png
from loopback import wait_for
from models.bundle import RefusalPolicy, default_bundles_dir
from models.datasets import datasets_dir
from test_kiosk_pages import text
from tiny_bundle import REFUSAL, REFUSAL_OUTPUT, SIZE, tiny_onnx, variant_file

SKIN = default_bundles_dir() / "skin-lesion-triage"
REFUSED_LINE = "Cannot assess: this does not look like a chest X-ray"


# ---- every backend fetches every output the manifest names --------------------------------------


def _open(backend: str, path, io_, tmp_path):
    if backend == "onnxruntime":
        return OnnxRuntimeBackend(variant_file(path), io_, 2)
    if backend == "openvino":
        return OpenVinoBackend(variant_file(path), io_, 2)
    return TensorRTBackend(variant_file(path), io_, 1, EngineSettings(cache_dir=tmp_path / "engines", max_batch=8))


@pytest.mark.parametrize("keepdims", [False, True], ids=["N", "N1"])
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "tensorrt"])
def test_every_backend_fetches_the_refusal_output(tmp_path, monkeypatch, backend, keepdims):
    """The refusal score comes back by name from the same run as the logits, (N,) or (N, 1), for a
    batch split across threads too; TensorRT against the fake that enforces its 10.x contract (every
    output bound to an address, shapes from the context)."""
    if backend == "tensorrt":
        fakes.install(monkeypatch)
    path = tmp_path / "model.onnx"
    tiny_onnx(path, refusal=True, refusal_keepdims=keepdims)
    io_ = ModelIO("image", ("logits", "cam", REFUSAL_OUTPUT), (1, SIZE, SIZE))
    x = np.random.default_rng(0).normal(0.3, 1.0, (8, 1, SIZE, SIZE)).astype(np.float32)
    runner = _open(backend, path, io_, tmp_path)
    try:
        out = runner.run(x)
    finally:
        runner.close()
        if backend == "tensorrt":
            fakes.uninstall()
    assert set(out) == {"logits", "cam", REFUSAL_OUTPUT}
    assert out[REFUSAL_OUTPUT].shape == ((8, 1) if keepdims else (8,))
    np.testing.assert_allclose(out[REFUSAL_OUTPUT].reshape(8), np.abs(x.mean(axis=(1, 2, 3))), rtol=1e-4, atol=1e-5)


def test_a_broken_refusal_output_is_a_failure_not_an_acceptance():
    """NaN > threshold is False: a NaN score would accept every image; a wrong shape is another
    model's output. Both are refused (the Triager raises RuntimeFailure with the reason)."""
    policy = RefusalPolicy.model_validate(REFUSAL)
    ok = refusal.scores({REFUSAL_OUTPUT: np.array([[0.5], [2.0]], np.float32)}, policy, 2)
    assert ok.shape == (2, 1) and [refusal.assess(row, policy).refused for row in ok] == [False, True]
    with pytest.raises(refusal.RefusalOutputError, match="NaN"):
        refusal.scores({REFUSAL_OUTPUT: np.array([0.5, np.nan], np.float32)}, policy, 2)
    with pytest.raises(refusal.RefusalOutputError, match=r"shape \(2, 2\)"):
        refusal.scores({REFUSAL_OUTPUT: np.zeros((2, 2), np.float32)}, policy, 2)


# ---- a kiosk with the refusing exam and the shipped skin exam ------------------------------------


@pytest.fixture(scope="module")
def kiosk(tiny_refusing_bundle, tmp_path_factory):
    """A form client of a kiosk serving the refusing tiny exam and the skin exam, and its appliance."""
    if not SKIN.is_dir():
        pytest.skip("the shipped skin bundle is absent")
    from device.kiosk import create_app

    base = tmp_path_factory.mktemp("refusal-kiosk")
    drive = base / "media" / "usb"
    drive.mkdir(parents=True)
    camera = base / "camera"  # a camera held over a printed page, for the chest exam
    camera.mkdir()
    cv2.imwrite(str(camera / "page.jpg"), printed_page())
    config = KioskConfig.model_validate({
        "store": {"data_dir": str(base / "data")},
        "models": {"bundles": [str(tiny_refusing_bundle), str(SKIN)], "inference_threads": 1},
        "media": {"import_folders": [str(base / "media")], "export_folders": [str(base / "export")]},
        "capture": {"sources": [{"id": "cam", "uri": f"file://{camera}?fps=2&loop=1", "exam": "tiny-refusing"}]},
    })
    application = create_app(config)
    try:
        with form_client(application) as client:
            yield client, appliance_of(application), drive
    finally:
        appliance_of(application).close()


def printed_page() -> np.ndarray:
    """A photographed form: dark lines of text on white paper (sharp, well exposed, no X-ray)."""
    page = np.full((480, 640), 235, np.uint8)
    for row in range(60, 440, 28):
        cv2.putText(page, "Patient form: name, date, signature ____", (30, row), cv2.FONT_HERSHEY_SIMPLEX, 0.7, 20, 2)
    return page


def upload(client, data: bytes, name: str, exam: str | None = None):
    fields = {"file": (io.BytesIO(data), name), **({"exam": exam} if exam else {})}
    return client.post("/api/v1/studies", data=fields, content_type="multipart/form-data")


@pytest.fixture(scope="module")
def chest_film() -> bytes:
    films = sorted((datasets_dir() / "chest-xray" / "fullres-samples").glob("*/*.jpeg"))
    if not films:
        pytest.skip("no chest X-ray samples")
    return films[0].read_bytes()


@pytest.fixture(scope="module")
def lesion() -> bytes:
    return sorted((datasets_dir() / "dermatology" / "train" / "nv").glob("*.jpg"))[3].read_bytes()


@pytest.fixture(scope="module")
def refused(kiosk):
    """A gray fundus photograph given to the chest exam: the study (API JSON)."""
    client, _, _ = kiosk
    r = upload(client, gray_fundus_png(), "fundus.png", "tiny-refusing")
    assert r.status_code == 201, r.json
    return r.json


def test_a_refused_image_is_ungradable_with_the_reason_in_plain_words(kiosk, refused):
    client, appliance, _ = kiosk
    assert refused["triage"] == "UNGRADABLE" and refused["probability"] is None and refused["label"] is None
    assert refused["links"]["heatmap"] is None
    result = refused["result"]
    assert result["quality"]["ok"]  # it passed the image's own checks: the model refused it
    (reason,) = result["reasons"]
    assert (reason["code"], reason["message"], reason["action"]) == (
        "not_in_domain", "This does not look like a chest X-ray", REFUSAL["advice"])
    (check,) = result["refusal"]["checks"]
    assert check["name"] == "brightness_distance" and check["value"] > check["threshold"] == 0.8 and check["refused"]
    assert "brightness_distance" in reason["detail"]

    page = text(client.get(f"/studies/{refused['id']}"))
    assert REFUSED_LINE in page and REFUSAL["advice"] in page
    assert "score" not in page.lower() and "heatmap" not in page.lower().replace("image, heatmap and result", "")
    details = page.split("<summary")[-1]
    assert "brightness_distance" in details and "the limit 0.8" in details  # the figures behind Details
    assert "Run as Skin lesion triage from dermoscopy" in page

    # The DICOM SR and the FHIR Bundle say the same, with no score.
    study = appliance.store.get(refused["id"])
    manifest = appliance.exams.resolve("tiny-refusing").bundle.manifest
    source = pydicom.dcmread(datasets_dir() / "dicom" / "cr_dx" / "RG3_J2KR.dcm", stop_before_pixels=True)
    sr = result_objects(source, np.zeros((64, 64), np.uint8), study, manifest).sr
    content = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in sr.ContentSequence}
    assert content["Finding"].TextValue == REFUSED_LINE
    assert content["In-domain check"].TextValue.startswith("Refused: this does not look like a chest X-ray")
    assert "Probability of the urgent finding" not in content
    _, bundle = report_bundle(source, study, manifest)
    entries = json.loads(bundle)["entry"]
    assert REFUSED_LINE in entries[1]["resource"]["conclusion"] and "component" not in entries[0]["resource"]


def test_an_image_the_check_accepts_is_judged_and_says_so(kiosk, chest_film):
    client, _, _ = kiosk
    study = upload(client, chest_film, "film.jpeg", "tiny-refusing").json
    assert study["triage"] in ("URGENT", "ROUTINE") and study["result"]["reasons"] == []
    assert study["result"]["refusal"]["refused"] is False


def test_run_as_another_exam_makes_a_linked_study_and_deletes_nothing(kiosk, refused):
    client, appliance, _ = kiosk
    r = client.post(f"/api/v1/studies/{refused['id']}/run-as", json={"exam": "skin-lesion-triage", "operator": "nurse r"})
    assert r.status_code == 201, r.json
    second = r.json
    assert (second["exam"], second["rerun_of"], second["image"]["sha256"]) == (
        "skin-lesion-triage", refused["id"], refused["image"]["sha256"])
    assert second["result"]["reasons"][0]["code"] == "not_colour"  # a gray fundus is no dermoscopy either
    first = client.get(f"/api/v1/studies/{refused['id']}").json
    assert first["triage"] == "UNGRADABLE" and first["result"] == refused["result"]  # kept as it was
    assert first["review"]["by"] == "nurse r" and f"study #{second['id']}" in first["review"]["note"]
    created = [e for e in appliance.store.audit_log(50, second["id"]) if e.action == "study_created"]
    assert created[0].detail["rerun_of"] == refused["id"] and created[0].operator == "nurse r"
    # a second press opens the same study; the first page links to it
    again = client.post(f"/api/v1/studies/{refused['id']}/run-as", json={"exam": "skin-lesion-triage"})
    assert again.status_code == 201 and again.json["id"] == second["id"]
    assert f'href="/studies/{second["id"]}"' in text(client.get(f"/studies/{refused['id']}"))
    assert f'Run again from <a href="/studies/{refused["id"]}"' in text(client.get(f"/studies/{second['id']}"))


def test_only_a_wrong_exam_study_is_run_as_another(kiosk, chest_film):
    client, _, _ = kiosk
    judged = upload(client, chest_film, "film.jpeg", "tiny-refusing").json
    r = client.post(f"/api/v1/studies/{judged['id']}/run-as", json={"exam": "skin-lesion-triage"})
    assert r.status_code == 409
    assert client.post(f"/api/v1/studies/{judged['id']}/run-as", json={"exam": "tiny-refusing"}).status_code == 400


def test_an_upload_or_import_without_an_exam_goes_to_the_exam_that_takes_it(kiosk, chest_film, lesion):
    client, _, drive = kiosk
    assert upload(client, chest_film, "film.jpeg").json["exam"] == "tiny-refusing"
    assert upload(client, lesion, "lesion.jpg").json["exam"] == "skin-lesion-triage"
    r = upload(client, gray_fundus_png(), "fundus.png")  # neither takes it: the kiosk asks
    assert r.status_code == 422 and r.json["error"]["code"] == "choose_exam" and r.json["error"]["accepted"] == []
    message = r.json["error"]["message"]
    assert message.startswith("No exam here takes this image") and "this does not look like a chest X-ray" in message
    assert "this is a gray image, not a colour dermoscopy image" in message
    page = client.post("/studies", data={"file": (io.BytesIO(gray_fundus_png()), "fundus.png")},
                       content_type="multipart/form-data")
    assert page.status_code == 422 and "No exam here takes this image" in text(page)
    (drive / "lesion.jpg").write_bytes(lesion)
    imported = client.post("/api/v1/imports", json={"paths": [str(drive / "lesion.jpg")]})
    assert imported.status_code == 201 and imported.json["studies"][0]["exam"] == "skin-lesion-triage"


def test_the_exam_is_shown_on_the_worklist_and_history(kiosk, refused):
    client, _, _ = kiosk
    for path in ("/", "/history"):
        page = text(client.get(path))
        assert 'data-exam="tiny-refusing">Tiny test model that refuses<' in page, path


def test_the_live_view_says_so_too(kiosk):
    """A camera over a printed page, on the chest exam: the frame passes the camera's own checks and
    the model refuses it; the live result (what live.js shows) is UNGRADABLE with the same reason."""
    client, _, _ = kiosk
    assert wait_for(lambda: client.get("/api/v1/sources/cam/latest").status_code == 200, 20)
    latest = client.get("/api/v1/sources/cam/latest").json
    assert latest["triage"] == "UNGRADABLE" and latest["probability"] is None
    assert latest["result"]["quality"]["ok"]
    assert [r["message"] for r in latest["result"]["reasons"]] == ["This does not look like a chest X-ray"]
