"""`dvc plots show` works offline: the page loads nothing from the network, and its charts render in Chromium with
the network switched off."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

TEMPLATE = REPO_ROOT / ".dvc" / "plots" / "offline.html"
CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not TEMPLATE.exists(), reason=f"{TEMPLATE} not built; run make setup")


@pytest.fixture(scope="module")
def page_html(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plots")
    result = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "-o", str(out)], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out / "index.html"


def test_the_page_names_no_remote_script(page_html):
    html = page_html.read_text()
    assert re.findall(r"<script[^>]+src=", html) == []  # every script is inline
    assert "cdn.jsdelivr" not in html and "/* vega-embed 6.18.2 */" in html


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium")
def test_charts_render_with_the_network_off(page_html):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        context = browser.new_context(offline=True)
        page = context.new_page()
        remote = []
        page.on("request", lambda request: remote.append(request.url) if not request.url.startswith("file:")
                else None)
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(page_html.as_uri())
        charts = page.locator(".vega-embed")
        charts.first.wait_for(timeout=20_000)
        page.wait_for_function("[...document.querySelectorAll('.vega-embed')].every("
                               "e => e.querySelector('.marks'))", timeout=20_000)
        sizes = page.eval_on_selector_all(".vega-embed .marks",
                                          "els => els.map(e => e.getBoundingClientRect().width)")
        browser.close()
    assert len(sizes) >= 5 and min(sizes) > 100, sizes  # the learning curves, threshold and trade-off charts
    assert remote == [] and errors == []
