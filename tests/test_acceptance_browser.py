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
                page.fill("#signed-by", "Dr Ada Obi, clinical lead")
                page.click("button:has-text('Apply the site operating point')")
                page.locator(".alert-ok").wait_for()
                assert "on 160 local cases by Dr Ada Obi, clinical lead" in page.inner_text(".alert-ok")
                assert card.locator("[data-operating-point]").get_attribute("data-operating-point") == "site"
                check("applied")

                page.fill("#revert-chest-xray-pneumonia", "Dr Ada Obi")
                page.click("[data-revert=chest-xray-pneumonia]")
                page.locator(".alert-ok").wait_for()
                assert "model's own operating point again" in page.inner_text(".alert-ok")
                assert card.locator("[data-operating-point]").get_attribute("data-operating-point") == "bundle"

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
