"""What the browser tests share: Debian's /usr/bin/chromium driven by Playwright, the shipped
bundle, real chest X-rays, and a folder for screenshots under pytest's tmp dir (people look at
them; they are never committed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from capture_support import sample_xrays
from kiosk_support import shipped_bundle

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VIEWPORTS = [(1024, 600), (1280, 800)]


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
