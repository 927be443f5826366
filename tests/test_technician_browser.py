"""The technician area in Chromium, as a technician uses it on the device's own screen: set the
password at first start, log in, go through every page (status, capture sources with a test, bundles, DICOM,
logs, tokens), log out; then safe mode's screen. axe-core finds no serious or critical violation
on any of them, every touch target is at least 44 px, and nothing runs out of the 1024x600 screen."""

from __future__ import annotations

import shutil

from browser_support import open_browser, screen_problems
from device import updates
from kiosk_support import start_server, stop_server
from update_support import config_toml, kiosk_config
from test_kiosk_a11y_browser import SMALL_JS, TARGETS

PASSWORD = "a long technician password"


def test_technician_pages_are_accessible(tmp_path, sync_playwright, tiny_bundle, xray, axe, screens, signer,
                                        releases):
    frames = tmp_path / "camera"
    frames.mkdir()
    shutil.copy(xray, frames / xray.name)
    config = kiosk_config(tmp_path, signer)
    updates.install(releases["1.0.0"], config)
    data = config.store.data_dir
    server = start_server(data, [], "--config", str(config_toml(tmp_path, config)),
                          "--source", f"file://{frames}?fps=2&loop=1")
    found: dict[str, list] = {}
    try:
        with sync_playwright() as pw:
            ctx = open_browser(pw, tmp_path / "profile", 1024, 600, bypass_csp=True)
            try:
                page = ctx.new_page()

                def check(name: str) -> None:
                    page.screenshot(path=str(screens / f"technician-{name}.png"), full_page=True)
                    found[name] = screen_problems(page, axe) + page.evaluate(SMALL_JS, TARGETS)

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
                page.click("a.nav:has-text('Bundles')")
                page.set_input_files("#archive", str(releases["1.1.0"]))
                page.click("button:has-text('Upload and install')")
                page.get_by_text("tiny-test 1.1.0 is active in slot b").wait_for()
                check("bundle-installed")
                for name in ("DICOM", "Logs", "Tokens"):
                    page.click(f"a.nav:has-text('{name}')")
                    page.get_by_role("heading", level=1).wait_for()
                    check(name.lower())
                page.fill("#name", "ward monitor")
                page.click("button:has-text('Make a token')")
                page.locator(".tech-token").wait_for()
                check("token-made")
                page.click("button:has-text('Log out')")
                page.wait_for_url("**/technician/login")
            finally:
                ctx.close()
    finally:
        stop_server(server)

    config = tmp_path / "bad.toml"
    config.write_text("[ui]\nno_such_setting = 1\n")
    safe = start_server(data, [tiny_bundle], "--config", str(config), "--safe-mode", check_health=False)
    try:
        with sync_playwright() as pw:
            ctx = open_browser(pw, tmp_path / "profile-safe", 1024, 600, bypass_csp=True)
            try:
                page = ctx.new_page()
                page.goto(safe.url)
                page.get_by_text("no_such_setting").first.wait_for()
                check("safe-mode")
                page.click("a:has-text('Technician area')")
                page.wait_for_url("**/technician/login?next=/technician/")
                check("safe-mode-login")
            finally:
                ctx.close()
    finally:
        stop_server(safe)
    assert {name: v for name, v in found.items() if v} == {}
