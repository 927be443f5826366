"""The skin exam's result screen in Chromium at 1024x600 and 1280x800, beside the chest exam: the
exam chosen on the new-study screen, the banner and primary actions without scrolling, the three
likeliest diagnoses, the non-commercial research note, axe-core clean. Screenshots to `screens`."""

from __future__ import annotations

import re

import pytest

from browser_support import VIEWPORTS, axe_violations, open_browser
from kiosk_support import running_server
from models.bundle import default_bundles_dir
from models.datasets import datasets_dir

SKIN = default_bundles_dir() / "skin-lesion-triage"
CHEST = default_bundles_dir() / "chest-xray-pneumonia"


@pytest.mark.parametrize("width,height", VIEWPORTS)
def test_skin_result_screen(tmp_path, sync_playwright, axe, screens, width, height):
    lesion = sorted((datasets_dir() / "dermatology" / "train" / "mel").glob("*.jpg"))[0]
    size = f"{width}x{height}"
    with running_server(tmp_path / "data", [CHEST, SKIN]) as server, sync_playwright() as pw:
        ctx = open_browser(pw, tmp_path / "profile", width, height, bypass_csp=True)  # axe is injected inline
        try:
            page = ctx.new_page()
            page.goto(server.url + "studies/new")
            page.select_option("select[name=exam] >> nth=0", "skin-lesion-triage")
            page.fill("#reference-upload", "Clinic 3")
            page.set_input_files("input[type=file] >> nth=0", str(lesion))
            page.click("button:has-text('Triage') >> nth=0")
            page.wait_for_url(re.compile(r"/studies/\d+\?saved=1"))
            assert page.locator(".banner").get_attribute("data-triage") in ("URGENT", "ROUTINE")
            for selector in (".banner", ".actions .btn >> nth=0", "[data-next]"):
                box = page.locator(selector).bounding_box()
                assert box["y"] + box["height"] <= height, (selector, box)  # one screen, no scrolling
            items = page.locator("[data-likeliest] li")
            assert items.count() == 3
            shown = page.inner_text("main")
            assert "Non-commercial use only" in shown and "Research use only" in shown
            assert axe_violations(page, axe) == []
            page.screenshot(path=str(screens / f"skin-result-{size}.png"))
        finally:
            ctx.close()
