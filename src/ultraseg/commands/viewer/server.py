"""``ultraseg serve MODEL``: a local live viewer. A Starlette app that segments what the page sends it.

  GET  /            the page (static/index.html; static/app.js and style.css under /static)
  GET  /health      status, model, input size, post-processing rule and the server-side source, as JSON
  POST /segment     one image or DICOM file (a raw body with its Content-Type, or a multipart form upload);
                    query: threshold, spacing ("row,col" mm per pixel), frame=1 to get the decoded image back
  WS   /ws          live frames from the page: binary JPEG/PNG frames in, one JSON answer per frame out;
                    a text message {"threshold": t} sets the threshold for the next frames
  WS   /source      the server's --source (camera, video file, cine DICOM, folder): the page sends
                    {"threshold": t} for each frame it wants, and gets the frame and its answer as JSON

Every answer carries in_distribution and ood_reason (a frame the model was not trained on gets no lesion answer),
lesion_present, score, area_px, area_mm2, bbox, contour (at most ~200 points, image pixels),
width, height, threshold, timings (ms) and the mask as an RGBA PNG data URL (lesion opaque, the rest transparent)
ready to draw over the frame. Errors are JSON too: {"error": "..."} with 400, 413 or 415. A body over
--max-upload-mb and an image or DICOM whose header declares frames over --max-pixels get 413, the latter before a
pixel is decoded.

Uploads are read into memory under the size limit and decoded there: nothing is written to disk. A form upload goes
through Starlette's multipart parser with its limits (one file, a few small fields), told to keep the file in memory.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from ultraseg.commands import model_choice
from ultraseg.commands.predict import positive_int
from ultraseg.errors import DataError
from ultraseg.runtime import sources
from ultraseg.runtime.segmenter import Segmentation, Segmenter
from ultraseg.runtime.sources import to_grey
from ultraseg.runtime.stream import Smoother

STATIC = Path(__file__).parent / "static"
CONTOUR_POINTS = 200
"""Contours are subsampled to about this many points: enough to draw, small enough to send 30 times a second."""
SOURCE_SIDE = 512
"""Server-side source frames (and their masks) are sent to the page with at most this longest side."""
FOLDER_FPS = 5.0
"""A folder of stills plays at this rate, slow enough to see each image."""
DICOM_TYPES = ("application/dicom",)
DRAIN_BYTES = 128 * 2**20
"""A refused body up to this size is read to its end and dropped, so that a client that sends the whole body before
reading the answer (urllib, requests) gets the JSON rather than a broken pipe; a longer one gets the connection
closed, rather than the server reading without end."""
FORM_FIELDS = 8
"""Text fields a form upload may carry besides its file (the page sends none)."""
FORM_FIELD_BYTES = 2**16
MASK_NAME = re.compile(r"_mask(_\d+)?$")
"""BUSI-style mask files (``x_mask.png``, ``x_mask_1.png``) beside the scans are not frames: a folder skips them."""


class UploadError(Exception):
    """A request the server refuses: the HTTP status and the message sent back as {"error": ...}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Decoded:
    """A decoded upload or file: its first (or only) frame, all frames for a cine, and the pixel spacing."""

    image: np.ndarray
    frames: list[np.ndarray] = field(default_factory=list)
    spacing: tuple[float, float] | None = None
    fps: float | None = None


# ---------------------------------------------------------------------------------------------------- decoding


def decode(data: bytes, name: str = "", max_pixels: int | None = sources.MAX_PIXELS) -> tuple[Decoded, int]:
    """An upload's first frame and pixel spacing, read as ``ultraseg predict`` reads the same file, and its number
    of frames. Only the first frame is kept: the later frames of a cine are decoded one at a time to count them."""
    frames = sources.frames_from_bytes(data, name, max_pixels)
    first = next(frames)
    return Decoded(first.image, [first.image], first.pixel_spacing), 1 + sum(1 for _ in frames)


def read_file(path: Path) -> Decoded:
    """A file of a server-side source: every frame, its pixel spacing, and a cine DICOM's own frame rate."""
    frames = list(sources.read_frames(path))
    return Decoded(frames[0].image, [f.image for f in frames], frames[0].pixel_spacing, cine_rate(path))


def cine_rate(path: Path) -> float | None:
    """Frames per second a cine DICOM asks to be played at (None for other files or when it does not say)."""
    if sources.kind(path) != "dicom":
        return None
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    for name in ("CineRate", "RecommendedDisplayFrameRate"):
        if ds.get(name):
            return float(ds.get(name))
    return 1000.0 / float(ds.FrameTime) if ds.get("FrameTime") else None


# ---------------------------------------------------------------------------------------------------- answers


def data_url(mime: str, payload: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def fit(shape: tuple[int, ...], side: int | None) -> tuple[int, int] | None:
    """(width, height) that fits ``side``, or None when the image already does."""
    height, width = shape[:2]
    if side is None or max(height, width) <= side:
        return None
    scale = side / max(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def mask_png(mask: np.ndarray, side: int | None = None) -> str:
    """The mask as an RGBA PNG: lesion opaque orange, background transparent, so the page draws it as it is."""
    size = fit(mask.shape, side)
    small = mask if size is None else cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    rgba = np.zeros((*small.shape, 4), np.uint8)
    rgba[small] = (40, 90, 255, 255)  # BGRA for OpenCV: orange
    return data_url("image/png", cv2.imencode(".png", rgba)[1].tobytes())


def frame_jpeg(image: np.ndarray, side: int | None = None, quality: int = 90) -> str:
    """What the model saw, as a JPEG the browser can show (DICOM and 16-bit images included)."""
    rgb = image[..., :3] if image.ndim == 3 and image.dtype == np.uint8 else to_grey(image)
    size = fit(rgb.shape, side)
    small = rgb if size is None else cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR) if small.ndim == 3 else small
    return data_url("image/jpeg", cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes())


def subsample(contour: np.ndarray | None, points: int = CONTOUR_POINTS) -> list[list[int]]:
    """At most ``points`` vertices of the contour, simplified (Douglas-Peucker, the tolerance doubled until it fits)
    rather than decimated: dropping every k-th vertex would cut corners off the outline."""
    if contour is None:
        return []
    poly, epsilon = contour.reshape(-1, 1, 2).astype(np.int32), 0.5
    while len(poly) > points:
        poly = cv2.approxPolyDP(contour.reshape(-1, 1, 2).astype(np.int32), epsilon, closed=True)
        epsilon *= 2
    return poly.reshape(-1, 2).tolist()


def answer(result: Segmentation, threshold: float, mask_side: int | None = None) -> dict[str, Any]:
    """The JSON the page gets for one segmented image."""
    height, width = result.mask.shape
    return {"in_distribution": result.in_distribution, "ood_reason": result.ood_reason,
            "lesion_present": result.lesion_present, "score": result.score, "area_px": result.area_px,
            "area_mm2": result.area_mm2, "bbox": list(result.bbox) if result.bbox else None,
            "contour": subsample(result.contour), "width": width, "height": height, "threshold": threshold,
            "mask": mask_png(result.mask, mask_side), "timings": dict(result.timings)}


class Engine:
    """The segmenter behind a lock: requests and streams take turns, one image at a time."""

    def __init__(self, segmenter: Segmenter) -> None:
        self.segmenter = segmenter
        self.lock = threading.Lock()

    @property
    def threshold(self) -> float:
        return self.segmenter.postprocess.threshold

    def run(self, image: np.ndarray, threshold: float, spacing: tuple[float, float] | None = None,
            side: int | None = None, frame: bool = False, smoother: Smoother | None = None) -> dict[str, Any]:
        """Segment and describe ``image``; ``side`` caps the mask (and frame) sent back; ``frame`` adds the image;
        a stream's ``smoother`` carries its lesion decision over from the frames before."""
        with self.lock:
            result = self.segmenter.segment(image, pixel_spacing=spacing, threshold=threshold)
        if smoother is not None:
            result = self.segmenter.smoothed(result, smoother, pixel_spacing=spacing, threshold=threshold)
        start = time.perf_counter()
        reply = answer(result, threshold, side)
        if frame:
            reply["frame"] = frame_jpeg(image, side)
        reply["timings"]["encode_ms"] = 1000 * (time.perf_counter() - start)
        return reply


# ---------------------------------------------------------------------------------------------------- requests


def parse_threshold(value: Any, default: float) -> float:
    if value is None or value == "":
        return default
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise UploadError(400, f"threshold: expected a number in [0, 1), got {value!r}") from None
    if not 0.0 <= threshold < 1.0:
        raise UploadError(400, f"threshold: expected a number in [0, 1), got {value!r}")
    return threshold


def parse_spacing(value: str | None) -> tuple[float, float] | None:
    if not value:
        return None
    try:
        parts = [float(v) for v in value.split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) <= 0:
        raise UploadError(400, f"spacing: expected 'mm' or 'row_mm,col_mm' (positive), got {value!r}")
    return (parts[0], parts[-1])


def media_kind(content_type: str, filename: str = "") -> str:
    """'image' or 'dicom' for what the server segments; 415 for anything else."""
    mime = content_type.split(";")[0].strip().lower()
    if mime.startswith("image/"):
        return "image"
    if mime in DICOM_TYPES or (mime in ("application/octet-stream", "") and filename.lower().endswith(sources.DICOM_SUFFIXES)):
        return "dicom"
    raise UploadError(415, f"unsupported content type {mime or '(none)'!r}: send an image (image/*) or a DICOM "
                      "file (application/dicom)")


def too_large(limit: int) -> UploadError:
    return UploadError(413, f"upload larger than the {limit / 2**20:g} MB limit (--max-upload-mb)")


async def limited_stream(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body's chunks, refused with 413 up front when Content-Length exceeds ``limit`` and as soon as
    the bytes received do (a chunked body declares no length), so nothing past the limit is ever held."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        yield chunk


async def discard_body(request: Request) -> None:
    """Read what is left of a refused request's body, up to :data:`DRAIN_BYTES`, keeping none of it."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > DRAIN_BYTES:
        return
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > DRAIN_BYTES:
                return
    except (RuntimeError, ClientDisconnect):  # RuntimeError: the body was read whole already
        return


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes (never read past it)."""
    return b"".join([chunk async for chunk in limited_stream(request, limit)])


async def form_file(request: Request, limit: int) -> tuple[str, str, bytes]:
    """(content type, filename, bytes) of the one file of a multipart form, read by Starlette's parser under
    ``limit`` bytes in all, one file and a few small fields. Starlette spools a file over 1 MB to a temporary
    file; here the spool holds the whole limit, so an upload never touches the disk."""
    parser = MultiPartParser(request.headers, limited_stream(request, limit), max_files=1, max_fields=FORM_FIELDS,
                             max_part_size=FORM_FIELD_BYTES)
    parser.spool_max_size = limit
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise UploadError(400, f"malformed multipart upload: {err.message}") from None
    try:
        upload = next((value for _, value in form.multi_items() if isinstance(value, UploadFile)), None)
        if upload is None:
            raise UploadError(400, "multipart upload without a file")
        return upload.content_type or "", upload.filename or "", await upload.read()
    finally:
        await form.close()


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


# ---------------------------------------------------------------------------------------------------- sources


class FrameSource:
    """Frames of a server-side source as RGB or grey arrays, with the rate to play them at (None: as they come)."""

    fps: float | None = None
    spacing: tuple[float, float] | None = None

    def read(self) -> np.ndarray | None:
        """The next frame; None when a live device stops giving frames (files and folders loop)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class CaptureSource(FrameSource):
    """A camera (/dev/videoN or its index) or a video file, through OpenCV; files loop."""

    def __init__(self, target: int | str, loop: bool) -> None:
        self.capture = cv2.VideoCapture(target)
        self.loop = loop
        if not self.capture.isOpened():
            raise DataError(f"{target}: cannot open as a camera or video file")
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if loop and 0 < fps <= 240 else None  # a camera paces itself

    def read(self) -> np.ndarray | None:
        ok, frame = self.capture.read()
        if not ok and self.loop:
            self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self.capture.read()
        if not ok:
            return None
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if frame.ndim == 3 else frame

    def close(self) -> None:
        self.capture.release()


class FileLoop(FrameSource):
    """Files played in a loop: a cine DICOM's frames, or a folder's images and DICOM files in name order."""

    def __init__(self, files: list[Path], fps: float | None = None) -> None:
        self.files, self.index, self.queue = files, 0, []
        self.cache = read_file(files[0]) if len(files) == 1 else None  # one file: decode it once
        self.fps = fps or (self.cache.fps if self.cache else None) or FOLDER_FPS
        self.spacing = self.cache.spacing if self.cache else None

    def read(self) -> np.ndarray | None:
        for _ in range(len(self.files) + 1):
            if self.queue:
                return self.queue.pop(0)
            self.queue = list(self.next_file().frames)
        raise DataError("no readable image in the source")

    def next_file(self) -> Decoded:
        if self.cache is not None:
            return self.cache
        path = self.files[self.index % len(self.files)]
        self.index += 1
        try:
            return read_file(path)
        except DataError as err:
            print(f"ultraseg serve: skipping {path}: {err}", file=sys.stderr)
            return Decoded(np.zeros((1, 1), np.uint8), [])


def open_source(spec: str) -> FrameSource:
    """A camera (/dev/videoN or N), a video file, a (cine) DICOM file, or a folder of images and DICOM files."""
    device = re.fullmatch(r"(?:/dev/video)?(\d+)", spec)
    if device:
        return CaptureSource(int(device.group(1)), loop=False)
    path = Path(spec)
    if path.is_dir():
        files = [p for p in sources.expand([path]) if sources.kind(p) != "video" and not MASK_NAME.search(p.stem)]
        if not files:
            raise DataError(f"{path}: no images or DICOM files in this folder")
        return FileLoop(files)
    if not path.is_file():
        raise DataError(f"{path}: no such camera, file or folder")
    if sources.kind(path) in ("image", "dicom"):
        return FileLoop([path])
    return CaptureSource(str(path), loop=True)


# ---------------------------------------------------------------------------------------------------- the app


@dataclass
class Settings:
    max_upload_bytes: int = 20 * 2**20
    source: str | None = None
    max_pixels: int = sources.MAX_PIXELS


def create_app(segmenter: Segmenter, source: str | None = None, max_upload_mb: float = 20,
               max_pixels: int = sources.MAX_PIXELS) -> Starlette:
    """The viewer's app for ``segmenter``; ``source`` is the spec of a server-side stream (see :func:`open_source`);
    uploads over ``max_upload_mb`` MB and images declaring frames of over ``max_pixels`` pixels are refused."""
    engine = Engine(segmenter)
    settings = Settings(int(max_upload_mb * 2**20), source, max_pixels)

    async def page(request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html")

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": str(segmenter.path), "input_size": segmenter.size,
                             "postprocess": segmenter.postprocess.to_dict(), "threshold": engine.threshold,
                             "source": settings.source, "max_upload_mb": max_upload_mb,
                             "max_pixels": settings.max_pixels})

    async def segment(request: Request) -> JSONResponse:
        try:
            return JSONResponse(await segment_upload(request, engine, settings))
        except UploadError as err:
            await discard_body(request)
            return error(err.status, str(err))

    async def frames(websocket: WebSocket) -> None:
        await stream_frames(websocket, engine, settings.max_pixels)

    async def served(websocket: WebSocket) -> None:
        await stream_source(websocket, engine, settings.source)

    routes = [Route("/", page), Route("/health", health), Route("/segment", segment, methods=["POST"]),
              WebSocketRoute("/ws", frames), WebSocketRoute("/source", served),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    return Starlette(routes=routes)


async def segment_upload(request: Request, engine: Engine, settings: Settings) -> dict[str, Any]:
    """POST /segment: check the type, read under the limit, decode in memory, segment."""
    content_type = request.headers.get("content-type", "")
    multipart = content_type.lower().startswith("multipart/form-data")
    if not multipart:
        media_kind(content_type)  # 415 before reading a byte of the body
    threshold = parse_threshold(request.query_params.get("threshold"), engine.threshold)
    spacing = parse_spacing(request.query_params.get("spacing"))
    filename = ""
    if multipart:
        content_type, filename, body = await form_file(request, settings.max_upload_bytes)
    else:
        body = await read_body(request, settings.max_upload_bytes)
    kind = media_kind(content_type, filename)
    start = time.perf_counter()
    try:
        decoded, count = await run_in_threadpool(
            decode, body, filename or ("upload.dcm" if kind == "dicom" else "upload"), settings.max_pixels)
    except sources.TooManyPixels as err:
        raise UploadError(413, str(err)) from None
    except DataError as err:
        raise UploadError(400, str(err)) from None
    decode_ms = 1000 * (time.perf_counter() - start)
    reply = await run_in_threadpool(engine.run, decoded.image, threshold, spacing or decoded.spacing,
                                    frame=request.query_params.get("frame") == "1")
    reply["timings"]["decode_ms"] = decode_ms
    reply["frames"] = count
    return reply


async def stream_frames(websocket: WebSocket, engine: Engine, max_pixels: int | None = sources.MAX_PIXELS) -> None:
    """WS /ws: one JSON answer per binary frame; text {"threshold": t} changes the threshold for what follows."""
    await websocket.accept()
    threshold, smoother = engine.threshold, engine.segmenter.smoother()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                threshold = control_threshold(message["text"], threshold)
                continue
            await websocket.send_json(await frame_answer(message.get("bytes") or b"", engine, threshold, max_pixels,
                                                         smoother))
    except WebSocketDisconnect:
        return


def control_threshold(text: str, current: float) -> float:
    """The threshold a control message asks for; a bad one keeps the current threshold."""
    try:
        return parse_threshold(json.loads(text).get("threshold"), current)
    except (UploadError, ValueError, AttributeError):
        return current


async def frame_answer(data: bytes, engine: Engine, threshold: float, max_pixels: int | None = sources.MAX_PIXELS,
                       smoother: Smoother | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        image = sources.decode_image(np.frombuffer(data, np.uint8), Path("frame"), max_pixels)
    except DataError as err:
        return {"error": str(err)}
    decode_ms = 1000 * (time.perf_counter() - start)
    reply = await run_in_threadpool(engine.run, image, threshold, smoother=smoother)
    reply["timings"]["decode_ms"] = decode_ms
    return reply


async def stream_source(websocket: WebSocket, engine: Engine, spec: str | None) -> None:
    """WS /source: for each {"threshold": t} the page sends, the source's next frame (paced to its rate) and its
    answer; the page asks for the next one when it has drawn this one, so frames never queue up."""
    await websocket.accept()
    if spec is None:
        await websocket.send_json({"error": "this server has no --source"})
        await websocket.close()
        return
    try:
        source = await run_in_threadpool(open_source, spec)
    except DataError as err:
        await websocket.send_json({"error": str(err)})
        await websocket.close()
        return
    try:
        await play(websocket, engine, source)
    except WebSocketDisconnect:
        pass
    finally:
        source.close()


async def play(websocket: WebSocket, engine: Engine, source: FrameSource) -> None:
    threshold, due, smoother = engine.threshold, time.perf_counter(), engine.segmenter.smoother()
    while True:
        threshold = control_threshold(await websocket.receive_text(), threshold)
        if source.fps:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            due = max(due, time.perf_counter() - 1.0) + 1.0 / source.fps
        frame = await run_in_threadpool(source.read)
        if frame is None:
            await websocket.send_json({"error": "the source stopped giving frames"})
            return
        await websocket.send_json(await run_in_threadpool(engine.run, frame, threshold, source.spacing,
                                                          SOURCE_SIDE, True, smoother))


# ---------------------------------------------------------------------------------------------------- command


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``ultraseg serve``'s options, on the ``ultraseg`` command's subparsers."""
    ap = subparsers.add_parser(
        "serve", help="a local live viewer in the browser",
        description="Serve a live viewer for a deployable file (a --profile's, or MODEL) at http://HOST:PORT/:\n"
                    "segment a dropped image or DICOM file, the browser's camera, or a server-side --source, with\n"
                    "the overlay, score, area, latency and frame rate on screen. Everything stays on this machine; uploads are never written to disk.",
        epilog="examples:\n  ultraseg serve\n"
               "  ultraseg serve --profile accurate --source /dev/video0\n"
               "  ultraseg serve models/deploy/ultraseg.int8.onnx --source cine.dcm --port 8080",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    model_choice.add_arguments(ap, positional=True)
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    ap.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    ap.add_argument("--source", metavar="SRC", help="a server-side stream the page can play: a camera "
                    "(/dev/videoN), a video file, a cine DICOM file, or a folder of images/DICOM files (loops)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default: %(default)s)")
    ap.add_argument("--max-upload-mb", type=float, default=20, metavar="MB",
                    help="largest upload accepted, in MB (default: %(default)s); larger ones get 413")
    ap.add_argument("--max-pixels", type=positive_int, default=sources.MAX_PIXELS, metavar="N",
                    help="largest frame accepted, in pixels (default: %(default)s); an image or DICOM whose header "
                         "declares larger frames gets 413 before it is decoded")
    ap.set_defaults(run=run)
    return ap


def run(args: argparse.Namespace) -> int:
    import uvicorn

    try:
        segmenter = Segmenter(model_choice.model_path(args), threads=args.threads)
        if args.source:
            open_source(args.source).close()  # fail now, not when the page first asks
    except DataError as err:
        print(f"ultraseg serve: error: {err}", file=sys.stderr)
        return 2
    app = create_app(segmenter, args.source, args.max_upload_mb, args.max_pixels)
    print(f"ultraseg serve: {segmenter.path} at http://{args.host}:{args.port}/ (Ctrl+C to stop)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
