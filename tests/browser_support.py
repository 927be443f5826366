"""What the browser tests share: Debian's /usr/bin/chromium driven by Playwright, the shipped
bundle, real chest X-rays, and a folder for screenshots under pytest's tmp dir (people look at
them; they are never committed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from capture_support import sample_xrays
from kiosk_support import ROOT, shipped_bundle

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


@pytest.fixture(scope="module")
def sync_playwright():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium; .ci/run does)")
    return pytest.importorskip("playwright.sync_api", reason="playwright (test extra) not installed").sync_playwright


@pytest.fixture(scope="module")
def bundle() -> Path:
    path = shipped_bundle()
    if path is None:
        pytest.skip("the shipped bundle models/bundles/chest-xray-pneumonia is absent")
    return path


@pytest.fixture(scope="module")
def xray() -> Path:
    pneumonia = [p for p in sample_xrays() if p.parent.name == "PNEUMONIA"]
    if not pneumonia:
        pytest.skip("no full-resolution chest X-ray samples (datasets/chest-xray/fullres-samples)")
    return pneumonia[0]


@pytest.fixture(scope="session")
def screens(tmp_path_factory) -> Path:
    """Where screenshots go: one folder per test session, under pytest's basetemp."""
    return tmp_path_factory.mktemp("screens")


def open_browser(pw, profile: Path, width: int, height: int, **options):
    """A headless Chromium context at this viewport (touch when ``has_touch=True``)."""
    return pw.chromium.launch_persistent_context(
        str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
        viewport={"width": width, "height": height}, **options,
    )


@pytest.fixture(scope="module")
def axe() -> Path:
    if not AXE.is_file():
        pytest.skip(f"{AXE} missing: `make test` installs axe-core from npm")
    return AXE


def axe_violations(page, axe_js: Path) -> list[dict]:
    """Serious and critical accessibility violations axe-core finds on the page as it is now. The
    context must be opened with bypass_csp=True: the kiosk's CSP refuses any script it did not serve."""
    page.add_script_tag(path=str(axe_js))
    return page.evaluate(AXE_JS, list(AXE_FAILING))
