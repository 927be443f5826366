"""What the browser tests share: Debian's /usr/bin/chromium driven by Playwright, the shipped
bundle, real chest X-rays, and a folder for screenshots under pytest's tmp dir (people look at
them; they are never committed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiosk_support import ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VIEWPORTS = [(1024, 600), (1280, 800)]
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"  # `make test` installs it from npm
# axe's findings of these impacts fail a test; the rest (moderate, minor) are for people to weigh.
AXE_FAILING = ("serious", "critical")
AXE_JS = """async (failing) => (await axe.run(document, {resultTypes: ["violations"]})).violations
  .filter((v) => failing.includes(v.impact))
  .map((v) => ({id: v.id, impact: v.impact, help: v.help, where: v.nodes.slice(0, 3).map((n) => n.target.join(" "))}))"""


def open_browser(pw, profile: Path, width: int, height: int, **options):
    """A headless Chromium context at this viewport (touch when ``has_touch=True``)."""
    return pw.chromium.launch_persistent_context(
        str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
        viewport={"width": width, "height": height}, **options,
    )


def axe_violations(page, axe_js: Path) -> list[dict]:
    """Serious and critical accessibility violations axe-core finds on the page as it is now. The
    context must be opened with bypass_csp=True: the kiosk's CSP refuses any script it did not serve."""
    page.add_script_tag(path=str(axe_js))
    return page.evaluate(AXE_JS, list(AXE_FAILING))


OVERFLOW_JS = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"


def screen_problems(page, axe_js: Path) -> list:
    """What fails a page on the device's screen as it is now: axe's serious and critical violations,
    and any width beyond the viewport (nothing may scroll sideways on a 1024 px kiosk)."""
    wider = page.evaluate(OVERFLOW_JS)
    return axe_violations(page, axe_js) + ([f"{wider} px too wide"] if wider > 0 else [])
