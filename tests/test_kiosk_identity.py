"""Patient identity first: the reference field comes before the image, it is required when
ui.require_reference is set (uploads, imports, the API), a second upload of the same image says so
and links the earlier study, and the same image under another patient reference is a possible
mix-up: refused until the person confirms it, then both studies warn and link each other."""

from __future__ import annotations

import io
import re

import pytest

from kiosk_support import kiosk_client, png_bytes
from test_kiosk_pages import post_upload, text


def png_bytes_io(seed: int) -> io.BytesIO:
    return io.BytesIO(png_bytes(seed))


def reference_input(page: str) -> str:
    start = page.index('<input id="reference-upload"')
    return page[start:page.index(">", start)]


def test_reference_comes_before_the_image(client):
    page = text(client.get("/studies/new"))
    assert page.index('id="reference-upload"') < page.index('type="file"')
    assert "required" not in reference_input(page)


@pytest.fixture
def strict_client(config, drives):
    with kiosk_client(config.model_copy(update={"ui": config.ui.model_copy(update={"require_reference": True})})) as c:
        yield c


def test_require_reference_refuses_a_study_without_one(strict_client, drives):
    page = text(strict_client.get("/studies/new"))
    assert "required" in reference_input(page)
    r = post_upload(strict_client, png_bytes(1))
    assert r.status_code == 400 and "Enter the patient reference first" in text(r)
    r = strict_client.post("/api/v1/studies", data={"file": (png_bytes_io(2), "a.png"), "reference": "  "},
                           content_type="multipart/form-data")
    assert r.status_code == 400
    (drives["usb"] / "DCIM" / "one.png").write_bytes(png_bytes(3))
    r = strict_client.post("/api/v1/imports", json={"paths": [str(drives["usb"] / "DCIM" / "one.png")]})
    assert r.status_code == 400 and "patient reference" in r.json["error"]["message"]
    assert strict_client.get("/api/v1/studies").json["total"] == 0
    assert post_upload(strict_client, png_bytes(1), reference="Bed 3").status_code == 303


def test_second_upload_of_the_same_image_links_the_earlier_study(client):
    first = post_upload(client, png_bytes(5), reference="Bed 1")
    assert "already saved" not in text(client.get(first.headers["Location"]))
    again = post_upload(client, png_bytes(5), reference="Bed 1")
    page = text(client.get(again.headers["Location"]))
    assert "The same image is also saved as" in page and 'href="/studies/1">study #1</a>' in page
    r = client.post("/api/v1/studies", data={"file": (png_bytes_io(5), "x.png")}, content_type="multipart/form-data")
    assert r.status_code == 201 and r.json["duplicate_of"] == 1
    r = client.post("/api/v1/studies", data={"file": (png_bytes_io(6), "y.png")}, content_type="multipart/form-data")
    assert r.json["duplicate_of"] is None


def test_the_same_image_for_another_patient_is_kept_only_when_confirmed(client, drives):
    assert post_upload(client, png_bytes(7), "film.png", reference="PT-1001").status_code == 303
    assert post_upload(client, png_bytes(7), "film.png", reference="pt-1001 ").status_code == 303  # the same patient
    r = post_upload(client, png_bytes(7), "film.png", reference="PT-9999")
    page = text(r)
    assert r.status_code == 409 and "Possible patient mix-up" in page and "data-mixup" in page
    assert "PT-1001" in page and "PT-9999" in page and 'href="/studies/1"' in page
    assert client.get("/api/v1/studies").json["total"] == 2  # nothing kept before the person chose
    sha = re.search(r'name="image" value="([0-9a-f]{64})"', page).group(1)
    kept = client.post("/studies/keep", data={"image": sha, "filename": "film.png", "reference": "PT-9999",
                                              "operator": "nurse d", "source": "upload"})
    assert kept.status_code == 303 and kept.headers["Location"].startswith("/studies/3")
    third = text(client.get(kept.headers["Location"]))
    assert "data-mixup" in third and 'href="/studies/1">Study #1</a> for <strong>PT-1001</strong>' in third
    assert 'href="/studies/3">Study #3</a> for <strong>PT-9999</strong>' in text(client.get("/studies/1"))
    created = client.get("/api/v1/audit?study=3").json["entries"][-1]
    assert created["action"] == "study_created" and created["operator"] == "nurse d"
    assert created["detail"]["same_image_as"] == 1 and created["detail"]["other_patient_confirmed"] == "PT-1001"

    # The API refuses one with its reasons, and keeps it when told to.
    r = client.post("/api/v1/studies", data={"file": (png_bytes_io(7), "f.png"), "reference": "PT-5"},
                    content_type="multipart/form-data")
    assert r.status_code == 409 and r.json["error"]["code"] == "same_image_other_patient"
    assert r.json["error"]["earlier_study"] == 1 and r.json["error"]["earlier_reference"] == "PT-1001"
    r = client.post("/api/v1/studies", data={"file": (png_bytes_io(7), "f.png"), "reference": "PT-5",
                                             "other_patient": "1"}, content_type="multipart/form-data")
    assert r.status_code == 201 and r.json["duplicate_of"] == 1

    # An import meets it too: the file is listed with the same choice, the others are imported.
    (drives["usb"] / "DCIM" / "film.png").write_bytes(png_bytes(7))
    (drives["usb"] / "DCIM" / "new.png").write_bytes(png_bytes(8))
    r = client.post("/studies/import", data={"path": [str(drives["usb"] / "DCIM" / n) for n in ("film.png", "new.png")],
                                             "reference": "PT-77"})
    page = text(r)
    assert r.status_code == 200 and page.count("data-mixup") == 1 and 'name="source" value="import"' in page
    assert client.get("/api/v1/studies").json["total"] == 5
