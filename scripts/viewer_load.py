"""Probe a running ``ultraseg serve`` as a busy ward would: many uploads from several clients, then the uploads
meant to hurt it (an image declaring a huge frame, a body over the limit). Writes what it saw to a JSON file.

    python scripts/viewer_load.py --model models/deploy/ultraseg.int8.onnx --image ../shared/data/busi/benign/...

The server runs in its own process on a free loopback port and is stopped at the end; only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import psutil

from ultraseg.io import write_json


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def declared_png(width: int, height: int) -> bytes:
    """A small valid PNG whose header declares ``width`` x ``height`` (CRC recomputed)."""
    data = bytearray(cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def start(model: Path, port: int, upload_mb: float) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "ultraseg.commands.console", "serve", str(model), "--port",
                                str(port), "--max-upload-mb", str(upload_mb)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
        if process.poll() is not None:
            break
    process.kill()
    sys.exit("error: ultraseg serve did not start")


def load(url: str, image: bytes, mime: str, uploads: int, clients: int, server: psutil.Process) -> dict:
    """``uploads`` POSTs of ``image`` from ``clients`` threads: status codes, latency and the server's memory."""
    times, rss = [0.0] * uploads, [0.0] * uploads

    def upload(k: int) -> int:
        start_s = time.perf_counter()
        response = client.post(f"{url}/segment", content=image, headers={"Content-Type": mime})
        times[k] = 1000 * (time.perf_counter() - start_s)
        rss[k] = server.memory_info().rss / 2**20
        return response.status_code

    begin = time.perf_counter()
    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=clients)) as client, \
            ThreadPoolExecutor(clients) as pool:
        codes = list(pool.map(upload, range(uploads)))
    wall = time.perf_counter() - begin
    window = max(1, uploads // 4)
    return {"uploads": uploads, "clients": clients, "answered_200": codes.count(200),
            "requests_per_s": round(uploads / wall, 1), "p50_ms": round(float(np.percentile(times, 50)), 1),
            "p99_ms": round(float(np.percentile(times, 99)), 1),
            "server_rss_mb_first": round(float(np.median(rss[:window])), 1),
            "server_rss_mb_last": round(float(np.median(rss[-window:])), 1)}


def refusal(url: str, body: bytes) -> dict:
    """One hostile upload: the status, whether the answer is JSON naming the problem, and how long it took."""
    start_s = time.perf_counter()
    response = httpx.post(f"{url}/segment", content=body, headers={"Content-Type": "image/png"}, timeout=120)
    try:
        message = response.json().get("error", "")
    except ValueError:
        message = None
    return {"bytes": len(body), "status": response.status_code, "json_error": message,
            "ms": round(1000 * (time.perf_counter() - start_s), 1)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("models/deploy/ultraseg.int8.onnx"))
    ap.add_argument("--image", type=Path, required=True, help="a scan to upload (any format the viewer reads)")
    ap.add_argument("--uploads", type=int, default=400)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-upload-mb", type=float, default=20)
    ap.add_argument("--out", type=Path, default=Path("results/viewer_load.json"))
    args = ap.parse_args(argv)
    port = free_port()
    process = start(args.model, port, args.max_upload_mb)
    url = f"http://127.0.0.1:{port}"
    try:
        out = {"command": " ".join(["python", *sys.argv]),
               "load": load(url, args.image.read_bytes(), f"image/{args.image.suffix.lstrip('.').lower()}",
                            args.uploads, args.clients, psutil.Process(process.pid)),
               "declared_20000x20000_png": refusal(url, declared_png(20000, 20000)),
               "declared_30000x30000_png": refusal(url, declared_png(30000, 30000)),
               "body_25mb": refusal(url, bytes(25 * 2**20))}
    finally:
        process.terminate()
        process.wait(timeout=30)
    write_json(args.out, out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
