"""The clinician's flow in headless Chromium (Debian's /usr/bin/chromium through Playwright):
home -> new study (a real chest X-ray, also dropped onto the drop zone) -> result with the heatmap
-> history, at 1024x600 and 1280x800. Screenshots go to pytest's tmp dir (`screens`) for people to look at.

Also checked: nothing is requested from anywhere but the kiosk, no console or CSP errors, touch
targets are at least 48 px, nothing scrolls sideways, and the heatmap toggle works from the keyboard.
"""

from __future__ import annotations

import base64
import re
import shutil

import pytest

from browser_support import CHROMIUM, CHROMIUM_ARGS, VIEWPORTS
from camera_peer import sample_xrays
from kiosk_support import running_server
from models.bundle import load_bundle

TOUCH_TARGETS = "a.btn, button, .nav, .tile, .row, .chip, .count, input:not([type=checkbox]):not([type=file]), select, .drop"

SMALL_TARGETS_JS = """(selector) => Array.from(document.querySelectorAll(selector))
  .filter((el) => el.offsetParent !== null)
  .map((el) => [el.className || el.tagName, el.getBoundingClientRect().height, el.getBoundingClientRect().width])
  .filter(([, h, w]) => h < 48 || w < 48)"""

DROP_JS = """([b64, name]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name, {type: "image/jpeg"}));
  const zone = document.querySelector("[data-drop]");
  zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: dt, bubbles: true, cancelable: true}));
  zone.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
  return [zone.querySelector("input[type=file]").files.length, zone.querySelector("[data-drop-text]").textContent];
}"""


def test_clinician_flow_in_chromium(tmp_path, sync_playwright, bundle, xray, screens):
    manifest = load_bundle(bundle).manifest
    usb = tmp_path / "media" / "USB-DRIVE"
    usb.mkdir(parents=True)
    for sample in sample_xrays()[:3]:
        shutil.copy(sample, usb / sample.name)
    settings = tmp_path / "bedside.toml"
    settings.write_text(f'[media]\nimport_folders = ["{tmp_path / "media"}"]\n')
    with running_server(tmp_path / "data", [bundle], "--config", str(settings)) as server, sync_playwright() as pw:
        for width, height in VIEWPORTS:
            size = f"{width}x{height}"
            ctx = pw.chromium.launch_persistent_context(
                str(tmp_path / f"profile-{size}"), executable_path=str(CHROMIUM), headless=True,
                args=CHROMIUM_ARGS, viewport={"width": width, "height": height},
            )
            try:
                page = ctx.new_page()
                requested: list[str] = []
                problems: list[str] = []
                page.on("request", lambda r: requested.append(r.url))
                page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: problems.append(str(e)))

                def check_layout(name: str) -> None:
                    page.screenshot(path=str(screens / f"{name}-{size}.png"))
                    assert page.evaluate(SMALL_TARGETS_JS, TOUCH_TARGETS) == [], name
                    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), name

                # Home: a tile for the installed exam.
                page.goto(server.url)
                tile = page.locator(".tile", has_text=manifest.title)
                assert tile.count() == 1
                check_layout("1-home")

                # New study: the drop zone takes a dropped file; the picker takes the X-ray.
                tile.click()
                page.wait_for_url(re.compile(r"/studies/new"))
                dropped = page.evaluate(DROP_JS, [base64.b64encode(xray.read_bytes()).decode(), xray.name])
                assert dropped == [1, xray.name]
                assert page.locator(".file").count() == 3  # the USB drive's images are listed for import
                page.set_input_files("input[type=file]", str(xray))
                page.fill("#reference-upload", "Bed 7")  # one patient: the same film at each size
                assert page.locator(".osk").is_hidden()  # ui.on_screen_keyboard = "auto": not full screen here
                check_layout("2-new-study")

                page.click("button:has-text('Triage')")
                page.wait_for_url(re.compile(r"/studies/\d+\?saved=1"))
                banner = page.locator(".banner-word").inner_text()
                assert banner in ("URGENT", "ROUTINE", "UNGRADABLE")
                assert page.locator(".banner").get_attribute("data-triage") == banner
                assert page.locator(".banner .icon").is_visible()
                assert "Bed 7" in page.inner_text(".banner")
                # Readable at arm's length: the verdict takes at least a quarter of the screen, and
                # it, Mark reviewed and Next case are all on screen without scrolling.
                assert page.locator(".banner").bounding_box()["height"] >= height / 4
                for primary in (".banner", "button:has-text('Mark reviewed')", "[data-next]"):
                    box = page.locator(primary).bounding_box()
                    assert box["y"] >= 0 and box["y"] + box["height"] <= height, (primary, box)
                heat_url = page.locator("[data-heat]").get_attribute("data-src")
                assert heat_url and not any("/heatmap" in u for u in requested)  # not fetched while hidden
                assert f"{manifest.id} v{manifest.version}" in page.inner_text(".facts")
                if manifest.research_only:
                    assert "Research use only, not for diagnosis." in page.inner_text(".disclaimer")
                page.wait_for_function("() => document.querySelector('[data-plain]').naturalWidth > 0")
                check_layout("3-result")

                # Heatmap toggle, from the keyboard.
                toggle = page.locator("[data-heatmap-toggle]")
                toggle.focus()
                page.keyboard.press("Enter")
                page.wait_for_function("() => document.querySelector('[data-heat]').naturalWidth > 0")
                assert page.locator("[data-heat]").is_visible() and not page.locator("[data-plain]").is_visible()
                assert toggle.get_attribute("aria-pressed") == "true"
                assert "Where the model looked - not an outline of disease" in page.inner_text("[data-heat-legend]")
                assert page.locator(".legend-bar").is_visible()
                check_layout("4-result-heatmap")
                page.keyboard.press("Enter")
                assert page.locator("[data-plain]").is_visible()

                # History: the study is there, found by its reference.
                page.click("nav >> text=History")
                page.wait_for_url(re.compile(r"/history"))
                page.fill("input[name=q]", "Bed 7")
                page.click("button:has-text('Filter')")
                rows = page.locator(".row")  # this size's study first, then the earlier sizes' ones
                assert rows.count() == VIEWPORTS.index((width, height)) + 1 and banner in rows.first.inner_text()
                check_layout("5-history")

                assert problems == [], problems
                outside = [u for u in requested if not u.startswith(server.url)]
                assert outside == [], outside
            finally:
                ctx.close()


def test_live_capture_page_in_chromium(tmp_path, sync_playwright, bundle, screens):
    """A camera (a folder of real X-rays played at 5 fps) -> live view with the triage drawn on it ->
    Capture -> the saved study's result page; a second viewer over the cap is told why, not shown a
    broken image."""
    frames = tmp_path / "camera"
    frames.mkdir()
    for sample in sample_xrays()[:4]:
        shutil.copy(sample, frames / sample.name)
    if not any(frames.iterdir()):
        pytest.skip("no full-resolution chest X-ray samples")
    settings = tmp_path / "bedside.toml"
    with running_server(tmp_path / "data", [bundle],
                        "--source", f"file://{frames}?fps=5&loop=1") as server, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1024, "height": 600},
        )
        try:
            page = ctx.new_page()
            page.goto(server.url + "live/cam0")
            page.wait_for_function("() => [...document.querySelectorAll('[data-live-picture]')]"
                                   ".some((i) => !i.hidden && i.naturalWidth > 0)", timeout=20_000)
            page.wait_for_function("() => document.querySelector('[data-live-state]').textContent.startsWith('streaming')")
            assert "Research use only, not for diagnosis." in page.inner_text(".panel")
            assert page.locator("[data-live-unavailable]").is_hidden()
            # The current result, large, beside the video: word, colour, plain line, how clear-cut.
            panel = page.locator("[data-live-result]:not([data-triage=''])")
            panel.wait_for(timeout=20_000)
            live_triage = panel.get_attribute("data-triage")
            assert page.inner_text("[data-live-word]") == live_triage
            assert f"banner-{live_triage.lower()}" in panel.get_attribute("class")
            line = page.inner_text("[data-live-line]")
            assert line.startswith(("Suspected pneumonia", "Not flagged for pneumonia", "Cannot assess: ")), line
            assert panel.bounding_box()["height"] >= 150
            page.screenshot(path=str(screens / "6-live-1024x600.png"))

            page.fill("#reference", "Bed 9 (live)")
            page.click("button:has-text('Capture')")
            page.wait_for_url(re.compile(r"/studies/\d+\?saved=1"))
            assert page.locator(".banner-word").inner_text() in ("URGENT", "ROUTINE", "UNGRADABLE")
            assert "Bed 9 (live)" in page.inner_text(".facts")
            page.screenshot(path=str(screens / "7-live-capture-result-1024x600.png"))
        finally:
            ctx.close()
