"""The worklist in Chromium with the shipped model and real X-rays: an URGENT study stays at the top
of the home screen behind 20 newer ROUTINE ones, which appear without a reload, until it is
reviewed; then it leaves the list and the counts follow."""

from __future__ import annotations

import json
import re

import pytest

from browser_support import VIEWPORTS, open_browser
from camera_peer import sample_xrays
from kiosk_support import running_server


def upload_until(client, paths, triage: str, wanted: int) -> list[int]:
    """Upload the images in turn (again from the first when they run out) until `wanted` studies came
    out as `triage`; the ids of those studies. A study the model triaged otherwise is marked reviewed
    at once, so the worklist holds only the studies the test counts on."""
    ids: list[int] = []
    for attempt in range(wanted * 4):
        path = paths[attempt % len(paths)]
        status, study = client.upload(path.name, path.read_bytes(), reference=f"{triage.lower()} cases")  # one reference: no mix-up question
        assert status == 201, study
        if study["triage"] == triage:
            ids.append(study["id"])
        else:
            review = json.dumps({"note": "not this test's case", "operator": "test"}).encode()
            status, _, _ = client.request("POST", f"/api/v1/studies/{study['id']}/review", review,
                                          {"Content-Type": "application/json"})
            assert status == 200
        if len(ids) == wanted:
            return ids
    pytest.skip(f"the shipped model gave {triage} for too few of {[p.name for p in paths]}")


@pytest.mark.parametrize("width,height", VIEWPORTS)
def test_urgent_study_stays_on_top_until_reviewed(tmp_path, sync_playwright, bundle, screens, width, height):
    samples = sample_xrays()
    if not samples:
        pytest.skip("no full-resolution chest X-ray samples (datasets/chest-xray/fullres-samples)")
    size = f"{width}x{height}"
    with running_server(tmp_path / "data", [bundle]) as server, sync_playwright() as pw:
        api = server.client()
        try:
            urgent = upload_until(api, [p for p in samples if p.parent.name == "PNEUMONIA"], "URGENT", 1)[0]
            ctx = open_browser(pw, tmp_path / "profile", width, height)
            page = ctx.new_page()
            page.goto(server.url)
            assert page.locator("[data-study]").count() == 1
            routine = upload_until(api, [p for p in samples if p.parent.name == "NORMAL"], "ROUTINE", 20)

            # The open page picks the new studies up by itself.
            rows = page.locator("[data-study]")
            rows.nth(20).wait_for(timeout=30_000)
            assert rows.first.get_attribute("data-study") == str(urgent)
            assert rows.first.get_attribute("data-triage") == "URGENT"
            assert [int(rows.nth(i).get_attribute("data-study")) for i in range(1, 21)] == routine  # longest waiting first
            assert page.locator(".count-urgent").inner_text() == "1 urgent"
            assert page.locator(".count-routine").inner_text() == "20 routine"
            assert "%" not in page.inner_text(".worklist")
            page.screenshot(path=str(screens / f"worklist-{size}.png"))

            rows.first.click()
            page.wait_for_url(re.compile(rf"/studies/{urgent}$"))
            page.click("button:has-text('Mark reviewed')")
            page.wait_for_url(re.compile(rf"/studies/{urgent}\?reviewed=1"))
            page.goto(server.url)
            assert page.locator(f"[data-study='{urgent}']").count() == 0
            assert page.locator("[data-study]").count() == 20
            assert page.locator(".count-urgent").inner_text() == "0 urgent"
            status, worklist = api.get_json("/api/v1/worklist")
            assert status == 200 and worklist["total"] == 20 and urgent not in [s["id"] for s in worklist["studies"]]
            ctx.close()
        finally:
            api.close()
