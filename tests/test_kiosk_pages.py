"""The clinician's pages through Flask's test client: tiles from the bundles, upload and import
forms, the result page, review, export, history filters, settings; no asset from elsewhere."""

from __future__ import annotations

import io
import json
import re

import cv2
import numpy as np
import pytest

from device.appliance.context import appliance_of
from device.core.settings import KioskConfig
from device.kiosk import create_app
from kiosk_support import form_client, png_bytes
from tiny_bundle import edit_manifest, make_tiny_bundle


def post_upload(client, data: bytes, name: str = "x.png", **fields):
    form = {"file": (io.BytesIO(data), name), **fields}
    return client.post("/studies", data=form, content_type="multipart/form-data")


def text(response) -> str:
    return response.get_data(as_text=True)


def test_home_has_one_tile_per_installed_bundle(tmp_path, tiny_bundle, drives):
    other = make_tiny_bundle(tmp_path / "other")
    edit_manifest(other, id="knee-xray", title="Knee X-ray fracture triage", research_only=False, disclaimer=None)
    config = KioskConfig.model_validate(
        {"store": {"data_dir": str(tmp_path / "data")}, "models": {"bundles_dir": str(tmp_path / "nowhere"),
         "bundles": [str(tiny_bundle), str(other)]}}
    )
    application = create_app(config)
    try:
        with form_client(application) as c:
            home = text(c.get("/"))
            assert re.findall(r'class="tile-title">([^<]+)<', home) == ["Tiny test model", "Knee X-ray fracture triage"]
            assert home.count("Research use only") == 1
            new = text(c.get("/studies/new?exam=knee-xray"))
            assert '<input type="radio" name="exam" value="knee-xray" checked required>' in new
            r = post_upload(c, png_bytes(1), exam="tiny-test")
            assert r.status_code == 303
            r = post_upload(c, png_bytes(1))  # no exam: both take a gray image, so the kiosk asks
            assert r.status_code == 422
            assert "could be read by more than one exam (Tiny test model, Knee X-ray fracture triage)" in text(r)
    finally:
        appliance_of(application).close()


def test_upload_form_redirects_to_the_result(client):
    r = post_upload(client, png_bytes(2), "bed4.png", reference="Bed 4", operator="nurse c")
    assert r.status_code == 303 and re.match(r"/studies/\d+\?saved=1", r.headers["Location"])
    page = text(client.get(r.headers["Location"]))
    triage = re.search(r'class="banner banner-\w+" role="status" data-triage="(\w+)"', page).group(1)
    assert triage in ("URGENT", "ROUTINE", "UNGRADABLE")
    assert f"banner-{triage.lower()}" in page and '<svg class="icon"' in page  # word + icon + colour
    plain = {"URGENT": "Suspected pneumonia - review first", "ROUTINE": "Not flagged for pneumonia"}[triage]
    banner = page[page.index('class="banner '):page.index('class="actions"')]
    assert plain in banner and "Bed 4" in banner and "P(" not in page
    # ROUTINE is no all-clear: said in words on the banner, and drawn without a tick.
    assert ("does not rule out disease" in banner) == (triage == "ROUTINE") and "pattern found" not in page
    assert re.search(r"<details class=\"numbers\">.*Model score for pneumonia: <strong>0\.\d\d</strong>", page, re.S)
    assert "Saved as study #1" in page
    assert "Research use only, not for diagnosis." in page and "Not for clinical use." in page
    assert "tiny-test v0.0.1" in page and "Unit tests only." in page
    assert "/api/v1/studies/1/preview" in page and "/api/v1/studies/1/heatmap" in page
    assert "Show heatmap" in page and "Bed 4" in page
    with_heat = text(client.get("/studies/1?heatmap=1"))  # the toggle works without script
    assert "Hide heatmap" in with_heat


TICK = "m-2 15-5-5 1.4-1.4 3.6 3.6"  # the path of a tick mark, as ROUTINE was once drawn


def test_routine_is_said_to_rule_nothing_out(tmp_path):
    """A ROUTINE result is no all-clear: 'Not flagged', with what that does not mean, and no tick,
    on its page and in the lists. (The tiny model scores these images about 0.98: an operating
    point of 0.999 makes them ROUTINE.)"""
    cautious = make_tiny_bundle(tmp_path / "cautious")
    policy = json.loads((cautious / "manifest.json").read_text())["policy"]
    edit_manifest(cautious, policy={**policy, "operating_point": {**policy["operating_point"], "threshold": 0.999}})
    config = KioskConfig.model_validate({"store": {"data_dir": str(tmp_path / "data")},
                                         "models": {"bundles": [str(cautious)], "inference_threads": 1}})
    application = create_app(config)
    try:
        with form_client(application) as c:
            r = post_upload(c, png_bytes(1))
            page = text(c.get(r.headers["Location"]))
            banner = page[page.index('class="banner '):page.index('class="actions"')]
            assert 'data-triage="ROUTINE"' in banner and "Not flagged for pneumonia" in banner
            assert "that does not rule out disease" in banner and "pattern found" not in page
            assert TICK not in page and TICK not in text(c.get("/history"))
    finally:
        appliance_of(application).close()


def test_bad_upload_stays_on_the_form_with_the_reason(client):
    r = post_upload(client, b"hello", "note.dcm")
    assert r.status_code == 415 and "note.dcm: not an image" in text(r) and 'name="file"' in text(r)
    r = client.post("/studies", data={}, content_type="multipart/form-data")
    assert r.status_code == 400 and "Choose an image file first." in text(r)


def test_quality_warning_says_what_to_do(client):
    blank = cv2.imencode(".png", np.zeros((64, 64), np.uint8))[1].tobytes()
    r = post_upload(client, blank, "blank.png")
    page = text(client.get(r.headers["Location"]))
    assert "UNGRADABLE" in page and "What to do" in page
    assert "Cannot assess: the image is blank or almost uniform" in page and "Check the capture" in page
    assert "contrast range 0.00" in page.split("<summary")[-1]  # the figures only behind Details


def test_review_and_export_from_the_result_page(client, drives):
    post_upload(client, png_bytes(4))
    r = client.post("/studies/1/review", data={"note": "seen", "operator": "dr d"})
    assert r.status_code == 303
    page = text(client.get(r.headers["Location"]))
    assert "Marked as reviewed: it has left the worklist." in page and "Reviewed by dr d" in page and "seen" in page
    assert "Mark reviewed</button>" not in page and "Change review" in page
    again = client.post("/studies/1/review", data={"note": "again", "operator": "dr e"})
    assert again.status_code == 409 and "already reviewed by dr d" in text(again)
    r = client.post("/studies/1/review", data={"note": "changed", "operator": "dr e", "change": "1"})
    assert r.status_code == 303 and "Reviewed by dr e" in text(client.get("/studies/1"))
    changed = next(e for e in client.get("/api/v1/audit?study=1").json["entries"] if e["action"] == "study_reviewed")
    assert changed["operator"] == "dr e" and changed["detail"]["replaces"]["by"] == "dr d"
    assert changed["detail"]["replaces"]["note"] == "seen"
    r = client.post("/studies/1/export", data={"destination": str(drives["export"]), "operator": "porter f"})
    assert r.status_code == 303
    exported = next(e for e in client.get("/api/v1/audit?study=1").json["entries"] if e["action"] == "study_exported")
    assert exported["operator"] == "porter f"
    page = text(client.get(r.headers["Location"]))
    assert re.search(r"Exported to export, folder bedside-study-1-\d+-\d+", page)  # the target by its name
    assert f'<option value="{drives["export"]}">export</option>' in page
    assert "This kiosk (internal storage)</option>" in page and str(drives["export"]) + "<" not in page
    assert len(list(drives["export"].glob("bedside-study-1-*/result.json"))) == 1


def test_history_filters_and_csv_export(client, drives):
    for i, ref in enumerate(["ward A", "ward B", "clinic"]):
        post_upload(client, png_bytes(10 + i), reference=ref)
    page = text(client.get("/history?q=ward"))
    assert "2 studies" in page and "ward A" in page and "clinic" not in page
    studies = client.get("/api/v1/studies").json["studies"]
    triage = studies[0]["triage"]
    n = sum(s["triage"] == triage for s in studies)
    page = text(client.get(f"/history?triage={triage}"))
    assert f"{n} stud" in page
    assert "0 studies" in text(client.get("/history?to=2000-01-01"))
    assert client.get("/history?from=soon").status_code == 400
    assert client.get(f"/history?page={10**30}").status_code == 200  # beyond the end: an empty page
    r = client.post("/history/export", data={"q": "ward", "destination": str(drives["export"])})
    assert re.search(r"Exported 2 studies to export, file bedside-history-[\d-]+\.csv", text(r))


def test_import_form(client, drives):
    (drives["usb"] / "DCIM" / "one.png").write_bytes(png_bytes(20))
    (drives["usb"] / "DCIM" / "two.png").write_bytes(png_bytes(21))
    page = text(client.get("/studies/new"))
    assert "usb/DCIM/one.png" in page and "usb/DCIM/two.png" in page
    paths = [str(drives["usb"] / "DCIM" / n) for n in ("one.png", "two.png")]
    r = client.post("/studies/import", data={"path": paths, "reference": "usb"})
    assert r.status_code == 200 and text(r).count('class="row"') == 2
    r = client.post("/studies/import", data={"path": paths[:1]})
    assert r.status_code == 303  # one file: straight to its result


def test_settings_page_changes_the_default_operator(client):
    r = client.post("/settings", data={"operator": "day shift"})
    assert "Saved." in text(r) and 'value="day shift"' in text(r)
    assert "settings changed" in text(r)


@pytest.mark.parametrize("path", ["/", "/studies/new", "/history", "/settings", "/studies/1"])
def test_pages_reference_only_local_assets(client, path):
    post_upload(client, png_bytes(30))
    page = text(client.get(path))
    urls = re.findall(r'(?:src|href|action)="([^"]+)"', page)
    assert urls and all(u.startswith("/") or u.startswith("#") for u in urls), urls
    assert "style=" not in page and "<script>" not in page  # nothing inline: the CSP forbids it


def test_static_files_are_cached_under_urls_that_change_with_their_content(client, tmp_path):
    from device.kiosk.static_files import content_version

    page = text(client.get("/"))
    css = re.search(r'href="(/static/kiosk\.css\?v=(\w+))"', page)
    assert css, "the stylesheet's URL carries its content version"
    r = client.get(css.group(1))
    assert r.status_code == 200 and "max-age=31536000" in r.headers["Cache-Control"]
    r.close()
    (tmp_path / "a.js").write_text("one")
    before = content_version(tmp_path)
    (tmp_path / "a.js").write_text("two")
    assert content_version(tmp_path) != before
