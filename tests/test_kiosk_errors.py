"""Errors in plain words: every intake kind has a message saying what happened and what to do, the
upload page shows it with the technical detail behind Details, and the form (its Triage button)
stays usable below it."""

from __future__ import annotations

import html
import re

import pytest

from device.intake.errors import KINDS
from device.kiosk.plain_errors import PLAIN_ERRORS
from kiosk_support import dicom_without_pixels, huge_png_header, jpeg_bytes, multipart
from test_kiosk_pages import post_upload, text


def test_every_intake_kind_has_plain_words():
    assert set(PLAIN_ERRORS) == KINDS
    for kind, plain in PLAIN_ERRORS.items():
        assert plain.what.endswith(".") and plain.todo.endswith("."), kind
        assert not re.search(r"libjpeg|int\(\)|exception|errno|traceback", plain.what + plain.todo, re.I), kind


@pytest.mark.parametrize(
    "name, data",
    [
        ("empty.png", b""),
        ("cut.jpg", jpeg_bytes(8, 256)[:700]),
        ("report.dcm", b"Discharge summary: patient stable.\n" * 20),
        ("huge.png", huge_png_header()),
        ("nopixels.dcm", dicom_without_pixels()),
        ("photo.gif", b"GIF89a" + b"\0" * 100),
    ],
)
def test_upload_page_says_what_happened_and_what_to_do(client, name, data):
    page = post_upload(client, data, name)
    assert page.status_code >= 400
    body = text(page)
    kind = re.search(r'data-error-kind="(\w+)"', body).group(1)
    plain = PLAIN_ERRORS[kind]
    assert html.escape(plain.what) in body and html.escape(plain.todo) in body
    detail = re.search(r'<details class="error-detail"><summary>Details</summary><p>(.*?)</p>', body, re.S).group(1)
    assert detail.startswith(name)  # the technical message, named by the file, one tap away
    assert body.index("data-error-kind") < body.index('type="file"') < body.index(">Triage</button>")


def test_a_too_large_upload_page_is_plain_too(client):
    body, ctype = multipart({}, ("big.jpg", b"\xff\xd8\xff" + b"\0" * (5 * 2**20)))
    r = client.post("/studies", data=body, content_type=ctype)
    assert r.status_code == 413
    page = text(r)
    assert PLAIN_ERRORS["too_large"].what in page and "limit of 4 MiB" in page and 'href="/studies/new"' in page
