"""Issue 21 in Chromium at 1024x600: a study the exam's model refuses reads UNGRADABLE "This does not
look like a chest X-ray" with what to do, no score and no heatmap, the figures behind Details; "Run
as" the other exam makes a new study linked to the first. Screenshots to `screens`."""

from __future__ import annotations

import re

import pytest

from browser_support import axe_violations, open_browser
from kiosk_support import gray_fundus_png, running_server
from models.bundle import default_bundles_dir

SKIN = default_bundles_dir() / "skin-lesion-triage"


def test_a_refused_study_in_plain_words_then_run_as_the_other_exam(tmp_path, tiny_refusing_bundle, sync_playwright,
                                                                    axe, screens):
    if not SKIN.is_dir():
        pytest.skip("the shipped skin bundle is absent")
    fundus = tmp_path / "fundus.png"
    fundus.write_bytes(gray_fundus_png())
    with running_server(tmp_path / "data", [tiny_refusing_bundle, SKIN]) as server, sync_playwright() as pw:
        ctx = open_browser(pw, tmp_path / "profile", 1024, 600, bypass_csp=True)  # axe is injected inline
        try:
            page = ctx.new_page()
            page.goto(server.url + "studies/new?exam=tiny-refusing")
            page.fill("#reference-upload", "Bed 7")
            page.set_input_files("input[type=file] >> nth=0", str(fundus))
            page.click("button:has-text('Triage') >> nth=0")
            page.wait_for_url(re.compile(r"/studies/1\?saved=1"))
            banner = page.locator(".banner")
            assert banner.get_attribute("data-triage") == "UNGRADABLE"
            assert page.inner_text(".banner-line") == "Cannot assess: this does not look like a chest X-ray"
            shown = page.inner_text("main")
            assert "The model only judges chest radiographs (PA/AP). Check the image or choose another exam." in shown
            assert "score" not in shown.lower() and page.locator("[data-heat], [data-heatmap-toggle]").count() == 0
            run_as = page.locator("button:has-text('Run as Skin lesion triage from dermoscopy')")
            for box in (banner.bounding_box(), run_as.bounding_box()):
                assert box["y"] + box["height"] <= 600, box  # on the first screen, no scrolling
            page.screenshot(path=str(screens / "refused-1024x600.png"))
            assert not page.locator("[data-reasons] details ul").is_visible()  # the figures wait behind Details
            page.click("[data-reasons] summary")
            assert "brightness_distance" in page.inner_text("[data-reasons] details ul")
            assert axe_violations(page, axe) == []
            page.screenshot(path=str(screens / "refused-details-1024x600.png"))

            run_as.click()
            page.wait_for_url(re.compile(r"/studies/2\?saved=1"))
            assert "Run again from study #1, as Skin lesion triage from dermoscopy." in page.inner_text("[data-linked]")
            assert page.inner_text("[data-exam]") == "Skin lesion triage from dermoscopy"
            assert page.locator("[data-run-as]").count() == 0  # not back to the exam it was run from
            page.screenshot(path=str(screens / "run-as-1024x600.png"))
            page.goto(server.url + "studies/1")
            assert "Run again as Skin lesion triage from dermoscopy: study #2." in page.inner_text("[data-linked]")
            assert page.locator("[data-run-as]").count() == 0  # run as that exam already
        finally:
            ctx.close()
