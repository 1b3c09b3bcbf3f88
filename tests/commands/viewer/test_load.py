"""The viewer as it ships: ``ultraseg serve`` in its own process on a loopback port, hit by several clients at once,
and by the uploads meant to hurt it (a body over the limit, an image declaring a huge frame)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from tests.runtime.test_sources import huge_png

UPLOADS, CLIENTS, WINDOW = 200, 4, 50
RSS_GROWTH_MB = 20
"""How much the server's resident memory may grow from the median over the first WINDOW uploads to the median over
the last: the medians lie UPLOADS - WINDOW uploads apart, so more growth means over 130 KB kept per upload, less than
one float probability map of the test scan; a server that keeps nothing grows by allocator noise only."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(zoo, tmp_path_factory) -> Iterator[tuple[str, psutil.Process]]:
    """The base URL of a running ``ultraseg serve`` (2 MB upload limit) and its process."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"), *sys.path])}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "ultraseg.commands.console", "serve", str(zoo.models / "pruned.int8.onnx"),
                                    "--port", str(port), "--max-upload-mb", "2"], stdout=out, stderr=out, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, log.read_text()
            time.sleep(0.1)
        else:
            pytest.fail(f"ultraseg serve did not answer: {log.read_text()}")
        yield url, psutil.Process(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_200_uploads_from_4_clients_all_answered_with_bounded_memory(served, busi_mirror):
    url, process = served
    image = (busi_mirror / "benign" / "benign (1).webp").read_bytes()
    rss: list[float] = [0.0] * UPLOADS

    def upload(k: int) -> int:
        response = client.post(f"{url}/segment", content=image, headers={"Content-Type": "image/webp"})
        rss[k] = process.memory_info().rss / 2**20
        return response.status_code if response.json().get("width") else -1

    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=CLIENTS)) as client, \
            ThreadPoolExecutor(CLIENTS) as pool:
        codes = list(pool.map(upload, range(UPLOADS)))
    assert codes == [200] * UPLOADS
    first, last = np.median(rss[:WINDOW]), np.median(rss[-WINDOW:])
    assert last - first < RSS_GROWTH_MB, (first, last)


def test_a_body_over_the_limit_gets_a_413_the_client_can_read(served):
    url, _ = served
    response = httpx.post(f"{url}/segment", content=b"\0" * (25 * 2**20), headers={"Content-Type": "image/png"},
                          timeout=60)
    assert response.status_code == 413 and "2 MB" in response.json()["error"]
    assert httpx.get(f"{url}/health").status_code == 200


@pytest.mark.parametrize("content_type", ["image/png", "text/plain"])
def test_a_client_that_sends_the_whole_body_first_reads_the_refusal(served, content_type):
    """urllib (like requests) writes the whole body before it reads a byte of the answer: a server that answers
    early and closes would leave it a broken pipe instead of the JSON."""
    url, _ = served
    request = urllib.request.Request(f"{url}/segment", data=b"\0" * (25 * 2**20),
                                     headers={"Content-Type": content_type})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=60)
    assert info.value.code == (413 if content_type == "image/png" else 415)
    assert "error" in json.loads(info.value.read())


def test_a_chunked_body_over_the_limit_gets_a_413_the_client_can_read(served):
    url, _ = served
    chunks = (b"\0" * 2**20 for _ in range(25))  # no Content-Length: refused while counting
    response = httpx.post(f"{url}/segment", content=chunks, headers={"Content-Type": "image/png"}, timeout=60)
    assert response.status_code == 413 and "2 MB" in response.json()["error"]


@pytest.mark.parametrize("form", [False, True])
def test_a_png_declaring_20000_squared_is_refused_from_its_header(served, form):
    url, process = served
    before = process.memory_info().rss
    data = huge_png(20000, 20000)
    if form:
        response = httpx.post(f"{url}/segment", files={"file": ("big.png", data, "image/png")}, timeout=60)
    else:
        response = httpx.post(f"{url}/segment", content=data, headers={"Content-Type": "image/png"}, timeout=60)
    assert response.status_code == 413, response.text
    message = response.json()["error"]
    assert "20000 x 20000" in message and "--max-pixels" in message
    assert process.memory_info().rss - before < 100 * 2**20  # decoding it would take 400 MB
