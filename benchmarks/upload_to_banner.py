"""Upload-to-banner latency in Chromium: how long a clinician waits, from tapping Triage on the new
study page with a full-resolution chest X-ray, until the result page shows its verdict banner.

    .venv/bin/python benchmarks/upload_to_banner.py [--bundle DIR] [--rounds N] [--json]

Starts a real `bedside serve --port 0` on a fresh data dir and drives Debian's /usr/bin/chromium
through Playwright at 1024x600. For each upload it reads the result page's navigation timing (which
starts when the form is submitted, so it holds the POST, the triage, the redirect and the page):
`banner` is domContentLoadedEventEnd (the banner is plain HTML: on screen by then), `image` is
loadEventEnd (the preview shown too). Target (issue 9): banner p50 <= 200 ms.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from models.bundle import default_bundles_dir
from models.datasets import datasets_dir

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"Bedside kiosk ready at (http://\S+)")
CHROMIUM = "/usr/bin/chromium"
TIMING_JS = """() => { const n = performance.getEntriesByType("navigation")[0];
  return [n.domContentLoadedEventEnd, n.loadEventEnd, n.redirectCount]; }"""


def serve(bundle: Path, data_dir: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "device.cli", "serve", "--port", "0", "--data-dir", str(data_dir), "--bundle", str(bundle)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    for line in proc.stdout:
        match = READY.search(line)
        if match:
            return proc, match.group(1)
    raise RuntimeError(f"bedside serve exited ({proc.wait()}) before it was ready")


def measure(url: str, images: list[Path], rounds: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    out: dict[str, list[float]] = {"banner_ms": [], "image_ms": []}
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        ctx = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, viewport={"width": 1024, "height": 600},
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
        )
        page = ctx.new_page()
        for n in range(rounds * len(images) + 1):
            page.goto(url + "studies/new")
            page.fill("#reference-upload", f"bench {n}")
            page.set_input_files("input[type=file]", str(images[n % len(images)]))
            page.click("button:has-text('Triage')")
            page.wait_for_url(re.compile(r"/studies/\d+\?saved=1"), wait_until="load")
            banner, image, redirects = page.evaluate(TIMING_JS)
            if n == 0:
                continue  # the first page load warms Chromium's caches of the page's CSS and JS
            out["banner_ms"].append(banner)
            out["image_ms"].append(image)
        ctx.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=datasets_dir() / "chest-xray" / "fullres-samples",
                        help="a folder of JPEG X-rays, one subfolder per label")
    parser.add_argument("--bundle", type=Path, default=default_bundles_dir() / "chest-xray-pneumonia")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the sample X-rays")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    images = sorted(args.images.glob("*/*.jpeg"))
    if not images:
        print(f"no JPEG X-rays in the subfolders of {args.images}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as data:
        proc, url = serve(args.bundle, Path(data))
        try:
            got = measure(url, images, args.rounds)
        finally:
            proc.terminate()
            proc.wait(30)
    report = {key: {"p50": round(float(np.percentile(v, 50)), 1), "p90": round(float(np.percentile(v, 90)), 1),
                    "n": len(v)} for key, v in got.items()}
    if args.json:
        print(json.dumps(report))
    else:
        for key, r in report.items():
            print(f"{key:10s} p50 {r['p50']:7.1f} ms   p90 {r['p90']:7.1f} ms   (n={r['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
