"""Accessibility in Chromium: axe-core (npm, injected by the test; the kiosk never serves it) finds
no serious or critical violation on any page (worklist, new study, URGENT result with and without
the heatmap, UNGRADABLE result, an intake error, history, settings, live), and the pages work by
touch (taps) and by keyboard alone."""

from __future__ import annotations

import re
import shutil

import cv2
import numpy as np
import pydicom
import pytest

from browser_support import VIEWPORTS, axe_violations, open_browser
from camera_peer import sample_xrays
from kiosk_support import running_server

TARGETS = ".audit a, .btn, button, summary, select, .row, .count, .nav, input:not([type=checkbox]):not([type=file])"
SMALL_JS = """(selector) => Array.from(document.querySelectorAll(selector))
  .filter((el) => el.offsetParent !== null)
  .map((el) => [el.outerHTML.slice(0, 80), el.getBoundingClientRect().height, el.getBoundingClientRect().width])
  .filter(([, h, w]) => h < 44 || w < 44)"""


def test_no_serious_accessibility_violation_on_any_page(tmp_path, sync_playwright, bundle, xray, axe, screens):
    frames = tmp_path / "camera"
    frames.mkdir()
    shutil.copy(xray, frames / xray.name)
    white = tmp_path / "white.png"
    cv2.imwrite(str(white), np.full((512, 512), 255, np.uint8))
    with running_server(tmp_path / "data", [bundle], "--source", f"file://{frames}?fps=2&loop=1") as server, \
            sync_playwright() as pw:
        ctx = open_browser(pw, tmp_path / "profile", 1024, 600, bypass_csp=True)
        try:
            page = ctx.new_page()
            found: dict[str, list] = {}

            def check(name: str) -> None:
                page.screenshot(path=str(screens / f"a11y-{name}.png"))
                found[name] = axe_violations(page, axe) + page.evaluate(SMALL_JS, TARGETS)  # touch targets >= 44 px

            page.goto(server.url + "studies/new")
            check("new-study")
            page.fill("#reference-upload", "Bed 1")
            page.set_input_files("input[type=file]", str(xray))
            page.click("button:has-text('Triage')")
            page.wait_for_url(re.compile(r"/studies/\d+\?saved=1"))
            check("result")
            page.click("[data-heatmap-toggle]")
            page.wait_for_function("() => document.querySelector('[data-heat]').naturalWidth > 0")
            check("result-heatmap")
            page.goto(server.url + "studies/new")
            page.set_input_files("input[type=file]", str(white))
            page.click("button:has-text('Triage')")
            page.wait_for_url(re.compile(r"/studies/\d+\?saved=1"))
            check("result-ungradable")
            page.goto(server.url + "studies/new")
            page.set_input_files("input[type=file]", files=[{"name": "e.png", "mimeType": "image/png", "buffer": b""}])
            page.click("button:has-text('Triage')")
            page.locator("[data-error-kind]").wait_for()
            check("error")
            for name, path in (("worklist", ""), ("history", "history"), ("settings", "settings"), ("live", "live/cam0")):
                page.goto(server.url + path)
                check(name)
            assert {name: v for name, v in found.items() if v} == {}
        finally:
            ctx.close()


def test_touch_and_keyboard_only_flows(tmp_path, sync_playwright, bundle, xray, screens):
    samples = sample_xrays()
    with running_server(tmp_path / "data", [bundle]) as server, sync_playwright() as pw:
        api = server.client()
        try:
            for path in (xray, samples[0]):
                assert api.upload(path.name, path.read_bytes(), reference=f"tap {path.name}")[0] == 201
        finally:
            api.close()
        touch = open_browser(pw, tmp_path / "touch", 1024, 600, has_touch=True, is_mobile=False)
        try:
            page = touch.new_page()
            page.goto(server.url)
            first = page.locator("[data-study]").first
            study = first.get_attribute("data-study")
            first.tap()
            page.wait_for_url(re.compile(rf"/studies/{study}$"))
            page.locator("[data-heatmap-toggle]").tap()
            page.wait_for_function("() => document.querySelector('[data-heat]').naturalWidth > 0")
            page.locator("button:has-text('Mark reviewed')").tap()
            page.wait_for_url(re.compile(rf"/studies/{study}\?reviewed=1"))
            assert "Reviewed by" in page.inner_text("[data-reviewed]")
            page.screenshot(path=str(screens / "touch-reviewed-1024x600.png"))
        finally:
            touch.close()
        keys = open_browser(pw, tmp_path / "keys", 1280, 800)
        try:
            page = keys.new_page()
            page.goto(server.url)
            for _ in range(40):  # Tab through the page until the first worklist row has the focus
                page.keyboard.press("Tab")
                if page.evaluate("() => document.activeElement.matches('[data-study]')"):
                    break
            study = page.evaluate("() => document.activeElement.dataset.study")
            page.keyboard.press("Enter")
            page.wait_for_url(re.compile(rf"/studies/{study}$"))
            for _ in range(40):
                page.keyboard.press("Tab")
                if page.evaluate("() => document.activeElement.textContent.trim() === 'Mark reviewed'"):
                    break
            page.keyboard.press("Enter")
            page.wait_for_url(re.compile(rf"/studies/{study}\?reviewed=1"))
            page.goto(server.url)
            assert page.locator(f"[data-study='{study}']").count() == 0
        finally:
            keys.close()


def test_look_closer_zooms_pans_and_resets(tmp_path, sync_playwright, bundle, xray, screens):
    """Tap the image: full screen at full resolution; wheel and pinch zoom, drag pans, brightness
    mode changes brightness, Reset puts it back, Close returns to the result."""
    with running_server(tmp_path / "data", [bundle]) as server, sync_playwright() as pw:
        api = server.client()
        try:
            status, study = api.upload(xray.name, xray.read_bytes(), reference="closer")
        finally:
            api.close()
        assert status == 201
        ctx = open_browser(pw, tmp_path / "profile", 1024, 600, has_touch=True)
        try:
            page = ctx.new_page()
            page.goto(server.url + f"studies/{study['id']}")
            page.locator("[data-plain]").tap()
            dialog = page.locator("[data-closer]")
            dialog.wait_for()
            page.wait_for_function("() => document.querySelector('[data-closer-img]').naturalWidth > 0")
            full = page.evaluate("() => document.querySelector('[data-closer-img]').naturalWidth")
            assert full == study["image"]["width"]  # full resolution, not the screen preview
            page.click("[data-closer-in]")
            assert float(dialog.get_attribute("data-scale")) == 1.5
            stage = page.locator("[data-closer-stage]").bounding_box()
            cx, cy = stage["x"] + stage["width"] / 2, stage["y"] + stage["height"] / 2
            page.mouse.move(cx, cy)
            page.mouse.wheel(0, -100)
            assert float(dialog.get_attribute("data-scale")) > 1.5
            before = page.evaluate("() => document.querySelector('[data-closer-img]').style.transform")
            page.mouse.down()
            page.mouse.move(cx + 80, cy + 40, steps=4)
            page.mouse.up()
            assert page.evaluate("() => document.querySelector('[data-closer-img]').style.transform") != before
            page.click("[data-closer-mode]")
            assert page.get_attribute("[data-closer-mode]", "aria-pressed") == "true"
            page.mouse.move(cx, cy)
            page.mouse.down()
            page.mouse.move(cx + 150, cy, steps=4)
            page.mouse.up()
            assert float(dialog.get_attribute("data-brightness")) > 1.2
            page.screenshot(path=str(screens / "look-closer-1024x600.png"))
            page.click("[data-closer-reset]")
            assert dialog.get_attribute("data-scale") == "1.00" and dialog.get_attribute("data-brightness") == "1.00"
            page.click("[data-closer-close]")
            assert not dialog.is_visible() and page.locator(".banner").is_visible()
        finally:
            ctx.close()


def test_on_screen_keyboard_types_into_the_focused_field(tmp_path, sync_playwright, bundle, xray, screens):
    settings = tmp_path / "bedside.toml"
    settings.write_text('[ui]\non_screen_keyboard = "always"\n')
    with running_server(tmp_path / "data", [bundle], "--config", str(settings)) as server, sync_playwright() as pw:
        ctx = open_browser(pw, tmp_path / "profile", 1024, 600, has_touch=True)
        try:
            page = ctx.new_page()
            page.goto(server.url + "studies/new")
            board = page.locator(".osk")
            assert board.is_hidden()
            page.locator("#reference-upload").tap()
            board.wait_for()
            for key in ("Shift", "b", "e", "d", "Space", "7", "x", "Backspace"):
                page.locator(f".osk [data-key='{key}']").tap()
            assert page.input_value("#reference-upload") == "Bed 7"
            assert page.evaluate("() => document.activeElement.id") == "reference-upload"  # the field kept the focus
            page.screenshot(path=str(screens / "keyboard-1024x600.png"))
            page.locator(".osk [data-key='Done']").tap()
            assert board.is_hidden()
            # With the keyboard open, the first tap on Triage submits (it used to only close the
            # keyboard, and the page moved under the finger).
            page.set_input_files("input[type=file]", str(xray))
            page.locator("#reference-upload").tap()
            board.wait_for()
            page.locator(".osk [data-key='x']").tap()
            page.locator("button:has-text('Triage')").tap()
            page.wait_for_url(re.compile(r"/studies/\d+\?saved=1"), timeout=15_000)
            assert "Bed 7x" in page.inner_text(".banner") and board.is_hidden()
        finally:
            ctx.close()


WINDOWED_DICOMS = ["RG2_JPLY_fixed.dcm", "RG3_J2KR.dcm"]  # MONOCHROME2 C/W 511/1024; MONOCHROME1 550/1024
PIXELS_AT_JS = """(points) => { const c = document.querySelector('[data-closer-canvas]');
  const g = c.getContext('2d'); return points.map(([x, y]) => g.getImageData(x, y, 1, 1).data[0]); }"""


def test_look_closer_windows_a_dicom_from_its_own_window(tmp_path, sync_playwright, bundle, screens):
    """A grayscale DICOM opens in look-closer windowed from the file's own centre/width, pixel for
    pixel as intake displayed it; dragging in Window / level mode changes width and level, Reset
    puts the file's window back."""
    from device.intake import decode_bytes
    from device.core.renders import to_uint8
    from dcmtk_peer import SAMPLES
    from dicom_peers import need_samples

    need_samples()
    with running_server(tmp_path / "data", [bundle]) as server, sync_playwright() as pw:
        api = server.client()
        studies = {}
        try:
            for name in WINDOWED_DICOMS:
                status, study = api.upload(name, (SAMPLES / "cr_dx" / name).read_bytes(), reference=f"wl {name}")
                assert status == 201
                studies[name] = study
        finally:
            api.close()
        ctx = open_browser(pw, tmp_path / "profile", 1024, 600, has_touch=True)
        try:
            page = ctx.new_page()
            for name, study in studies.items():
                ds = pydicom.dcmread(SAMPLES / "cr_dx" / name, stop_before_pixels=True)
                shown = to_uint8(decode_bytes((SAMPLES / "cr_dx" / name).read_bytes(), name).pixels)
                rows, cols = shown.shape
                points = [(int(x), int(y)) for x, y in np.random.default_rng(0).integers(0, [cols, rows], (40, 2))]
                page.goto(server.url + f"studies/{study['id']}")
                assert page.inner_text("[data-closer-mode]") == "Window / level"
                page.locator("[data-plain]").tap()
                dialog = page.locator("[data-closer]")
                page.wait_for_function("() => Number(document.querySelector('[data-closer]').dataset.drawn) >= 1")
                assert (float(dialog.get_attribute("data-window-center")), float(dialog.get_attribute("data-window-width"))) \
                    == (float(ds.WindowCenter), float(ds.WindowWidth))
                first = page.evaluate(PIXELS_AT_JS, points)
                expected = [int(shown[y, x]) for x, y in points]
                assert max(abs(a - b) for a, b in zip(first, expected)) <= 1, (name, first, expected)
                assert f"level {round(float(ds.WindowCenter))}, width {round(float(ds.WindowWidth))}" in page.inner_text(
                    "[data-closer-readout]")

                page.click("[data-closer-mode]")
                stage = page.locator("[data-closer-stage]").bounding_box()
                cx, cy = stage["x"] + stage["width"] / 2, stage["y"] + stage["height"] / 2
                drawn = int(dialog.get_attribute("data-drawn"))
                page.mouse.move(cx, cy)
                page.mouse.down()
                page.mouse.move(cx - 150, cy + 60, steps=5)  # narrower window, higher level
                page.mouse.up()
                page.wait_for_function(f"() => Number(document.querySelector('[data-closer]').dataset.drawn) > {drawn}")
                width = float(dialog.get_attribute("data-window-width"))
                center = float(dialog.get_attribute("data-window-center"))
                assert width == pytest.approx(float(ds.WindowWidth) / 2, abs=2)
                assert center == pytest.approx(float(ds.WindowCenter) + float(ds.WindowWidth) / 5, abs=2)
                assert page.evaluate(PIXELS_AT_JS, points) != first
                page.screenshot(path=str(screens / f"look-closer-window-{name}-1024x600.png"))
                drawn = int(dialog.get_attribute("data-drawn"))
                page.click("[data-closer-reset]")
                page.wait_for_function(f"() => Number(document.querySelector('[data-closer]').dataset.drawn) > {drawn}")
                assert float(dialog.get_attribute("data-window-width")) == float(ds.WindowWidth)
                assert page.evaluate(PIXELS_AT_JS, points) == first
                page.click("[data-closer-close]")
        finally:
            ctx.close()


def test_dicom_study_pages_show_the_patient_and_send_state(tmp_path, sync_playwright, bundle, axe, screens):
    """Studies received by C-STORE (dcmtk's storescu) on the worklist and their page: the header's
    patient, accession, study date and modality, the results waiting for a PACS that is down and
    why; axe-core clean; screenshots at both sizes."""
    from dcmtk_peer import SAMPLES, storescu, storescu_config
    from dicom_peers import need_dcmtk, need_samples, wait_until
    from loopback import free_port

    need_dcmtk()
    need_samples()
    config = tmp_path / "bedside.toml"
    config.write_text(
        '[dicom]\nallowed_callers = [{ ae_title = "XRAY1", host = "127.0.0.1" }]\nretry_first_s = 0.2\n'
        f'[[dicom.destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {free_port()}\n'
        # the samples are films of a hand and a knee: a route gives every CR to the chest exam
        '[[dicom.routes]]\nexam = "chest-xray-pneumonia"\nmodality = ["CR"]\n')
    port = free_port()
    files = [SAMPLES / "cr_dx" / "RG3_J2KR.dcm", SAMPLES / "cr_dx" / "NM_Kakadu44_SOTmarkerincons.dcm"]
    with running_server(tmp_path / "data", [bundle], "--config", str(config), "--dicom-port", str(port)) as server, \
            sync_playwright() as pw:
        sent = storescu(port, "XRAY1", files, storescu_config(files, tmp_path))
        assert sent.returncode == 0, sent.stderr
        api = server.client()
        try:
            wait_until(lambda: (lambda b: b["items"] and all(i["attempts"] for i in b["items"]))(
                api.get_json("/api/v1/outbox")[1]), 60, "the results waiting for the PACS, tried once")
        finally:
            api.close()
        for width, height in VIEWPORTS:
            ctx = open_browser(pw, tmp_path / f"profile-{width}", width, height, bypass_csp=True)
            try:
                page = ctx.new_page()
                page.goto(server.url)
                rows = page.locator("[data-study]")
                assert rows.count() == 2
                assert "CompressedSamples, RG3" in page.inner_text(".worklist")
                assert "Acc FUJI95706 · CR 2004-08-26" in page.inner_text(".worklist")
                assert set(page.locator("[data-send-state]").evaluate_all("els => els.map(e => e.dataset.sendState)")) \
                    <= {"queued", "sending"}
                page.screenshot(path=str(screens / f"dicom-worklist-{width}x{height}.png"))
                assert axe_violations(page, axe) + page.evaluate(SMALL_JS, TARGETS) == []
                page.locator("[data-study]", has_text="CompressedSamples, RG3").click()
                assert "CompressedSamples, RG3" in page.inner_text(".banner")
                page.wait_for_function("() => document.querySelector('[data-plain]').naturalWidth > 0")
                sent_list = page.inner_text("[data-sent]")
                assert "report to pacs" in sent_list and "cannot connect" in sent_list
                page.screenshot(path=str(screens / f"dicom-result-{width}x{height}.png"), full_page=True)
                assert axe_violations(page, axe) + page.evaluate(SMALL_JS, TARGETS) == []
            finally:
                ctx.close()
