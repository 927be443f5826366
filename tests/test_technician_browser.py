"""The technician area in Chromium, as a technician uses it on the device's own screen: set the
password at first start, log in, go through every page (status, capture sources with a test, bundles
with a refused upload, an install and a switch back, each asked first; DICOM, logs, tokens), restart
(asked first; the page sees the kiosk come back, here in safe mode); then safe mode's screens as a
clinician meets them (the worklist, a study, an old link) and the technician's. axe-core finds no
serious or critical violation on any of them, every touch target is at least 44 px, the header is
one line, and nothing runs out of the 1024x600 screen."""

from __future__ import annotations

import shutil

from browser_support import axe_violations, open_browser
from device import updates
from kiosk_support import png_bytes, start_server, stop_server
from update_support import config_toml, kiosk_config, rewrite
from test_kiosk_a11y_browser import SMALL_JS, TARGETS

PASSWORD = "a long technician password"
OVERFLOW_JS = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"


def test_technician_pages_are_accessible(tmp_path, sync_playwright, tiny_bundle, xray, axe, screens, signer,
                                        releases):
    frames = tmp_path / "camera"
    frames.mkdir()
    shutil.copy(xray, frames / xray.name)
    config = kiosk_config(tmp_path, signer)
    updates.install(releases["1.0.0"], config)
    data = config.store.data_dir
    unsigned = rewrite(releases["1.1.0"], tmp_path / "unsigned.bedside",
                       lambda info, data: [] if info.name.endswith("signature.json") else [(info, data)])
    server = start_server(data, [], "--config", str(config_toml(tmp_path, config)),
                          "--source", f"file://{frames}?fps=2&loop=1")
    port = server.url.rsplit(":", 1)[1].strip("/")
    client = server.client()
    try:
        status, study = client.upload("film.png", png_bytes(3), reference="PT-7")  # for safe mode, later
        assert status == 201, study
    finally:
        client.close()
    found: dict[str, list] = {}
    pw = sync_playwright().start()
    try:
        ctx = open_browser(pw, tmp_path / "profile", 1024, 600, bypass_csp=True)
        page = ctx.new_page()

        def check(name: str) -> None:
            page.screenshot(path=str(screens / f"technician-{name}.png"), full_page=True)
            wider = page.evaluate(OVERFLOW_JS)
            header = page.locator("header.bar").bounding_box()["height"]
            found[name] = (axe_violations(page, axe) + page.evaluate(SMALL_JS, TARGETS)
                           + ([f"{wider} px too wide"] if wider > 0 else [])
                           + ([f"the header wraps ({header} px)"] if header > 64 else []))

        try:
            page.goto(server.url + "technician/")
            assert page.url.endswith("/technician/setup")
            check("setup")
            page.fill("#password", PASSWORD)
            page.fill("#repeat", PASSWORD)
            page.click("button:has-text('Set the password')")
            page.wait_for_url("**/technician/login")
            page.fill("#password", "wrong password!")
            page.click("button:has-text('Log in')")
            page.locator(".alert-error").wait_for()
            check("login-failed")
            page.fill("#password", PASSWORD)
            page.click("button:has-text('Log in')")
            page.wait_for_url("**/technician/")
            page.get_by_role("heading", name="Backends").wait_for()
            check("status")
            page.click("a.nav:has-text('Capture')")
            page.locator("figcaption").wait_for()
            check("sources")
            page.fill("#uri", f"file://{frames}")
            page.click("button:has-text('Test')")
            page.locator(".alert-ok").wait_for()
            page.wait_for_function("() => document.querySelector('.tech-preview').naturalWidth > 0")
            check("source-tested")

            # Bundles: a refusal names the file chosen, in words for the device; every switch is asked first.
            page.click("a.nav:has-text('Bundles')")
            page.set_input_files("#archive", files=[{"name": "from-the-vendor.bedside", "mimeType": "application/x-tar",
                                                     "buffer": unsigned.read_bytes()}])
            page.click("button:has-text('Upload and check')")
            refusal = page.locator(".alert-error").inner_text()
            assert "from-the-vendor.bedside: not signed" in refusal and "`" not in refusal, refusal
            check("bundle-refused")
            page.set_input_files("#archive", str(releases["1.1.0"]))
            page.click("button:has-text('Upload and check')")
            page.locator("[data-confirm]").wait_for()
            assert page.locator("[data-confirm] button:has-text('Install 1.1.0 now')").bounding_box()["y"] < 600
            check("bundle-install-asked")
            page.click("button:has-text('Install 1.1.0 now')")
            page.get_by_text("tiny-test 1.1.0 is active in slot b (before: 1.0.0 in slot a)").wait_for()
            check("bundle-installed")
            page.click("button:has-text('Roll back to 1.0.0 (slot a)')")
            page.locator("[data-confirm]").wait_for()
            check("bundle-switch-asked")
            page.click("button:has-text('Switch to 1.0.0 now')")
            page.get_by_text("tiny-test 1.0.0 is active in slot a (before: 1.1.0 in slot b)").wait_for()
            assert page.locator("button:has-text('Go forward to 1.1.0 (slot b)')").count() == 1
            check("bundle-switched")
            for name in ("DICOM", "Logs", "Tokens"):
                page.click(f"a.nav:has-text('{name}')")
                page.get_by_role("heading", level=1).wait_for()
                check(name.lower())
            page.fill("#name", "ward monitor")
            page.click("button:has-text('Make a token')")
            page.locator(".tech-token").wait_for()
            check("token-made")

            # Restart, asked first; the page then watches for the kiosk to come back (here: in safe
            # mode, on the same address, as systemd would start it after the exit status 75).
            page.click("a.nav:has-text('Status')")
            page.click("button:has-text('Restart the kiosk')")
            page.get_by_role("heading", name="Restart the kiosk?").wait_for()
            check("restart-asked")
            page.click("button:has-text('Restart now')")
            page.locator("[data-restart]").wait_for()
            assert server.proc.wait(30) == 75
            stop_server(server)
            bad = tmp_path / "bad.toml"
            bad.write_text("[ui]\nno_such_setting = 1\n")
            server = start_server(data, [tiny_bundle], "--config", str(bad), "--safe-mode", "--port", port,
                                  check_health=False)
            page.wait_for_function("() => document.querySelector('[data-restart]').dataset.back", timeout=30_000)
            assert "back, but in safe mode" in page.inner_text("[data-restart-state]")
            check("restart-back-in-safe-mode")

            # Safe mode as a clinician meets it: the worklist and the studies, in plain words; old links
            # answered by the kiosk's own page. The reason is on the technician's pages only.
            clinician = open_browser(pw, tmp_path / "profile-safe", 1024, 600, bypass_csp=True)
            page = clinician.new_page()
            page.goto(server.url)
            assert "A technician is needed" in page.inner_text("[data-safe-mode]")
            assert page.locator(f"[data-study='{study['id']}']").count() == 1
            assert "no_such_setting" not in page.inner_text("main")
            check("safe-mode")
            page.click(f"[data-study='{study['id']}']")
            page.locator(".banner").wait_for()
            check("safe-mode-study")
            page.goto(server.url + "studies/999")
            assert "Not found (404)" in page.inner_text("h1") and page.locator("[data-safe-mode]").count() == 1
            check("safe-mode-old-link")
            page.click("[data-safe-mode] a:has-text('Technician area')")
            page.wait_for_url("**/technician/login?next=/technician/")
            assert "no_such_setting" in page.inner_text("main")
            check("safe-mode-login")
            clinician.close()
        finally:
            ctx.close()
    finally:
        pw.stop()
        stop_server(server)
    assert {name: v for name, v in found.items() if v} == {}
