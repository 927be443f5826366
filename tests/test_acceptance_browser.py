"""Site acceptance in Chromium at the device's 1024x600: the report a governance group reads (opened
from disk with the network cut: it fetches nothing, shows its two plots, prints to A4) and the
technician's acceptance page on a running kiosk (login, CSRF, upload, confirm under a name, refuse
an edited file, revert; every step in the technician audit log), with no serious axe-core finding
and nothing wider than the screen."""

from __future__ import annotations

import json

from browser_support import open_browser, screen_problems
from kiosk_support import start_server, stop_server
from technician_support import PASSWORD, WebSession, provisioned_config


def test_the_report_reads_offline_and_prints(tmp_path, sync_playwright, accepted, axe, screens):
    report = accepted["out"] / "report.html"
    threshold = json.loads((accepted["out"] / "acceptance.json").read_text())["proposal"]["threshold"]
    fetched = []
    with sync_playwright() as pw:
        ctx = open_browser(pw, tmp_path / "profile", 1024, 600, bypass_csp=True)
        try:
            page = ctx.new_page()
            page.route("**/*", lambda route: (fetched.append(route.request.url), route.abort())
                       if not route.request.url.startswith("file://") else route.continue_())
            page.on("request", lambda request: fetched.append(request.url)
                    if request.url != report.as_uri() else None)
            page.goto(report.as_uri())
            page.screenshot(path=str(screens / "acceptance-report.png"))
            page.screenshot(path=str(screens / "acceptance-report-full.png"), full_page=True)
            assert fetched == []  # self-contained: nothing else is asked for, with or without a network
            plots = page.locator("svg[role=img]")
            assert plots.count() == 2 and all(plots.nth(i).bounding_box()["width"] > 200 for i in range(2))
            assert f"{threshold:.4f}" in page.inner_text("body")
            assert screen_problems(page, axe) == []
            pdf = page.pdf(format="A4")
            assert pdf.startswith(b"%PDF") and pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page>") + \
                pdf.count(b"/Type/Page") >= 1
        finally:
            ctx.close()


def test_the_technician_applies_and_reverts_an_acceptance(tmp_path, sync_playwright, accepted, monitored_chest,
                                                         axe, screens):
    document = accepted["out"] / "acceptance.json"
    edited = tmp_path / "edited.json"
    data = json.loads(document.read_text())
    judged = data["figures"]["counts"]["judged"]  # the cases the model's check did not refuse
    data["proposal"]["threshold"] = round(data["proposal"]["threshold"] + 0.05, 6)
    edited.write_text(json.dumps(data))
    config = provisioned_config(tmp_path)
    server = start_server(tmp_path / "data", [monitored_chest], "--config", str(config))
    problems: dict[str, list] = {}
    try:
        with sync_playwright() as pw:
            ctx = open_browser(pw, tmp_path / "profile", 1024, 600, bypass_csp=True)
            try:
                page = ctx.new_page()

                def check(name: str) -> None:
                    page.screenshot(path=str(screens / f"technician-acceptance-{name}.png"), full_page=True)
                    problems[name] = screen_problems(page, axe)

                def upload(path) -> None:
                    page.set_input_files("#document", str(path))
                    page.click("button:has-text('Upload and check')")

                def sign(field: str, name: str, button: str) -> tuple[str, str]:
                    """Sign a form with a name and send it; the confirmation it answers with, and the
                    point the exam now decides at."""
                    page.fill(field, name)
                    page.click(button)
                    page.locator(".alert-ok").wait_for()
                    return page.inner_text(".alert-ok"), card.locator("[data-operating-point]").get_attribute(
                        "data-operating-point")

                page.goto(server.url + "technician/")
                page.wait_for_url("**/technician/login**")
                page.fill("#password", PASSWORD)
                page.click("button:has-text('Log in')")
                page.wait_for_url("**/technician/")
                page.click("a:has-text('Acceptance and monitoring')")  # from the Status page's Model monitoring
                page.wait_for_url("**/technician/acceptance")
                card = page.locator("[data-exam=chest-xray-pneumonia]")
                assert card.locator("[data-operating-point]").get_attribute("data-operating-point") == "bundle"
                check("before")

                upload(edited)
                page.locator(".alert-error").wait_for()
                assert "does not follow from its own cases" in page.inner_text(".alert-error")
                check("refused")

                upload(document)
                page.get_by_role("heading", name="Apply this acceptance?").wait_for()
                check("confirm")
                said, point = sign("#signed-by", "Dr Ada Obi, clinical lead",
                                   "button:has-text('Apply the site operating point')")
                assert f"on {judged} local cases by Dr Ada Obi, clinical lead" in said and point == "site"
                check("applied")
                said, point = sign("#revert-chest-xray-pneumonia", "Dr Ada Obi", "[data-revert=chest-xray-pneumonia]")
                assert "model's own operating point again" in said and point == "bundle"

                page.click("a.nav:has-text('Logs')")
                page.get_by_role("heading", level=1).wait_for()
                logs = page.inner_text("body")
                for event in ("acceptance_refused", "acceptance_applied", "acceptance_reverted"):
                    assert event in logs, event
                page.click("a.nav:has-text('Status')")
                assert page.locator("[data-drift-state]").first.get_attribute("data-drift-state") == "collecting"
            finally:
                ctx.close()
        # logged in, the same post without the page's CSRF token is refused, and changes nothing
        session = WebSession(server.url)
        try:
            session.log_in()
            status, _, _ = session.request("POST", "/technician/acceptance/chest-xray-pneumonia/revert",
                                           b"signed_by=x", {"Content-Type": "application/x-www-form-urlencoded"})
            assert status == 403
        finally:
            session.close()
    finally:
        stop_server(server)
    assert not any(problems.values()), problems


def test_the_clinician_sees_the_site_point_says_agree_and_is_told_of_drift(tmp_path, sync_playwright, accepted,
                                                                          monitored_chest, chest_cases, axe, screens):
    """A kiosk whose site accepted the model: a result says which operating point decided it, one tap
    marks it reviewed and agreed, and after a run of inverted films the home screen says a model
    check is needed, while every one of those studies got its result at once."""
    import cv2

    from device.cli import main as bedside

    data = tmp_path / "data"
    assert bedside(["acceptance", "apply", str(accepted["out"] / "acceptance.json"), "--signed-by", "Dr Ada Obi",
                    "--bundle", str(monitored_chest), "--data-dir", str(data)]) == 0
    config = tmp_path / "bedside.toml"
    config.write_text("[monitoring]\nwindow = 40\nmin_studies = 20\nconfirm = 3\n")
    films = sorted(chest_cases["later"].rglob("*.jpeg"))
    server = start_server(data, [monitored_chest], "--config", str(config))
    problems: dict[str, list] = {}
    try:
        client = server.client()
        try:
            status, first = client.upload(films[0].name, films[0].read_bytes())
            assert status == 201 and first["result"]["operating_point"]["source"] == "site"
            for path in films[1:25]:
                flipped = cv2.imencode(".png", 255 - cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))[1].tobytes()
                status, study = client.upload(path.stem + ".png", flipped)
                assert status == 201 and study["triage"] in ("URGENT", "ROUTINE", "UNGRADABLE")
            status, monitoring = client.get_json("/api/v1/monitoring")
            assert monitoring["exams"]["chest-xray-pneumonia"]["state"] == "drift", monitoring
        finally:
            client.close()
        with sync_playwright() as pw:
            ctx = open_browser(pw, tmp_path / "profile", 1024, 600, bypass_csp=True)
            try:
                page = ctx.new_page()
                page.goto(server.url)
                notice = page.locator("[data-model-check]")
                assert notice.inner_text() == ("Model check needed: recent images differ from those the model was "
                                               "accepted on")
                page.screenshot(path=str(screens / "acceptance-home-drift.png"))
                problems["home"] = screen_problems(page, axe)
                page.goto(server.url + f"studies/{first['id']}")
                details = page.locator("[data-operating-point-source]")
                assert details.get_attribute("data-operating-point-source") == "site"
                assert "accepted " in details.inner_text() and "by Dr Ada Obi" in details.inner_text()
                page.screenshot(path=str(screens / "acceptance-result-site-point.png"), full_page=True)
                problems["result"] = screen_problems(page, axe)
                page.click("[data-agreement] button:has-text('Triage right')")
                page.locator("[data-reviewed]").wait_for()
                assert "agreed with the triage" in page.inner_text("[data-reviewed]")
                page.screenshot(path=str(screens / "acceptance-result-agreed.png"))
            finally:
                ctx.close()
        client = server.client()
        try:
            _, monitoring = client.get_json("/api/v1/monitoring")
        finally:
            client.close()
        assert monitoring["exams"]["chest-xray-pneumonia"]["agreement"]["agree"] == 1
    finally:
        stop_server(server)
    assert not any(problems.values()), problems
