"""The JSON API v1 through Flask's test client: studies, filters, review, export, import, health,
metrics, and every kind of bad input answered with its 4xx (never a 500)."""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import logging
import os
from datetime import date

import pytest

from device.runtime import registry

from kiosk_support import dicom_without_pixels, huge_png_header, jpeg_bytes, multipart, png_bytes


def upload(client, data: bytes, name: str = "x.png", **fields):
    form = {"file": (io.BytesIO(data), name), **fields}
    return client.post("/api/v1/studies", data=form, content_type="multipart/form-data")


def test_upload_returns_201_with_the_study_and_its_full_result(client):
    data = png_bytes(1)
    r = upload(client, data, "chest.png", reference="MRN-001", operator="nurse a")
    assert r.status_code == 201, r.json
    s = r.json
    assert r.headers["Location"] == f"/api/v1/studies/{s['id']}"
    assert s["reference"] == "MRN-001" and s["operator"] == "nurse a" and s["filename"] == "chest.png"
    assert s["exam"] == "tiny-test" and s["source"] == "upload"
    assert s["triage"] in ("URGENT", "ROUTINE", "UNGRADABLE")
    assert s["image"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert s["image"]["media_type"] == "image/png" and (s["image"]["height"], s["image"]["width"]) == (96, 96)
    result = s["result"]
    assert set(result["probabilities"]) == {"NORMAL", "PNEUMONIA"}
    assert result["probability"] == pytest.approx(result["probabilities"]["PNEUMONIA"])
    assert result["threshold"] == 0.5
    model = result["model"]
    assert model["id"] == "tiny-test" and model["version"] == "0.0.1" and len(model["sha256"]) == 64
    # backend = "auto" (the default) serves on whichever CPU backend timed fastest; the tiny bundle has only fp32
    assert model["backend"] in registry.available("cpu") and model["precision"] == "fp32"
    assert {"decode", "preprocess", "inference", "store_image_wait"} <= set(result["timings_ms"])
    assert s["review"] == {"reviewed": False, "at": None, "by": None, "note": None, "agreement": None}


def test_get_image_preview_heatmap(client):
    data = jpeg_bytes(2)
    sid = upload(client, data, "a.jpg").json["id"]
    got = client.get(f"/api/v1/studies/{sid}")
    assert got.status_code == 200 and got.json["id"] == sid
    image = client.get(f"/api/v1/studies/{sid}/image")
    assert image.status_code == 200 and image.data == data and image.mimetype == "image/jpeg"
    preview = client.get(f"/api/v1/studies/{sid}/preview")
    assert preview.status_code == 200 and preview.mimetype == "image/jpeg" and preview.data.startswith(b"\xff\xd8")
    png = client.get(f"/api/v1/studies/{sid}/heatmap")
    assert png.status_code == 200 and png.mimetype == "image/png" and png.data.startswith(b"\x89PNG")
    assert client.get("/api/v1/studies/999").status_code == 404
    assert client.get("/api/v1/studies/999/heatmap").json["error"]["code"] == "not_found"


def test_list_filters_and_paging(client):
    ids = [upload(client, png_bytes(i), reference=f"ward-{i % 2}-{i}").json["id"] for i in range(5)]
    listed = client.get("/api/v1/studies?limit=2").json
    assert listed["total"] == 5 and [s["id"] for s in listed["studies"]] == ids[::-1][:2]
    page2 = client.get("/api/v1/studies?limit=2&offset=2").json
    assert [s["id"] for s in page2["studies"]] == ids[::-1][2:4]
    assert client.get("/api/v1/studies?q=ward-1").json["total"] == 2
    assert client.get("/api/v1/studies?q=%25").json["total"] == 0  # LIKE wildcards are literal
    by_triage = {}
    for s in client.get("/api/v1/studies").json["studies"]:
        by_triage.setdefault(s["triage"], []).append(s["id"])
    for triage, members in by_triage.items():
        got = client.get(f"/api/v1/studies?triage={triage.lower()}").json
        assert sorted(s["id"] for s in got["studies"]) == sorted(members)
    assert client.get("/api/v1/studies?from=2000-01-01&to=2999-12-31").json["total"] == 5
    assert client.get("/api/v1/studies?to=2000-01-01").json["total"] == 0
    today = date.today().isoformat()  # the date filters are days in the kiosk's local time
    assert client.get(f"/api/v1/studies?from={today}&to={today}").json["total"] == 5


@pytest.mark.parametrize(
    "query, message",
    [
        ("limit=0", "'limit' must be between"),
        ("limit=abc", "'limit' must be an integer"),
        ("offset=-1", "'offset' must be between"),
        ("triage=SEVERE", "unknown triage category"),
        ("from=yesterday", "'from' must be a date"),
    ],
)
def test_bad_list_parameters_are_400(client, query, message):
    r = client.get(f"/api/v1/studies?{query}")
    assert r.status_code == 400 and message in r.json["error"]["message"]


def test_review_and_audit_log(client):
    sid = upload(client, png_bytes(3), operator="tech").json["id"]
    client.put("/api/v1/settings", json={"operator": "dr b"})
    client.get(f"/api/v1/studies/{sid}", headers={"X-Bedside-Operator": "anyone"})  # a free header is no one
    r = client.post(f"/api/v1/studies/{sid}/review", json={"note": "agree", "operator": "dr b"})
    assert r.status_code == 200
    assert r.json["review"]["reviewed"] and r.json["review"]["by"] == "dr b" and r.json["review"]["note"] == "agree"
    entries = client.get(f"/api/v1/audit?study={sid}").json["entries"]
    assert [(e["action"], e["operator"]) for e in entries] == [
        ("study_reviewed", "dr b"), ("study_viewed", "dr b"), ("study_created", "tech")
    ]  # viewing is recorded under the default operator, whatever the header said
    assert client.post("/api/v1/studies/999/review", json={}).status_code == 404
    assert client.post(f"/api/v1/studies/{sid}/review", json={"note": "x" * 3000}).status_code == 400
    again = client.post(f"/api/v1/studies/{sid}/review", json={"note": "no", "operator": "dr c"})
    assert again.status_code == 409 and "already reviewed by dr b" in again.json["error"]["message"]
    assert client.post(f"/api/v1/studies/{sid}/review", json={"change": "maybe"}).status_code == 400
    changed = client.post(f"/api/v1/studies/{sid}/review", json={"note": "no", "operator": "dr c", "change": True})
    assert changed.status_code == 200 and changed.json["review"]["by"] == "dr c"


def test_settings_change_default_operator_and_are_audited(client):
    assert client.put("/api/v1/settings", json={"operator": "night shift"}).json == {"operator": "night shift"}
    s = upload(client, png_bytes(4)).json
    assert s["operator"] == "night shift"
    entry = client.get("/api/v1/audit").json["entries"][-1]
    assert entry["action"] == "settings_changed" and entry["detail"]["new"] == "night shift"
    assert client.put("/api/v1/settings", json={"colour": "red"}).status_code == 400


def test_export_study_and_history(client, drives):
    data = png_bytes(5)
    sid = upload(client, data, reference="R5").json["id"]
    targets = client.get("/api/v1/exports/targets").json["targets"]
    assert str(drives["export"]) in targets
    r = client.post(f"/api/v1/studies/{sid}/export", json={"destination": str(drives["export"])})
    assert r.status_code == 201
    folder = drives["export"] / r.json["path"].rsplit("/", 1)[1]
    assert (folder / "image.png").read_bytes() == data
    assert (folder / "heatmap.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((folder / "result.json").read_text())["id"] == sid
    r = client.post("/api/v1/exports/history", json={"destination": str(drives["export"])})
    assert r.status_code == 201 and r.json["studies"] == 1
    with open(r.json["path"], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["reference"] == "R5" and rows[0]["model_id"] == "tiny-test"
    outside = client.post(f"/api/v1/studies/{sid}/export", json={"destination": "/etc"})
    assert outside.status_code == 400 and "not an export destination" in outside.json["error"]["message"]
    actions = [e["action"] for e in client.get("/api/v1/audit").json["entries"]]
    assert actions[:2] == ["history_exported", "study_exported"]


def test_import_from_a_drive(client, drives):
    (drives["usb"] / "DCIM" / "a.png").write_bytes(png_bytes(6))
    (drives["usb"] / "IM0001").write_bytes(dicom_without_pixels())  # DICOM without an extension is found
    (drives["usb"] / "notes.txt").write_text("not an image")
    (drives["usb"] / ".hidden.png").write_bytes(png_bytes(7))
    files = client.get("/api/v1/imports").json["files"]
    assert sorted((f["name"], f["format"]) for f in files) == [("usb/DCIM/a.png", "PNG"), ("usb/IM0001", "DICOM")]
    paths = [f["path"] for f in files]
    r = client.post("/api/v1/imports", json={"paths": paths, "reference": "from usb"})
    assert r.status_code == 201
    assert [s["filename"] for s in r.json["studies"]] == ["a.png"]
    assert r.json["studies"][0]["source"] == "import"
    assert [(e["status"], e["code"]) for e in r.json["errors"]] == [(422, "no_pixel_data")]
    r = client.post("/api/v1/imports", json={"paths": ["/etc/passwd"]})
    assert r.status_code == 400 and "not inside an import folder" in r.json["errors"][0]["message"]
    assert client.post("/api/v1/imports", json={"paths": "a.png"}).status_code == 400


@pytest.mark.parametrize(
    "name, data, status, code",
    [
        ("empty.png", b"", 422, "empty"),
        ("cut.jpg", jpeg_bytes(8, 256)[:700], 422, None),
        ("report.dcm", b"Discharge summary: patient stable.\n" * 20, 415, "not_an_image"),
        ("huge.png", huge_png_header(), 413, "too_large"),
        ("nopixels.dcm", dicom_without_pixels(), 422, "no_pixel_data"),
        ("photo.gif", b"GIF89a" + b"\0" * 100, 415, "unsupported"),
    ],
)
def test_bad_input_gets_its_4xx_and_the_service_keeps_serving(client, name, data, status, code):
    r = upload(client, data, name)
    assert r.status_code == status, r.json
    error = r.json["error"]
    assert error["status"] == status and error["message"].startswith(name)
    if code:
        assert error["code"] == code
    assert upload(client, png_bytes(9)).status_code == 201
    assert client.get("/api/v1/studies").json["total"] == 1


def test_no_file_unknown_exam_and_too_large_body(client):
    r = client.post("/api/v1/studies", data={"reference": "x"}, content_type="multipart/form-data")
    assert r.status_code == 400 and "field named 'file'" in r.json["error"]["message"]
    r = upload(client, png_bytes(10), exam="knee-mri")
    assert r.status_code == 400
    assert r.json["error"]["code"] == "unknown_exam" and r.json["error"]["available"] == ["tiny-test"]
    assert "tiny-test" in r.json["error"]["message"]
    # The fixture's limit is 4 MiB. (Encoded here: the test client spools big form files to a
    # temporary file that it never closes.)
    body, ctype = multipart({}, ("big.jpg", b"\xff\xd8\xff" + b"\0" * (5 * 2**20)))
    big = client.post("/api/v1/studies", data=body, content_type=ctype)
    assert big.status_code == 413 and big.json["error"]["code"] == "too_large"
    assert client.get("/api/v1/nowhere").status_code == 404
    assert client.get("/api/v1/nowhere").json["error"]["code"] == "not_found"
    assert client.delete("/api/v1/studies").status_code == 405


def test_health_and_metrics(client):
    health = client.get("/api/v1/health").json
    assert health["ready"] is True
    assert health["backends"]["onnxruntime"]["available"] is True
    assert [(m["id"], m["version"]) for m in health["models"]] == [("tiny-test", "0.0.1")]
    assert health["store"]["ok"]
    upload(client, png_bytes(11))
    upload(client, b"", "empty.png")
    text = client.get("/metrics").get_data(as_text=True)
    assert "bedside_ready 1" in text
    total = sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("bedside_studies_total{")
    )
    assert total == 1
    assert 'bedside_errors_total{kind="empty"} 1' in text
    assert "bedside_inference_seconds_count 1" in text and 'bedside_inference_seconds_bucket{le="+Inf"} 1' in text
    served = health["models"][0]["backend_choice"]["served"]
    assert f'bedside_backend_served{{backend="{served["backend"]}",exam="tiny-test",file="model.onnx",precision="fp32"}} 1.0' in text
    measured = health["models"][0]["backend_choice"]["measured"]
    assert len(measured) == len(registry.available("cpu")) and all(m["selftest_ok"] for m in measured)
    assert text.count("bedside_backend_latency_p50_seconds{") == len(measured)


def test_every_response_carries_a_strict_content_security_policy(client):
    for path in ("/", "/api/v1/health", "/static/kiosk.css", "/api/v1/nowhere"):
        with client.get(path) as r:
            csp = r.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "'unsafe-inline'" not in csp


@pytest.mark.parametrize(
    "method, path, body, key",
    [
        ("POST", "/api/v1/studies/{sid}/review", {"note": 5}, "note"),
        ("POST", "/api/v1/studies/{sid}/review", {"operator": ["x"]}, "operator"),
        ("PUT", "/api/v1/settings", {"operator": 5}, "operator"),
        ("POST", "/api/v1/exports/history", {"q": 5}, "q"),
        ("POST", "/api/v1/exports/history", {"from": 5}, "from"),
        ("POST", "/api/v1/exports/history", {"triage": [1]}, "triage"),
        ("POST", "/api/v1/imports", {"paths": ["a.png"], "exam": ["a"]}, "exam"),
        ("POST", "/api/v1/studies/{sid}/export", {"destination": ["x"]}, "destination"),
    ],
)
def test_wrong_json_types_are_400_naming_the_key(client, method, path, body, key):
    sid = upload(client, png_bytes(30)).json["id"]
    r = client.open(path.format(sid=sid), method=method, json=body)
    assert r.status_code == 400, r.json
    assert f"'{key}' must be" in r.json["error"]["message"]


@pytest.mark.parametrize(
    "path, body",
    [
        ("/api/v1/imports", {"paths": ["/media/usb/a\0.png"]}),
        ("/api/v1/studies/{sid}/export", {"destination": "/tmp/x\0y"}),
    ],
)
def test_a_nul_character_in_a_path_is_400(client, path, body):
    sid = upload(client, png_bytes(31)).json["id"]
    r = client.post(path.format(sid=sid), json=body)
    assert r.status_code == 400, r.json
    message = r.json["errors"][0]["message"] if "errors" in r.json else r.json["error"]["message"]
    assert "not a usable path" in message


def test_export_to_a_file_is_a_clear_error_and_the_study_is_kept(client, drives):
    sid = upload(client, png_bytes(32)).json["id"]
    not_a_folder = drives["export"] / "a-file"
    not_a_folder.write_bytes(b"x")
    for path, body in [
        (f"/api/v1/studies/{sid}/export", {"destination": str(not_a_folder)}),
        ("/api/v1/exports/history", {"destination": str(not_a_folder)}),
    ]:
        r = client.post(path, json=body)
        assert r.status_code == 409, r.json
        message = r.json["error"]["message"]
        assert r.json["error"]["code"] == "export_failed" and str(not_a_folder) in message
        assert "File exists" in message or "Not a directory" in message
    assert client.get(f"/api/v1/studies/{sid}").status_code == 200


def test_a_full_drive_is_507_and_leaves_no_partial_export(client, drives, monkeypatch):
    from device.core import exports

    sid = upload(client, png_bytes(33)).json["id"]
    write = exports._write

    def fill_up(path, data):
        if path.name == "result.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        write(path, data)

    monkeypatch.setattr(exports, "_write", fill_up)
    r = client.post(f"/api/v1/studies/{sid}/export", json={"destination": str(drives["export"])})
    assert r.status_code == 507 and "No space left on device" in r.json["error"]["message"]
    assert list(drives["export"].iterdir()) == []


def test_an_unexpected_error_outside_study_creation_claims_nothing_about_studies(client, app, monkeypatch):
    from device.appliance.context import appliance_of

    sid = upload(client, png_bytes(34)).json["id"]
    monkeypatch.setattr(appliance_of(app).studies, "review", lambda *a: (_ for _ in ()).throw(RuntimeError("bug")))
    r = client.post(f"/api/v1/studies/{sid}/review", json={"note": "ok"})
    assert r.status_code == 500 and r.json["error"]["message"] == "internal error, please try again"


def test_import_listing_skips_fifos_and_links(client, drives, tmp_path):
    """A FIFO would block the listing for ever; a link could point anywhere on the machine."""
    (drives["usb"] / "real.png").write_bytes(png_bytes(35))
    os.mkfifo(drives["usb"] / "pipe.png")
    outside = tmp_path / "outside.png"
    outside.write_bytes(png_bytes(36))
    (drives["usb"] / "link.png").symlink_to(outside)
    r = client.get("/api/v1/imports")
    assert r.status_code == 200
    assert [f["name"] for f in r.json["files"]] == ["usb/real.png"]


def test_each_request_is_logged_without_its_query_string(client, caplog):
    caplog.set_level(logging.INFO, logger="bedside.requests")
    client.get("/api/v1/studies?q=Bed+7")
    upload(client, b"", "empty.png")
    lines = [r.getMessage() for r in caplog.records if r.name == "bedside.requests"]
    assert len(lines) == 2 and "Bed" not in " ".join(lines)
    assert lines[0].startswith("GET /api/v1/studies 200 ") and lines[1].startswith("POST /api/v1/studies 422 ")


def test_every_rendering_of_a_study_comes_from_one_decode(app, client, drives, monkeypatch):
    """Preview, heatmap, look-closer and export of the study on screen decode its image once."""
    from device.appliance.context import appliance_of

    decoder = appliance_of(app).studies.decoder
    sid = upload(client, jpeg_bytes(2), "a.jpg").json["id"]
    names = []
    real_decode = decoder.decode

    def counted(data, name, reduce=None):
        names.append(name)
        return real_decode(data, name, reduce)

    monkeypatch.setattr(decoder, "decode", counted)
    for part in ("preview", "heatmap", "full"):
        assert client.get(f"/api/v1/studies/{sid}/{part}").status_code == 200, part
    assert client.post(f"/api/v1/studies/{sid}/export", json={"destination": str(drives["export"])}).status_code == 201
    assert len(names) == 1
    other = upload(client, jpeg_bytes(3), "b.jpg").json["id"]
    assert client.get(f"/api/v1/studies/{other}/preview").status_code == 200
    assert len(names) == 3  # the upload's own decode, then the other study's one rendering decode


@pytest.mark.parametrize("name, invert", [("RG3_J2KR.dcm", True), ("RG2_JPLL.dcm", False)])
def test_window_values_are_the_files_own(client, name, invert):
    """Look-closer's window/level starts from the file's window, over the values after its
    modality LUT, exactly; an image that is not DICOM has none (404)."""
    import numpy as np
    import pydicom
    from pydicom.pixels import apply_modality_lut

    from dcmtk_peer import SAMPLES
    from dicom_peers import need_samples

    need_samples()
    path = SAMPLES / "cr_dx" / name
    body, ctype = multipart({}, (name, path.read_bytes()))  # raw bytes: the test client spools no temp file
    r = client.post("/api/v1/studies", data=body, content_type=ctype)
    assert r.status_code == 201
    meta = client.get(f"/api/v1/studies/{r.get_json()['id']}/window").get_json()
    ds = pydicom.dcmread(path)
    assert (meta["center"], meta["width"], meta["invert"], meta["origin"]) == (
        float(ds.WindowCenter), float(ds.WindowWidth), invert, "the file's window")
    codes = np.frombuffer(client.get(meta["values"]).data, "<u2").reshape(meta["rows"], meta["columns"])
    assert np.array_equal(meta["offset"] + meta["step"] * codes.astype(np.float64), apply_modality_lut(ds.pixel_array, ds))
    png = upload(client, png_bytes(), "x.png").get_json()
    response = client.get(f"/api/v1/studies/{png['id']}/window")
    assert response.status_code == 404 and "window/level is for DICOM" in response.get_json()["error"]["message"]
