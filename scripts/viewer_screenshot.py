"""The README's viewer screenshot: `ultraseg serve MODEL`, one scan uploaded in Debian's Chromium, the page saved.

    python scripts/viewer_screenshot.py models/deploy/ultraseg.int8.onnx "../shared/data/busi/benign/benign (112).webp"

writes plots/viewer/upload.png.
"""
import subprocess, sys, time, urllib.request
from playwright.sync_api import sync_playwright
model, scan = sys.argv[1], sys.argv[2]
srv = subprocess.Popen([sys.executable, "-m", "ultraseg.console", "serve", model, "--port", "8765"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(60):
        try: urllib.request.urlopen("http://127.0.0.1:8765/health"); break
        except Exception: time.sleep(0.5)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = b.new_page(viewport={"width": 1280, "height": 860})
        page.goto("http://127.0.0.1:8765/")
        page.check("input[name=source][value=file]") if page.locator("input[name=source][value=file]").count() else None
        page.set_input_files("input[type=file]", scan)
        page.wait_for_function("document.querySelector('#results') && Number(document.querySelector('#results').dataset.value) > 0", timeout=20000)
        page.wait_for_timeout(500)
        page.screenshot(path="plots/viewer/upload.png")
        print(page.locator("#area-px").inner_text(), page.locator("#lesion").inner_text())
        b.close()
finally:
    srv.terminate()
