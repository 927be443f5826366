"""The site operating point and the drift monitor in a running kiosk (the app and its store, with the
chest bundle carrying its monitoring reference), on real films: every result says which point decided
it (API, result page, SR, FHIR), an acceptance applied by the command line while the kiosk runs is
used from the next study, the monitor goes from collecting to ok, then to drift on inverted films
(results still shown at once, the change audited, /metrics and the home screen say so), a bundle
with another sha256 falls back to its own point and asks for acceptance again, reviews that say
agree or disagree feed the monitor and a later acceptance, and a restart keeps the state."""

from __future__ import annotations

import io
import json
import random
import shutil

import cv2
import pydicom
import pytest

from device.appliance.context import appliance_of
from device.cli import main as bedside
from device.core.settings import KioskConfig
from device.dicom import fhir, results
from device.kiosk import create_app
from kiosk_support import form_client
from models.bundle import load_bundle, write_manifest

EXAM = "chest-xray-pneumonia"


def films(folder, n=None):
    """The folder's films in a fixed mixed order (normals and pneumonia interleaved, as a clinic's day)."""
    found = sorted(folder.rglob("*.jpeg"))
    random.Random(0).shuffle(found)
    return found[:n]


def inverted(path) -> bytes:
    ok, data = cv2.imencode(".png", 255 - cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
    return data.tobytes()


@pytest.fixture
def kiosk(tmp_path, monitored_chest):
    config = KioskConfig.model_validate({
        "store": {"data_dir": str(tmp_path / "data")},
        "models": {"bundles": [str(monitored_chest)], "backend": "onnxruntime", "precision": "int8",
                   "inference_threads": 1},
        "media": {"import_folders": [str(tmp_path / "media")], "export_folders": [str(tmp_path / "export")]},
        "monitoring": {"window": 40, "min_studies": 20, "confirm": 3},
    })
    made = []

    def start():
        app = create_app(config)
        app.config["TESTING"] = True
        made.append(app)
        return app, form_client(app)

    yield config, start
    for app in made:
        running = app.extensions.pop("bedside", None)  # a test that restarted the kiosk closed the first one
        if running is not None:
            running.close()


def upload(client, data: bytes, name: str, **fields):
    r = client.post("/api/v1/studies", data={"file": (io.BytesIO(data), name), **fields},
                    content_type="multipart/form-data")
    assert r.status_code == 201, r.json
    return r.json


def monitor(client) -> dict:
    return client.get("/api/v1/monitoring").json["exams"][EXAM]


def test_site_point_then_drift_then_restart(kiosk, tmp_path, capsys, chest_cases, monitored_chest):
    config, start = kiosk
    app, client = start()
    first = upload(client, films(chest_cases["later"])[0].read_bytes(), "a.jpeg")
    op = first["result"]["operating_point"]
    assert op["source"] == "bundle" and op["threshold"] == first["result"]["threshold"]
    assert set(first["result"]["image_statistics"]) >= {"brightness", "contrast", "edges", "layout"}
    assert monitor(client)["state"] == "collecting"
    for path in films(chest_cases["later"], 25):
        upload(client, path.read_bytes(), path.name)
    status = monitor(client)
    assert status["state"] == "ok" and status["window"]["studies"] == 26, status
    assert status["reference"].startswith("the bundle's reference (validation")
    assert status["reference"].endswith("model scores by the int8 variant)")  # the variant this kiosk serves

    # An acceptance applied by the command line while the kiosk runs: used from the next study on.
    out = tmp_path / "acceptance"
    assert bedside(["acceptance", "run", "--bundle", str(monitored_chest), "--data", str(chest_cases["accept"]),
                    "--out", str(out), "--data-dir", str(config.store.data_dir), "--bootstrap", "100"]) == 0
    judged = json.loads((out / "acceptance.json").read_text())["figures"]["counts"]["judged"]  # not refused
    assert bedside(["acceptance", "apply", str(out / "acceptance.json"), "--signed-by", "Dr Ada Obi",
                    "--bundle", str(monitored_chest), "--data-dir", str(config.store.data_dir)]) == 0
    capsys.readouterr()
    site = upload(client, films(chest_cases["later"])[1].read_bytes(), "b.jpeg")
    op = site["result"]["operating_point"]
    assert op["source"] == "site" and op["text"].startswith("Site operating point, accepted ") and \
        op["text"].endswith(f"on {judged} local cases by Dr Ada Obi")
    assert client.get("/api/v1/exams").json["exams"][0]["operating_point"]["source"] == "site"
    page = client.get(f"/studies/{site['id']}").get_data(as_text=True)
    assert op["text"] in page and 'data-operating-point-source="site"' in page
    status = monitor(client)
    assert status["reference"].startswith(f"the site's acceptance sample ({judged} cases")
    assert status["operating_point"]["source"] == "site"

    # The SR and the FHIR result say the same.
    record = appliance_of(app).store.get(site["id"])
    header = pydicom.Dataset()
    header.update({"PatientID": "P1", "PatientName": "Test^Patient", "StudyInstanceUID": "1.2.3",
                   "SOPClassUID": "1.2.840.10008.5.1.4.1.1.1", "SOPInstanceUID": "1.2.3.4", "Modality": "CR"})
    words = results.operating_point_words(record)
    assert words.endswith(op["text"]) and f"{op['threshold']:.4f}" in words
    _, bundle_json = fhir.report_bundle(header, record, load_bundle(monitored_chest).manifest)
    assert op["text"] in bundle_json.decode()

    # Inverted films (MONOCHROME1 shown as stored): drift, results still given at once.
    for path in films(chest_cases["later"], 30):
        study = upload(client, inverted(path), path.stem + ".png")
        assert study["triage"] in ("URGENT", "ROUTINE", "UNGRADABLE")
    status = monitor(client)
    assert status["state"] == "drift" and status["kind"] == "images", status
    assert any("correlation with the reference's mean image" in r for r in status["reasons"])
    events = appliance_of(app).site.monitor_events(EXAM)
    assert [e.state for e in events][:1] == ["drift"] and {"ok"} <= {e.state for e in events}
    metrics = client.get("/metrics").get_data(as_text=True)
    assert f'bedside_drift_state{{exam="{EXAM}",state="drift"}} 1.0' in metrics
    assert f'bedside_operating_point_threshold{{exam="{EXAM}",source="site"}}' in metrics
    assert "Model check needed: recent images differ from those the model was accepted on" in \
        client.get("/").get_data(as_text=True)
    appliance_of(app).close()
    app.extensions.pop("bedside")

    # A restart rebuilds the window from the store and carries on: no new audit entry.
    app, client = start()
    assert monitor(client)["state"] == "drift"
    assert len(appliance_of(app).site.monitor_events(EXAM)) == len(events)


def test_another_bundle_asks_for_acceptance_again(kiosk, tmp_path, chest_cases, monitored_chest):
    config, start = kiosk
    app, client = start()
    k = appliance_of(app)
    out = tmp_path / "acceptance"
    assert bedside(["acceptance", "run", "--bundle", str(monitored_chest), "--data", str(chest_cases["accept"]),
                    "--out", str(out), "--data-dir", str(config.store.data_dir), "--bootstrap", "50"]) == 0
    from device.site.acceptance import read_document
    k.site_points.apply(read_document((out / "acceptance.json").read_bytes()), k.exams.resolve(EXAM).bundle,
                        "Dr Ada Obi", "test")
    newer = tmp_path / "chest-next"
    shutil.copytree(monitored_chest, newer)
    accepted_version = load_bundle(newer).manifest.version
    next_version = accepted_version[:accepted_version.rindex(".") + 1] + str(int(accepted_version.rsplit(".", 1)[1]) + 1)
    write_manifest(newer, load_bundle(newer).manifest.model_copy(update={"version": next_version}))
    k.exams.replace(newer, config.models)
    study = upload(client, films(chest_cases["later"])[0].read_bytes(), "a.jpeg")
    assert study["result"]["operating_point"]["source"] == "bundle"
    acceptance = monitor(client)["acceptance"]
    assert acceptance["needed_again"] and "Acceptance needed again" in acceptance["words"]
    assert accepted_version in acceptance["words"] and next_version in acceptance["words"]
    assert f'bedside_acceptance_needed{{exam="{EXAM}"}} 1.0' in client.get("/metrics").get_data(as_text=True)


def test_reviews_say_agree_or_disagree_and_feed_the_monitor(kiosk, tmp_path, capsys, chest_cases):
    config, start = kiosk
    app, client = start()
    ids = [upload(client, p.read_bytes(), p.name)["id"] for p in films(chest_cases["small"])]
    for i, study_id in enumerate(ids):
        r = client.post(f"/api/v1/studies/{study_id}/review", json={"agreement": "disagree" if i % 5 == 0 else "agree"})
        assert r.status_code == 200 and r.json["review"]["agreement"] in ("agree", "disagree")
    bad = client.post(f"/api/v1/studies/{ids[0]}/review", json={"agreement": "maybe", "change": True})
    assert bad.status_code == 400 and "agreement must be one of agree, disagree" in bad.json["error"]["message"]
    gray = upload(client, cv2.imencode(".png", (255 * (cv2.imread(str(films(chest_cases["small"])[0]),
                                                                  cv2.IMREAD_GRAYSCALE) > 300)).astype("uint8"))[1]
                  .tobytes(), "blank.png")
    assert gray["triage"] == "UNGRADABLE"
    refused = client.post(f"/api/v1/studies/{gray['id']}/review", json={"agreement": "agree"})
    assert refused.status_code == 400 and "no triage to agree or disagree with" in refused.json["error"]["message"]
    agreement = monitor(client)["agreement"]
    assert agreement["answered"] == 40 and agreement["agree"] == 32 and agreement["share"] == 0.8
    entry = next(e for e in client.get(f"/api/v1/audit?study={ids[0]}").json["entries"] if e["action"] == "study_reviewed")
    assert entry["detail"]["agreement"] == "disagree"
    appliance_of(app).close()
    app.extensions.pop("bedside")
    code = bedside(["acceptance", "run", "--exam", EXAM, "--reviewed", "--out", str(tmp_path / "reviewed"),
                    "--data-dir", str(config.store.data_dir), "--bootstrap", "50", "--json",
                    "--config", str(_config_file(tmp_path, config))])
    summary = json.loads(capsys.readouterr().out)
    assert code == 2 and summary["cases"] == 40 and "this set has" in summary["refused"]
    document = json.loads((tmp_path / "reviewed" / "acceptance.json").read_text())
    assert document["data"]["source"].startswith("the reviewed studies of chest-xray-pneumonia")
    assert {c["label"] for c in document["cases"]} <= {"pneumonia (by review)", "other (by review)"}


def _config_file(folder, config: KioskConfig):
    path = folder / "bedside.toml"
    path.write_text(f'[models]\nbundles = ["{config.models.bundles[0]}"]\nbackend = "onnxruntime"\n'
                    f'precision = "int8"\n')
    return path
