"""The viewer page in a real browser: Debian's chromium, headless, driven by Playwright against the real uvicorn
server. The camera is chromium's fake capture device playing a .y4m clip of BUSI images.

ULTRASEG_SCREENSHOTS=1 writes the live stream's measured figures to plots/viewer/live.json (tracked); otherwise
they go to tmp_path."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.commands.viewer.test_server import BENIGN, pick_thresholds
from ultraseg.commands.viewer import server
from ultraseg.data.busi import read_image
from ultraseg.runtime import Segmenter

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
CLIP_IMAGES = [("benign", "benign (1).webp"), ("malignant", "malignant (1).webp"), ("benign", "benign (2).webp")]
CLIP_SIZE = (320, 240)
CLIP_FPS = 60
"""The fake camera's rate: above 30, so the rate the page measures is the pipeline's, not the camera's."""


def write_y4m(path: Path, frames: list[np.ndarray], fps: int) -> Path:
    """A YUV4MPEG2 clip of greyscale frames: I420 with neutral chroma, so the colours are exactly grey."""
    height, width = frames[0].shape
    chroma = np.full((height // 2) * (width // 2), 128, np.uint8).tobytes()
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            out.write(b"FRAME\n" + np.ascontiguousarray(frame).tobytes() + chroma + chroma)
    return path


@pytest.fixture(scope="module")
def clip_frames(busi_mirror) -> list[np.ndarray]:
    stills = [cv2.resize(read_image(busi_mirror.joinpath(*name)), CLIP_SIZE, interpolation=cv2.INTER_AREA)
              for name in CLIP_IMAGES]
    return [still for still in stills for _ in range(CLIP_FPS // 2)]  # each still for half a second


@pytest.fixture(scope="module")
def segmenter(zoo) -> Segmenter:
    return Segmenter(zoo.models / "pruned.int8.onnx")


@pytest.fixture(scope="module")
def base_url(segmenter, busi_mirror, tmp_path_factory):
    """The real server (uvicorn) in a thread, on a socket bound to a free port first (no race for the port);
    its --source is a folder of two BUSI images."""
    folder = tmp_path_factory.mktemp("source")
    for cls, name in CLIP_IMAGES[:2]:
        (folder / name).write_bytes((busi_mirror / cls / name).read_bytes())
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = server.create_app(segmenter, source=str(folder))
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    uv.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="module")
def browser(clip_frames, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    clip = write_y4m(tmp_path_factory.mktemp("clip") / "clip.y4m", clip_frames, CLIP_FPS)
    args = ["--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={clip}"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, base_url):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.goto(base_url)
    page.wait_for_selector("body[data-ready='1']")
    yield page
    context.close()


@pytest.fixture
def shots(tmp_path, repo_root) -> Path:
    if os.environ.get("ULTRASEG_SCREENSHOTS") == "1":
        folder = repo_root / "plots" / "viewer"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return tmp_path


def results(page) -> int:
    return int(page.locator("#results").get_attribute("data-value") or 0)


def wait_results(page, count: int) -> None:
    page.wait_for_function("n => Number(document.getElementById('results').dataset.value || 0) >= n", arg=count)


def number(page, element: str) -> float:
    return float(page.locator(f"#{element}").get_attribute("data-value"))


def set_threshold(page, value: float) -> None:
    """As a user dragging the slider: the value changes and the page gets an input event."""
    page.eval_on_selector("#threshold", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }",
                          str(value))


def coloured_pixels(page) -> int:
    """Canvas pixels far from grey: the frames are greyscale, so only the overlay (orange fill, yellow contour)
    makes red exceed blue by this much."""
    return page.evaluate("""() => {
        const c = document.getElementById('view');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] - d[i + 2] > 40) n++;
        return n;
    }""")


def upload(page, path: Path) -> None:
    before = results(page)
    page.set_input_files("#file", str(path))
    wait_results(page, before + 1)


def test_upload_shows_the_overlay_and_the_runtimes_area(page, segmenter, busi_mirror, tmp_path):
    path = busi_mirror.joinpath(*BENIGN)
    image = read_image(path)
    threshold = pick_thresholds(segmenter, image)[1]
    set_threshold(page, threshold)  # nothing to segment yet: it only sets the threshold for the upload
    upload(page, path)
    expected = segmenter.segment(image, threshold=threshold)
    assert number(page, "area-px") == expected.area_px > 0
    assert page.locator("#lesion").get_attribute("data-value") == "true"
    assert number(page, "score") == pytest.approx(expected.score, abs=1e-6)
    assert page.eval_on_selector("#view", "c => [c.width, c.height]") == list(image.shape[::-1])
    shown = coloured_pixels(page)
    assert shown > 0
    page.uncheck("#overlay")
    assert coloured_pixels(page) == 0
    page.check("#overlay")
    assert coloured_pixels(page) == shown
    page.screenshot(path=str(tmp_path / "upload.png"))


def test_threshold_slider_resegments_the_still(page, segmenter, busi_mirror):
    path = busi_mirror.joinpath(*BENIGN)
    image = read_image(path)
    upload(page, path)
    seen = {}
    for threshold in pick_thresholds(segmenter, image):
        before = results(page)
        set_threshold(page, threshold)
        wait_results(page, before + 1)
        seen[threshold] = (number(page, "area-px"), coloured_pixels(page))
        assert seen[threshold][0] == segmenter.segment(image, threshold=threshold).area_px
    (low_area, low_pixels), (high_area, high_pixels) = seen.values()
    assert low_area > high_area > 0 and low_pixels > high_pixels > 0


def test_opacity_changes_the_overlay_not_the_answer(page, busi_mirror):
    upload(page, busi_mirror.joinpath(*BENIGN))  # the model's threshold 0.5: every pixel of this image
    before = coloured_pixels(page), number(page, "area-px")
    page.eval_on_selector("#opacity", "el => { el.value = 0; el.dispatchEvent(new Event('input')); }")
    after = coloured_pixels(page), number(page, "area-px")
    assert after[1] == before[1] > 0 and after[0] < before[0]


def test_a_frame_that_is_not_a_scan_shows_the_not_a_breast_scan_state(page, busi_mirror, tmp_path):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((120, 160), 40, np.uint8))
    upload(page, blank)
    assert page.locator("#ood").is_visible()
    assert "Not a breast scan: constant frame" in page.locator("#ood").inner_text()
    assert page.locator("#lesion").inner_text() == "–" and coloured_pixels(page) == 0
    upload(page, busi_mirror.joinpath(*BENIGN))  # the zoo's file has no check: a scan is answered, the state goes
    assert not page.locator("#ood").is_visible() and page.locator("#lesion").inner_text() in ("yes", "no")


def test_unsupported_upload_shows_the_servers_error(page, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a scan")
    page.set_input_files("#file", str(notes))
    page.wait_for_function("() => document.getElementById('status').textContent.includes('unsupported')")
    assert "error" in page.locator("#status").get_attribute("class")


def test_live_camera_stream_draws_overlays_and_measures_fps(page, segmenter, clip_frames, shots):
    set_threshold(page, 0.0)  # every pixel is lesion for the untrained model: an overlay on every frame
    page.check("input[name=source][value=camera]")
    page.click("#start")
    wait_results(page, 5)
    start, began = results(page), time.monotonic()
    page.wait_for_timeout(3000)
    frames, seconds = results(page) - start, time.monotonic() - began
    fps, latency = number(page, "fps"), number(page, "latency-ms")
    print(f"\nlive camera: {frames} frames in {seconds:.1f} s, page-measured {fps:.1f} fps, "
          f"latency {latency:.1f} ms, server {number(page, 'server-ms'):.1f} ms")
    assert fps > 0 and frames > 0 and latency > 0
    assert coloured_pixels(page) > 0 and page.locator("#lesion").get_attribute("data-value") == "true"
    assert page.eval_on_selector("#view", "c => [c.width, c.height]") == list(CLIP_SIZE)
    # For the screenshot, a threshold that leaves part of the first still as lesion (whatever it shows after)
    set_threshold(page, pick_thresholds(segmenter, cv2.resize(clip_frames[0], (256, 192)))[1])
    wait_results(page, results(page) + 10)
    (shots / "live.json").write_text(json.dumps({  # the figures README quotes, written by the run that measured them
        "frames": frames, "seconds": round(seconds, 2), "page_fps": round(fps, 1), "latency_ms": round(latency, 1),
        "server_ms": round(number(page, "server-ms"), 1), "model": Path(segmenter.path).name,
        "clip": f"{len(clip_frames)} BUSI frames, {CLIP_SIZE[0]}x{CLIP_SIZE[1]}"}, indent=2) + "\n")
    page.click("#stop")
    stopped = results(page)
    page.wait_for_timeout(300)
    assert results(page) <= stopped + 1  # at most the frame in flight lands after Stop


def test_server_source_plays_in_the_page(page, segmenter, busi_mirror):
    threshold = 0.3
    set_threshold(page, threshold)
    page.check("input[name=source][value=server]")
    page.click("#start")
    wait_results(page, 3)  # the folder has two images: the third frame is the first again
    images = [read_image(busi_mirror.joinpath(*name)) for name in CLIP_IMAGES[:2]]
    shown = number(page, "area-px")  # whichever frame is on screen, its area is the runtime's for it
    assert shown in {segmenter.segment(image, threshold=threshold).area_px for image in images}
    assert shown > 0 and coloured_pixels(page) > 0
    page.click("#stop")
