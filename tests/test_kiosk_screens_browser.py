"""The kiosk's other screens in Chromium at 1024x600 and 1280x800: each intake error in plain
words with the Triage button still on screen, and an UNGRADABLE result with no score and no heatmap.
Screenshots of each go to pytest's tmp dir (`screens`)."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest

from browser_support import VIEWPORTS, open_browser
from device.kiosk.plain_errors import PLAIN_ERRORS
from kiosk_support import dicom_without_pixels, huge_png_header, jpeg_bytes, running_server

# One file of each intake kind an upload can meet (unreadable is a file an import cannot read; undecodable
# a decoder's own failure deep in a file whose header is fine: both are shown by the same box).
BAD_FILES = [
    ("empty.png", b""), ("cut.jpg", jpeg_bytes(8, 256)[:700]), ("report.dcm", b"Discharge summary.\n" * 20),
    ("huge.png", huge_png_header()), ("nopixels.dcm", dicom_without_pixels()), ("photo.gif", b"GIF89a" + b"\0" * 100),
]
UPLOAD_KINDS = {"empty", "truncated", "not_an_image", "too_large", "no_pixel_data", "unsupported"}


@pytest.mark.parametrize("width,height", VIEWPORTS)
def test_errors_and_ungradable_in_chromium(tmp_path, sync_playwright, bundle, screens, width, height):
    size = f"{width}x{height}"
    white = tmp_path / "white.png"
    cv2.imwrite(str(white), np.full((512, 512), 255, np.uint8))
    with running_server(tmp_path / "data", [bundle]) as server, sync_playwright() as pw:
        ctx = open_browser(pw, tmp_path / "profile", width, height)
        try:
            page = ctx.new_page()
            kinds = set()
            for name, data in BAD_FILES:
                page.goto(server.url + "studies/new")
                page.set_input_files("input[type=file]", files=[{"name": name, "mimeType": "application/octet-stream",
                                                                 "buffer": data}])
                page.click("button:has-text('Triage')")
                box = page.locator("[data-error-kind]")
                box.wait_for()
                kinds.add(box.get_attribute("data-error-kind"))
                plain = PLAIN_ERRORS[box.get_attribute("data-error-kind")]
                assert plain.what in box.inner_text() and plain.todo in box.inner_text()
                assert not page.locator(".error-detail p").is_visible()  # the technical text: one tap away
                page.screenshot(path=str(screens / f"error-{name}-{size}.png"))
                triage = page.locator("button:has-text('Triage')").bounding_box()
                assert triage["y"] + triage["height"] <= height, (name, triage)  # the form stays in reach
            assert kinds == UPLOAD_KINDS

            page.goto(server.url + "studies/new")
            page.fill("#reference-upload", "Bed 5")
            page.set_input_files("input[type=file]", str(white))
            page.click("button:has-text('Triage')")
            page.wait_for_url(re.compile(r"/studies/\d+\?saved=1"))
            assert page.locator(".banner").get_attribute("data-triage") == "UNGRADABLE"
            assert page.locator(".banner-line").inner_text().startswith("Cannot assess: ")
            assert page.locator("[data-heatmap-toggle]").count() == 0 and page.locator("details.numbers").count() == 0
            shown = page.inner_text("main")
            assert "score" not in shown.lower() and "P(" not in shown and "%" not in shown
            word, banner = page.locator("#verdict").bounding_box(), page.locator(".banner").bounding_box()
            assert word["x"] + word["width"] <= banner["x"] + banner["width"], (word, banner)  # the longest word fits
            assert page.evaluate("(e => e.scrollWidth <= e.clientWidth)(document.getElementById('verdict'))")
            page.screenshot(path=str(screens / f"ungradable-{size}.png"))
            page.goto(server.url)
            assert "%" not in page.inner_text(".worklist")
        finally:
            ctx.close()


def test_history_dates_are_typed_and_shown_as_iso(tmp_path, sync_playwright, bundle, screens):
    """The date filters take YYYY-MM-DD whatever the browser's locale (no mm/dd/yyyy field beside
    the lists' ISO dates), and filter by them."""
    from datetime import date, timedelta

    with running_server(tmp_path / "data", [bundle]) as server, sync_playwright() as pw:
        api = server.client()
        try:
            assert api.upload("x.png", cv2.imencode(".png", np.full((64, 64), 128, np.uint8))[1].tobytes())[0] == 201
        finally:
            api.close()
        ctx = open_browser(pw, tmp_path / "profile", 1024, 600, locale="en-US")
        try:
            page = ctx.new_page()
            page.goto(server.url + "history")
            for name in ("from", "to"):
                field = page.locator(f"input.date[name={name}]")
                assert field.get_attribute("type") == "text" and field.get_attribute("placeholder") == "YYYY-MM-DD"
            today = date.today()
            page.fill("input.date[name=from]", today.isoformat())
            page.fill("input.date[name=to]", today.isoformat())
            page.click("button:has-text('Filter')")
            assert page.locator("[data-study]").count() == 1
            assert today.isoformat() in page.inner_text(".rows")  # the row's date, in the same form
            page.screenshot(path=str(screens / "history-dates-1024x600.png"))
            page.fill("input.date[name=from]", (today + timedelta(days=1)).isoformat())
            page.fill("input.date[name=to]", "")
            page.click("button:has-text('Filter')")
            assert page.locator("[data-study]").count() == 0
            page.fill("input.date[name=from]", today.strftime("%m/%d/%Y"))
            assert not page.evaluate("() => document.querySelector('input.date[name=from]').checkValidity()")
        finally:
            ctx.close()
