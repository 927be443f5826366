"""Patient identity first: the reference field comes before the image, it is required when
ui.require_reference is set (uploads, imports, the API), and a second upload of the same image
says so and links the earlier study."""

from __future__ import annotations

import io

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
    assert "The same image was already saved as" in page and 'href="/studies/1">study #1</a>' in page
    r = client.post("/api/v1/studies", data={"file": (png_bytes_io(5), "x.png")}, content_type="multipart/form-data")
    assert r.status_code == 201 and r.json["duplicate_of"] == 1
    r = client.post("/api/v1/studies", data={"file": (png_bytes_io(6), "y.png")}, content_type="multipart/form-data")
    assert r.json["duplicate_of"] is None
