"""The README's viewer screenshot: ``ultraseg serve MODEL``, one scan uploaded in Debian's Chromium, the page saved.

    python scripts/viewer_screenshot.py models/deploy/ultraseg.int8.onnx "../shared/data/busi/benign/benign (112).webp"

writes plots/viewer/upload.png (``--out`` to change it) and prints the lesion area the page shows.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 860}
RESULTS_SHOWN = "document.querySelector('#results') && Number(document.querySelector('#results').dataset.value) > 0"


def wait_until_up(url: str, seconds: float = 30.0) -> None:
    """Poll ``url`` until it answers; the server loads the model before it listens."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise SystemExit(f"viewer_screenshot: {url} did not answer within {seconds:.0f} s") from None
            time.sleep(0.5)


def screenshot(base_url: str, scan: Path, out: Path) -> str:
    """Upload ``scan`` on the viewer's page, wait for its results and save the page; the lesion line it shows."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(base_url)
            page.set_input_files("input[type=file]", str(scan))
            page.wait_for_function(RESULTS_SHOWN, timeout=20_000)
            page.wait_for_timeout(500)  # the overlay is drawn on the frame after the numbers
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
            return f"{page.locator('#area-px').inner_text()} {page.locator('#lesion').inner_text()}"
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="deployable ONNX file the viewer serves")
    parser.add_argument("scan", type=Path, help="image or DICOM file to upload")
    parser.add_argument("--out", type=Path, default=Path("plots/viewer/upload.png"), help="screenshot (PNG)")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    for path in (args.model, args.scan):
        if not path.is_file():
            parser.error(f"no such file: {path}")
    server = subprocess.Popen([sys.executable, "-m", "ultraseg.commands.console", "serve", str(args.model),
                               "--port", str(args.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base_url = f"http://127.0.0.1:{args.port}/"
        wait_until_up(base_url + "health")
        print(screenshot(base_url, args.scan, args.out))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
